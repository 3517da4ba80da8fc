"""Directory mode's record of assigned listener ports: a small JSON file, so a restart serves the same ports.

Kubernetes mode records them in each VirtualService's status; a directory has no status, so `serve --dir`
keeps them in a file of its own (--listener-port-state, by default beside DIR, never inside it: the
watch would read it). It is written whole, atomically (a temporary file renamed over it), at most once a
second while assignments change. A missing file is an empty record; an unreadable or malformed one is
logged as an error and ignored (the ports are assigned anew), never a crash.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xds_operator.api import Key
from xds_operator.ports.assigner import ListenerRef

log = logging.getLogger(__name__)

VERSION = 1
MAX_STATE_BYTES = 64 * 2**20  # far above what 65,535 ports per protocol take; a bigger file is refused
Assignments = Mapping[Key, Mapping[ListenerRef, int]]


def default_state_path(directory: Path) -> Path:
    """Beside the directory, not in it: `<parent>/.<name>.listener-ports.json`."""
    absolute = Path(os.path.abspath(directory))
    return absolute.parent / f".{absolute.name or 'root'}.listener-ports.json"


def load_state(path: Path) -> dict[Key, dict[ListenerRef, int]]:
    """The ports recorded in `path` ({} if it does not exist; {} and an error logged if it cannot be used)."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as error:
        _unusable(path, error.strerror or str(error))
        return {}
    if len(data) > MAX_STATE_BYTES:
        _unusable(path, f"larger than {MAX_STATE_BYTES // 2**20} MiB")
        return {}
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as error:
        _unusable(path, f"not JSON ({error})")
        return {}
    if not isinstance(document, dict) or document.get("version") != VERSION:
        _unusable(path, f"not a version {VERSION} listener port record")
        return {}
    recorded: dict[Key, dict[ListenerRef, int]] = {}
    entries = document.get("listeners")
    for entry in entries if isinstance(entries, list) else ():
        parsed = _entry(entry)
        if parsed is None:
            log.warning("%s: ignoring a malformed entry: %.200r", path, entry)
            continue
        key, ref, port = parsed
        recorded.setdefault(key, {})[ref] = port
    return recorded


def save_state(path: Path, assignments: Assignments, ports: str) -> None:
    """Write the record atomically (OSError if it cannot be written)."""
    listeners = [
        {"namespace": key[0], "name": key[1], "listener": ref[0], "protocol": ref[1], "port": port}
        for key, refs in sorted(assignments.items())
        for ref, port in sorted(refs.items())
    ]
    text = json.dumps({"version": VERSION, "listenerPorts": ports, "listeners": listeners}, indent=1)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _entry(entry: Any) -> tuple[Key, ListenerRef, int] | None:
    if not isinstance(entry, dict):
        return None
    namespace, name, listener = entry.get("namespace"), entry.get("name"), entry.get("listener")
    protocol, port = entry.get("protocol"), entry.get("port")
    if not all(isinstance(text, str) and text for text in (namespace, name, listener)):
        return None
    if protocol not in ("UDP", "TCP") or not isinstance(port, int) or isinstance(port, bool):
        return None
    return (str(namespace), str(name)), (str(listener), "UDP" if protocol == "UDP" else "TCP"), port


def _unusable(path: Path, why: str) -> None:
    log.error(
        "%s: cannot use the record of assigned listener ports (%s); starting without it: listeners without "
        "a port are assigned anew and may move (see --listener-port-state)",
        path,
        why,
        extra={"file": str(path)},
    )
