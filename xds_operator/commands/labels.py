"""Proxy labels written as one line of text, `k1=v1,k2=v2`: what `bootstrap --labels-from-env` reads.

Pure functions: the environment is passed in, so tests need not change the process's own.
"""

from __future__ import annotations

from collections.abc import Mapping


def parse_labels(text: str, where: str) -> dict[str, str]:
    """Labels from `k1=v1,k2=v2`; `where` names the text's source in every error (a ValueError).

    Whitespace around items, keys and values is dropped and empty items are skipped (a trailing
    comma, or an empty text: no labels). A value may be empty (`k=`) and may contain `=`; a key
    may not be empty or repeated.
    """
    labels: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ValueError(f"{where}: {item!r} is not KEY=VALUE (no '=')")
        if not key:
            raise ValueError(f"{where}: {item!r} has an empty key")
        if key in labels:
            raise ValueError(f"{where}: key {key!r} appears twice")
        labels[key] = value
    return labels


def labels_from_env(variable: str, environ: Mapping[str, str]) -> dict[str, str]:
    """Labels from the environment variable `variable` (`k1=v1,k2=v2`); a ValueError if it is unset or malformed."""
    where = f"--labels-from-env {variable}"
    if variable not in environ:
        raise ValueError(f"{where}: the environment variable {variable} is not set")
    return parse_labels(environ[variable], f"{where} (environment variable {variable})")
