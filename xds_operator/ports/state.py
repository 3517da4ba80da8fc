"""Directory mode's record of assigned listener ports, so a restart serves the same ports.

Kubernetes mode records them in each VirtualService's status; a directory has no status, so `serve --dir`
keeps them in a file of its own (--listener-port-state, by default beside DIR, never inside it: the watch
would read it). The file is JSON Lines: a header, then one line per VirtualService whose ports changed,
the last line of a VirtualService saying what it holds (`listeners: []`: nothing, it is gone):

    {"version":1,"listenerPorts":"20000-29999"}
    {"namespace":"media","name":"call-7","listeners":[{"listener":"call-7-l","protocol":"UDP","port":20417}]}

A change appends its lines (flushed and fsynced), so writing costs what changed, not every VirtualService;
once the appended lines outnumber the VirtualServices of the last full write (and at least COMPACT_LINES),
the file is written whole again, atomically (a temporary file renamed over it). A missing file is an empty
record; an unreadable one, or one without the header, is logged as an error and ignored (ports are assigned
anew); a malformed line (a line torn by a crash) is skipped with a warning. Never a crash.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from xds_operator.api import Key
from xds_operator.ports.assigner import ListenerRef

log = logging.getLogger(__name__)

VERSION = 1
MAX_STATE_BYTES = 256 * 2**20  # far above what 65,535 ports per protocol take; a bigger file is refused
MAX_WARNED_LINES = 5  # malformed lines warned about one by one; then one line counts the rest
COMPACT_LINES = 1024  # appended lines before a full rewrite, at least
Assignments = Mapping[Key, Mapping[ListenerRef, int]]


def default_state_path(directory: Path) -> Path:
    """Beside the directory, not in it: `<parent>/.<name>.listener-ports.json`."""
    absolute = Path(os.path.abspath(directory))
    return absolute.parent / f".{absolute.name or 'root'}.listener-ports.json"


class PortRecord:
    """The file: `load` once, then `write` what changed (appended, or the whole file when due)."""

    def __init__(self, path: Path, ports: str) -> None:
        self.path = path
        self._ports = ports  # the range, in the header (for humans: a changed range is read all the same)
        self._appended = 0  # lines since the file was last written whole
        self._whole = 0  # VirtualServices in it then
        self._fresh = True  # not written by this process yet: the first write is a whole one

    def load(self) -> dict[Key, dict[ListenerRef, int]]:
        """The ports recorded ({} if there is no file; {} and an error logged if it cannot be used)."""
        try:
            with open(self.path, "rb") as file:
                data = file.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as error:
            self._unusable(error.strerror or str(error))
            return {}
        if len(data) > MAX_STATE_BYTES:
            self._unusable(f"larger than {MAX_STATE_BYTES // 2**20} MiB")
            return {}
        lines = data.split(b"\n")
        header = _json(lines[0])
        if not isinstance(header, dict) or header.get("version") != VERSION:
            self._unusable(f"its first line is not a version {VERSION} header")
            return {}
        recorded: dict[Key, dict[ListenerRef, int]] = {}
        bad = 0
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            entry = _entry(_json(line))
            if entry is None:
                bad += 1
                if bad <= MAX_WARNED_LINES:
                    log.warning("%s:%d: ignoring a malformed line: %.200r", self.path, number, line)
                continue
            key, ports = entry
            if ports:
                recorded[key] = ports
            else:
                recorded.pop(key, None)
        if bad > MAX_WARNED_LINES:
            log.warning("%s: %d more malformed lines ignored", self.path, bad - MAX_WARNED_LINES)
        return recorded

    def write(
        self,
        changed: Iterable[Key],
        ports_of: Callable[[Key], Mapping[ListenerRef, int]],
        everything: Callable[[], Assignments],
    ) -> None:
        """Record the ports of `changed` (`ports_of` says them; `everything` gives all, for a whole write).
        OSError if it cannot."""
        keys = sorted(set(changed))
        if self._fresh or self._appended + len(keys) > max(COMPACT_LINES, self._whole):
            self._write_whole(everything())
            return
        text = "".join(_line(key, ports_of(key)) for key in keys)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        self._appended += len(keys)

    def _write_whole(self, current: Assignments) -> None:
        header = json.dumps({"version": VERSION, "listenerPorts": self._ports}, separators=(",", ":")) + "\n"
        text = header + "".join(_line(key, ports) for key, ports in sorted(current.items()) if ports)
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._fresh, self._appended, self._whole = False, 0, len(current)

    def _unusable(self, why: str) -> None:
        log.error(
            "%s: cannot use the record of assigned listener ports (%s); starting without it: listeners without "
            "a port are assigned anew and may move (see --listener-port-state)",
            self.path,
            why,
            extra={"file": str(self.path)},
        )


def _line(key: Key, ports: Mapping[ListenerRef, int]) -> str:
    listeners = [{"listener": ref[0], "protocol": ref[1], "port": port} for ref, port in sorted(ports.items())]
    return json.dumps({"namespace": key[0], "name": key[1], "listeners": listeners}, separators=(",", ":")) + "\n"


def _json(line: bytes) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def _entry(entry: Any) -> tuple[Key, dict[ListenerRef, int]] | None:
    """(namespace, name) and its ports from a line; None if the line is malformed."""
    if not isinstance(entry, dict):
        return None
    namespace, name, listeners = entry.get("namespace"), entry.get("name"), entry.get("listeners")
    if not (isinstance(namespace, str) and namespace and isinstance(name, str) and name):
        return None
    if not isinstance(listeners, list):
        return None
    ports: dict[ListenerRef, int] = {}
    for item in listeners:
        if not isinstance(item, dict):
            return None
        listener, protocol, port = item.get("listener"), item.get("protocol"), item.get("port")
        if not (isinstance(listener, str) and listener and protocol in ("UDP", "TCP")):
            return None
        if not isinstance(port, int) or isinstance(port, bool):
            return None
        ports[(listener, "UDP" if protocol == "UDP" else "TCP")] = port
    return (namespace, name), ports
