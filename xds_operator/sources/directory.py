"""The directory source: VirtualService YAML files in a directory, watched live.

Every `*.yaml` / `*.yml` file (multi-document files allowed) is read (by sources/loader.py, with
its limits); a document that is not a valid VirtualService is logged with its file, document index
and field path, and skipped, while everything else keeps being served. The directory is watched with
inotify (watchfiles), not polled: only files that changed are read again.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import stat
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from xds_operator.api import Key, ValidationError, VirtualService
from xds_operator.ports.assigner import ListenerRef, PortAssigner
from xds_operator.ports.state import PortRecord
from xds_operator.sources.loader import SUFFIXES, FileContents, read_file
from xds_operator.xds.cache import SnapshotCache

if TYPE_CHECKING:
    from xds_operator.sources.inotify_watch import Event, Watches

log = logging.getLogger(__name__)

DEBOUNCE_MS = 20  # watchfiles (off Linux): editors write in bursts; one reload per burst
BURST_SECONDS = 0.0  # inotify: a yield to the loop, so events already queued join one reload
MISSING_RETRY_SECONDS = 1.0  # while the directory is missing, how often it is looked for besides the watches
STATE_WRITE_SECONDS = 1.0  # the record of assigned listener ports is written at most this often


Stamp = tuple[int, ...]  # (file type, device, inode, size, mtime_ns, ctime_ns)


def _stamp(path: Path) -> Stamp | None:
    """What changes when the file at `path` (through symlinks) does; None if it is gone already (a
    ConfigMap volume removes its old files right after swapping ..data: that race must not end the
    watch) or is a directory. A FIFO or device has a stamp too: reading it reports it by name.

    Size and mtime are not enough: `rsync -a` and `cp -p` rename in a new file with the old one's
    mtime, and a chmod changes neither. The inode and ctime (which no one can set) change then."""
    try:
        info = path.stat()
    except OSError:
        return None
    if stat.S_ISDIR(info.st_mode):
        return None
    return (stat.S_IFMT(info.st_mode), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _link_target(path: Path) -> Path | None:
    """The file a symlink finally points to; None if `path` is not a symlink, or leads nowhere."""
    try:
        return path.resolve(strict=True) if path.is_symlink() else None
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return None


class DirectorySource:
    """Keeps a SnapshotCache equal to the valid VirtualServices in a directory."""

    def __init__(
        self,
        directory: Path,
        cache: SnapshotCache,
        ports: PortAssigner | None = None,
        port_state: Path | None = None,
    ):
        """`ports`: assigns ports to listeners that name none (without a range such a listener is invalid);
        `port_state`: where those ports are recorded across restarts (None: nowhere)."""
        self.directory = Path(directory)
        self._cache = cache
        self._ports = ports or PortAssigner(None)
        self._record = PortRecord(port_state, str(self._ports.ports)) if port_state and self._ports.ports else None
        # Ports recorded by an earlier run, handed to each VirtualService when first seen.
        self._recorded = self._record.load() if self._record is not None else {}
        self._state_due: asyncio.TimerHandle | None = None
        self._state_changed: set[Key] = set()  # VirtualServices whose ports changed since the last write
        self._recorded_ports: dict[Key, dict[ListenerRef, int]] = {}  # the assigned ports, as last seen
        self._state_error: str | None = None  # the last failure to write it (logged once per distinct one)
        self._waiting: dict[Key, str] = {}  # VirtualServices not served: a listener waits for a free port
        self._files: dict[Path, FileContents] = {}
        self._defined: dict[Path, dict[Key, VirtualService]] = {}  # per file, the VirtualServices it defines
        self._definitions: dict[Key, list[Path]] = {}  # per VirtualService, the files defining it, in name order
        self._stamps: dict[Path, Stamp] = {}  # when last read
        # Symlinks among the files and the files they point to: an edit there (a directory of its own, or
        # a non-YAML name here) changes what the link reads, and is watched for.
        self._links: dict[Path, Path] = {}  # link → the file it resolves to
        self._linked: dict[Path, set[Path]] = {}  # that file → the links resolving to it
        self._link_directories: Counter[Path] = Counter()  # directories holding link targets → their count
        self._link_directories_changed: set[Path] = set()  # since the watches were last told
        self.errors: Counter[str] = Counter()  # every invalid document and unreadable file read, for metrics

    def load(self) -> None:
        """Read every file now and commit the result."""
        if not self.directory.is_dir():
            raise FileNotFoundError(f"{self.directory} is not a directory")
        self.rescan()
        if self._recorded:  # ports of VirtualServices no longer there: forgotten (in the file too)
            log.info(
                "forgetting the recorded listener ports of %d VirtualService(s) no longer in %s",
                len(self._recorded),
                self.directory,
            )
            self._state_changed.update(self._recorded)
            self._recorded.clear()
            self._record_ports()

    def rescan(self) -> None:
        """Read again the files that changed (see _stamp), and drop vanished ones."""
        try:
            names = list(self.directory.iterdir())
        except OSError as error:  # gone meanwhile: the watch says so and waits for it to come back
            log.warning("cannot list %s: %s; keeping what was read from it", self.directory, error.strerror)
            return
        stamps = {path: _stamp(path) for path in names if path.suffix in SUFFIXES}
        present = {path: stamp for path, stamp in stamps.items() if stamp is not None}
        changed = {path for path, stamp in present.items() if self._stamps.get(path) != stamp}
        changed |= set(self._files) - set(present)
        if changed or not self._files:
            self._reload(changed)

    async def watch(self) -> None:
        """Apply additions, edits and deletions as they happen, until cancelled.

        On Linux, inotify events wake the event loop directly: no polling, no batching delay; a directory
        that is removed is waited for. Elsewhere watchfiles does the watching (it checks for changes every
        few milliseconds), and OSError says that the directory went away.
        """
        try:
            if sys.platform.startswith("linux"):
                await self._watch_inotify()
            else:
                await self._watch_watchfiles()
        finally:  # stopping: what waits to be recorded is recorded now
            if self._state_due is not None:
                self._state_due.cancel()
                self.write_port_state()
        raise OSError(f"stopped watching {self.directory}: it was removed or can no longer be read")

    async def _watch_inotify(self) -> None:
        from xds_operator.sources.inotify_watch import Watches

        loop = asyncio.get_running_loop()
        watches = Watches(self.directory)
        readable = asyncio.Event()
        loop.add_reader(watches.fileno(), readable.set)
        try:
            watches.place()
            self._update_target_watches(watches)
            self.rescan()  # the watches are in place: catch what changed since load()
            while True:
                # While the directory is missing, look for it every MISSING_RETRY_SECONDS as well: the
                # directory above it may be missing too, and then no watch can say when it is back.
                timeout = MISSING_RETRY_SECONDS if watches.resolved is None else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(readable.wait(), timeout)
                readable.clear()
                events = watches.read()
                await asyncio.sleep(BURST_SECONDS)  # let events already on their way join this reload
                events += watches.read()
                watches.forget(events)
                self._on_events(watches, events)
                self._update_target_watches(watches)
        finally:
            loop.remove_reader(watches.fileno())
            watches.close()

    def _on_events(self, watches: Watches, events: list[Event]) -> None:
        if watches.moved(events) and watches.place():
            self._directory_moved(watches.resolved)
        elif watches.overflowed(events):
            log.warning("%s: too many changes at once to follow one by one: reading every file again", self.directory)
            self.rescan()
        else:
            self._on_file_events(watches.file_events(events), watches.changed_targets(events))

    def _directory_moved(self, resolved: Path | None) -> None:
        """The directory was removed, came back, or is another one now (a switched symlink)."""
        if resolved is None:
            log.warning(
                "%s is gone: still serving its last VirtualServices, waiting for it to come back", self.directory
            )
        else:
            log.warning("%s is back or was switched (now %s): reading it again", self.directory, resolved)
            self.rescan()

    def _on_file_events(self, names: dict[str, int], targets: set[Path]) -> None:
        from inotify_simple import flags as f

        # Names that may stand for many files (a ConfigMap volume swapping its ..data symlink) call for a
        # full rescan; names merely created (a file still being written) for nothing yet.
        swapped = f.CLOSE_WRITE | f.MOVED_TO | f.MOVED_FROM | f.DELETE
        if any(mask & swapped and self._behind_links(name) for name, mask in names.items()):
            self.rescan()
            return
        paths = {
            self.directory / name
            for name, mask in names.items()
            if Path(name).suffix in SUFFIXES and (mask != f.CREATE or self._complete(name))
        }
        paths |= {link for target in targets for link in self._linked.get(target, ())}
        if paths:
            self._reload(paths)

    async def _watch_watchfiles(self) -> None:
        from watchfiles import awatch

        batches = awatch(self.directory, debounce=DEBOUNCE_MS, step=10, recursive=False, watch_filter=None)
        # awatch puts its watch in place in its first step, before it first waits:
        # start that step, then rescan, so a change made since load() is not missed.
        first = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0)
        self.rescan()
        try:
            self._apply(await first)
        except StopAsyncIteration:
            return
        async for changes in batches:
            self._apply(changes)

    def _complete(self, name: str) -> bool:
        """Whether a name just created holds its content already: a symlink (`ln -s`), a hard link to a
        file (`ln`), a FIFO. A new regular file with one link is being written: CLOSE_WRITE will follow."""
        try:
            info = (self.directory / name).lstat()
        except OSError:
            return True  # gone again: the reload forgets it
        return not (stat.S_ISREG(info.st_mode) and info.st_nlink == 1)

    def _behind_links(self, name: str) -> bool:
        """Whether an event's name may stand for many files: a directory or symlink that is not a
        VirtualService file (a temporary file, written then renamed into place, does not)."""
        if Path(name).suffix in SUFFIXES:
            return False
        try:
            mode = (self.directory / name).lstat().st_mode
        except OSError:
            return False  # already gone: a temporary file renamed away, or an old ConfigMap data directory
        return stat.S_ISDIR(mode) or stat.S_ISLNK(mode)

    def _apply(self, changes: Iterable[tuple[object, str]]) -> None:
        relevant = {Path(path) for _, path in changes if Path(path).suffix in SUFFIXES}
        if relevant:
            self._reload(relevant)

    def _reload(self, paths: Iterable[Path]) -> None:
        """Read these files again (or forget them if gone) and apply what they changed: the cost follows
        these files' VirtualServices, however many other files the directory holds."""
        affected: set[Key] = set()
        for path in sorted(paths):
            previous = self._files.get(path)
            affected |= self._forget(path)
            file_stamp = _stamp(path)
            if file_stamp is not None:
                self._stamps[path] = file_stamp
                contents = self._read(path, previous)
                self._files[path] = contents
                affected |= self._define(path, contents)
                self._track_link(path)
                log.info(
                    "loaded %s: %d VirtualService(s), %d problem(s)",
                    path.name,
                    len(contents.services),
                    len(contents.errors),
                    extra={"file": str(path)},
                )
            elif self._stamps.pop(path, None) is not None:
                log.info("removed %s", path.name, extra={"file": str(path)})
                self._track_link(path)
        for key in sorted(affected):
            self._apply_key(key)
        changed = self._cache.commit()
        self._record_ports()
        log.info("serving %d VirtualService(s); %d proxy group(s) updated", len(self._definitions), changed)

    def _read(self, path: Path, previous: FileContents | None) -> FileContents:
        """Read a file, keeping the last good version (`previous`) of what it can no longer validate."""
        contents = read_file(path)
        for problem in contents.errors:
            log.error("%s", problem, extra={"file": str(path)})
        self.errors["invalid_document"] += contents.rejected
        self.errors["unreadable_file"] += contents.unreadable
        kept = [] if previous is None else contents.may_still_define(previous)
        for vs in kept:
            log.warning("%s: keeping the last valid version of %s until the file is fixed", vs.origin, vs)
        return replace(contents, services=contents.services + kept) if kept else contents

    def _track_link(self, path: Path) -> None:
        """Remember where `path` points now if it is a symlink (and forget where it pointed before)."""
        for previous in [self._links.pop(path)] if path in self._links else []:
            self._linked[previous].discard(path)
            if not self._linked[previous]:
                del self._linked[previous]
            self._count_link_directory(previous.parent, -1)
        target = _link_target(path)
        if target is not None:
            self._links[path] = target
            self._linked.setdefault(target, set()).add(path)
            self._count_link_directory(target.parent, +1)

    def _count_link_directory(self, directory: Path, change: int) -> None:
        count = self._link_directories[directory] + change
        if count:
            self._link_directories[directory] = count
        else:
            del self._link_directories[directory]
        if count == 0 or (count == 1 and change > 0):  # the last link there gone, or the first one
            self._link_directories_changed.add(directory)

    def _update_target_watches(self, watches: Watches) -> None:
        """Watch the directories that hold link targets now, and no longer those that do not."""
        for directory in self._link_directories_changed:
            if directory in self._link_directories:
                watches.watch_targets([directory])
            else:
                watches.unwatch_target(directory)
        self._link_directories_changed.clear()

    def _forget(self, path: Path) -> set[Key]:
        """Take a file's VirtualServices out of the definitions; returns their keys."""
        if self._files.pop(path, None) is None:
            return set()
        keys = set(self._defined.pop(path, {}))
        for key in keys:
            definers = self._definitions[key]
            definers.remove(path)
            if not definers:
                del self._definitions[key]
        return keys

    def _define(self, path: Path, contents: FileContents) -> set[Key]:
        """Record what a file defines; a name defined twice in it keeps its first document."""
        defined: dict[Key, VirtualService] = {}
        for vs in contents.services:
            if vs.key in defined:
                log.error("%s: VirtualService %s is defined twice in this file; the first is used", path, vs)
                continue
            defined[vs.key] = vs
            bisect.insort(self._definitions.setdefault(vs.key, []), path)
        self._defined[path] = defined
        return set(defined)

    def _apply_key(self, key: Key) -> None:
        """Hand the cache the VirtualService that now defines `key`: the one of the first file by name."""
        definers = self._definitions.get(key)
        if not definers:
            self._cache.delete(key)
            self._serve(self._ports.remove(key))
            return
        winner = definers[0]
        for path in definers[1:]:
            message = "%s: VirtualService %s/%s is already defined in %s; skipped"
            log.error(message, path, *key, winner, extra={"file": str(path)})
        vs = self._defined[winner][key]
        try:
            moved = self._ports.place(vs, self._recorded.pop(key, None))
        except ValidationError as error:  # a listener without a port, and no --listener-ports
            kept = "; keeping its last valid version" if self._ports.result(key) is not None else ""
            log.error(
                "%s: VirtualService %s is invalid here: %s%s", vs.origin, vs, error, kept, extra={"file": vs.origin}
            )
            self.errors["invalid_document"] += 1
            return
        self._serve(moved)

    def _serve(self, keys: Iterable[Key]) -> None:
        """Hand the cache these VirtualServices with their assigned ports; leave out those waiting for one."""
        for key in keys:
            served = self._ports.result(key)
            waiting = self._ports.waiting(key)
            if waiting is not None and self._waiting.get(key) != waiting:
                log.error("VirtualService %s/%s is not served: %s", *key, waiting)
            elif waiting is None and key in self._waiting:
                log.info("VirtualService %s/%s has its ports now", *key)
            if waiting is None:
                self._waiting.pop(key, None)
            else:
                self._waiting[key] = waiting
            if served is None:
                self._cache.delete(key)
            else:
                self._cache.upsert(served)
            ports = self._ports.ports_of(key)
            if ports != self._recorded_ports.get(key, {}):  # only assigned ports are recorded
                self._state_changed.add(key)
                if ports:
                    self._recorded_ports[key] = ports
                else:
                    self._recorded_ports.pop(key, None)

    @property
    def ports(self) -> PortAssigner:
        """The assigner of listener ports (for metrics)."""
        return self._ports

    @property
    def waiting(self) -> dict[Key, str]:
        """VirtualServices not served because a listener waits for a free port, and why."""
        return dict(self._waiting)

    def _record_ports(self) -> None:
        """Write the assigned ports (at most once per STATE_WRITE_SECONDS while they change)."""
        if not self._state_changed or self._record is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # load(), before serving: at once
            self.write_port_state()
            return
        if self._state_due is None:
            self._state_due = loop.call_later(STATE_WRITE_SECONDS, self.write_port_state)

    def write_port_state(self) -> None:
        """Write the record of assigned ports now (failures are logged, once per distinct error)."""
        self._state_due = None
        if self._record is None or not self._state_changed:
            return
        try:
            self._record.write(self._state_changed, self._ports.ports_of, self._ports.assignments)
        except OSError as error:  # tried again at the next change
            text = f"{error.strerror or error}"
            if text != self._state_error:
                log.error(
                    "cannot write the record of assigned listener ports to %s: %s; a restart may assign other "
                    "ports (see --listener-port-state)",
                    self._record.path,
                    text,
                )
            self._state_error = text
        else:
            self._state_changed.clear()
            self._state_error = None

    def invalid_documents(self) -> int:
        """Documents in the directory now that are not valid VirtualServices."""
        return sum(contents.rejected for contents in self._files.values())
