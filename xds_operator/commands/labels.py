"""Proxy labels written as text: `--label KEY=VALUE` (bootstrap, render) and `k1=v1,k2=v2` (what
`bootstrap --labels-from-env` reads). One rule for both, `parse_label`.

Pure functions: the environment is passed in, so tests need not change the process's own.
"""

from __future__ import annotations

from collections.abc import Mapping


def parse_label(item: str) -> tuple[str, str]:
    """One label written KEY=VALUE, the rule for every label given as text.

    Whitespace around the key and around the value is dropped (label keys and values hold none, so a
    space there is a slip, never meant); the first `=` ends the key, so a value may contain `=`; a
    value may be empty (`k=`), a key may not. Raises ValueError naming the item."""
    key, sep, value = item.partition("=")
    if not sep:
        raise ValueError(f"{item.strip()!r} is not KEY=VALUE (no '=')")
    if not key.strip():
        raise ValueError(f"{item.strip()!r} has an empty key")
    return key.strip(), value.strip()


def parse_labels(text: str, where: str) -> dict[str, str]:
    """Labels from `k1=v1,k2=v2`, each item as `parse_label` reads it; `where` names the text's source in
    every error (a ValueError).

    Empty items are skipped (a trailing comma, or an empty text: no labels); a key may not repeat.
    """
    labels: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            key, value = parse_label(item)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
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
