"""The directory source: VirtualService YAML files in a directory, watched live.

Every `*.yaml` / `*.yml` file (multi-document files allowed) is read; a document that is
not a valid VirtualService is logged with its file, document index and field path, and
skipped, while everything else keeps being served. The directory is watched with inotify
(watchfiles), not polled: only files that changed are read again.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import stat
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from xds_operator.api import API_GROUP, KIND, Key, ValidationError, VirtualService, key_of, parse_virtual_service
from xds_operator.api.validate import shortened
from xds_operator.xds.cache import SnapshotCache

if TYPE_CHECKING:
    from xds_operator.sources.inotify_watch import Event, Watches

# libyaml's parser (PyYAML's C extension) when present: 8.5× faster (0.33 s vs 2.81 s for 1,000 documents).
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml")
# Limits, so a file cannot exhaust memory or flood the log. 1 MiB is what a ConfigMap (the usual way
# to mount this directory) can hold in all; a larger file is refused without being read past the limit.
MAX_FILE_BYTES = 1024 * 1024
MAX_DOCUMENTS = 1000  # per file: a file with more is refused (split it)
DEBOUNCE_MS = 20  # watchfiles (off Linux): editors write in bursts; one reload per burst
BURST_SECONDS = 0.0  # inotify: a yield to the loop, so events already queued join one reload
MISSING_RETRY_SECONDS = 1.0  # while the directory is missing, how often it is looked for besides the watches


def virtual_service_files(directory: Path) -> list[Path]:
    """The VirtualService files (*.yaml, *.yml) of a directory, in name order."""
    return sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES and p.is_file())


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a directory stands for its VirtualService files (for `validate` and `render`)."""
    expanded: list[Path] = []
    for path in paths:
        expanded.extend(virtual_service_files(path) if path.is_dir() else [path])
    return expanded


@dataclass
class FileContents:
    """What one file holds: its valid VirtualServices and the problems of the rest."""

    services: list[VirtualService] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unreadable: bool = False  # nothing in the file could be read (YAML syntax, encoding, size)
    invalid_keys: set[Key] = field(default_factory=set)  # named documents that failed validation
    unnamed_invalid: bool = False  # a document failed validation before its name could be read
    rejected: int = 0  # documents that failed validation
    other_kinds: int = 0  # documents of other kinds, skipped (a Kustomization, a ConfigMap)

    def keeping_last_good(self, previous: FileContents) -> FileContents:
        """Keep serving the previous valid version of what this read could not validate.

        A VirtualService that vanished from the file is kept when the file could not be read, when a
        document of its name is invalid, or when an invalid document has no readable name (a typo in
        `metadata`, a list in place of a mapping): that document may be it, so it is not a deletion."""
        defined = {vs.key for vs in self.services}
        kept = [vs for vs in previous.services if vs.key not in defined and self._may_hide(vs.key)]
        for vs in kept:
            log.warning("%s: keeping the last valid version of %s until the file is fixed", vs.origin, vs)
        return replace(self, services=self.services + kept)

    def _may_hide(self, key: Key) -> bool:
        """Whether what this read failed on may be the VirtualService `key`."""
        return self.unreadable or self.unnamed_invalid or key in self.invalid_keys


def read_file(path: Path) -> FileContents:
    """Parse one file. Never raises for bad content: problems are returned as messages."""
    contents = FileContents()
    text = _read_text(path, contents)
    if text is None:
        contents.unreadable = True
        return contents
    documents = _documents(path, text, contents)
    if documents is None:
        contents.unreadable = True
        return contents
    for index, document in enumerate(documents):
        where = f"{path}: document {index + 1}"
        if document is None:
            continue
        if _of_another_kind(document):
            log.debug("%s: skipping kind %s", where, shortened(document["kind"]))
            contents.other_kinds += 1
            continue
        key = key_of(document)
        if key is not None:
            where += f" ({shortened(key[0])}/{shortened(key[1])})"
        try:
            contents.services.append(parse_virtual_service(document, origin=str(path)))
        except ValidationError as error:
            contents.errors.extend(f"{where}: {problem}" for problem in error.errors)
            contents.rejected += 1
            if key is not None:
                contents.invalid_keys.add(key)
            else:
                contents.unnamed_invalid = True
    return contents


def _of_another_kind(document: Any) -> bool:
    """Whether a document is of a kind this source skips (a ConfigMap, a Kustomization). A near miss of
    VirtualService (`VirtualServic`, `virtualservice`, `VirtualServices`) or any kind of the API group
    servicemesh.l7mp.io is not skipped: it is an invalid VirtualService, reported as one."""
    kind = document.get("kind") if isinstance(document, dict) else None
    if not isinstance(kind, str) or kind == KIND:
        return False
    api_version = document.get("apiVersion")
    if isinstance(api_version, str) and api_version.split("/")[0] == API_GROUP:
        return False
    return not _near_miss(kind.casefold(), KIND.casefold())


def _near_miss(text: str, target: str, limit: int = 2) -> bool:
    """Whether `text` is at most `limit` single-character edits (Levenshtein) away from `target`."""
    if abs(len(text) - len(target)) > limit:
        return False  # also keeps the work small for a long text
    row = list(range(len(target) + 1))
    for i, char in enumerate(text, 1):
        previous, row[0] = row[0], i
        for j, wanted in enumerate(target, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (char != wanted))
    return row[-1] <= limit


class NotARegularFile(OSError):
    """A name that holds a FIFO, a device, a socket or a directory instead of a file."""


FILE_TYPES = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
FILE_TYPES |= {stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def _read_regular_file(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file (symlinks followed: a ConfigMap volume's files are links).

    Anything else is refused before it is read: opening a FIFO would block (the event loop, with it
    everything) until a writer comes, and a device may never end. The name is looked at first, so a
    device is not even opened; then what was opened is checked again (fstat), since the name may have
    been swapped meanwhile, and it is opened non-blocking so that such a swap cannot block either."""
    _check_regular(os.stat(path).st_mode)
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with open(descriptor, "rb") as stream:
        _check_regular(os.fstat(descriptor).st_mode)
        return stream.read(limit)


def _check_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise NotARegularFile(f"not a regular file but {FILE_TYPES.get(stat.S_IFMT(mode), 'something else')}")


def _read_text(path: Path, contents: FileContents) -> str | None:
    """The file as text, or None (with the problem recorded); never reads more than MAX_FILE_BYTES + 1 bytes."""
    try:
        data = _read_regular_file(path, MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            contents.errors.append(f"{path}: file is larger than the limit of {MAX_FILE_BYTES} bytes; skipped")
            return None
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        contents.errors.append(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); skipped")
    except NotARegularFile as error:
        contents.errors.append(f"{path}: {error}; skipped")
    except OSError as error:
        contents.errors.append(f"{path}: cannot read: {error.strerror}")
    return None


def _documents(path: Path, text: str, contents: FileContents) -> list[Any] | None:
    """The file's YAML documents, or None (with the problem recorded) if any cannot be read."""
    documents: list[Any] = []
    try:
        for document in yaml.load_all(text, Loader=SAFE_LOADER):
            if len(documents) == MAX_DOCUMENTS:
                contents.errors.append(
                    f"{path}: more than {MAX_DOCUMENTS} YAML documents, the limit per file; "
                    "the whole file is skipped (split it)"
                )
                return None
            documents.append(document)
    except yaml.YAMLError as error:
        contents.errors.append(f"{path}: invalid YAML: {_yaml_problem(error)}; the whole file is skipped")
        return None
    except (ValueError, OverflowError, RecursionError) as error:
        # PyYAML's constructors raise these for scalars they cannot convert (a date like 2024-13-45,
        # an integer of 5,000 digits) and its pure-Python parser for nesting too deep.
        problem = "nesting too deep" if isinstance(error, RecursionError) else str(error)
        contents.errors.append(
            f"{path}: document {len(documents) + 1}: invalid YAML value: {problem}; the whole file is skipped"
        )
        return None
    return documents


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


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

    def __init__(self, directory: Path, cache: SnapshotCache):
        self.directory = Path(directory)
        self._cache = cache
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
        if sys.platform.startswith("linux"):
            await self._watch_inotify()
        else:
            await self._watch_watchfiles()
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
        log.info("serving %d VirtualService(s); %d proxy group(s) updated", len(self._definitions), changed)

    def _read(self, path: Path, previous: FileContents | None) -> FileContents:
        """Read a file, keeping the last good version (`previous`) of what it can no longer validate."""
        contents = read_file(path)
        for problem in contents.errors:
            log.error("%s", problem, extra={"file": str(path)})
        self.errors["invalid_document"] += contents.rejected
        self.errors["unreadable_file"] += contents.unreadable
        return contents if previous is None else contents.keeping_last_good(previous)

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
            return
        winner = definers[0]
        for path in definers[1:]:
            message = "%s: VirtualService %s/%s is already defined in %s; skipped"
            log.error(message, path, *key, winner, extra={"file": str(path)})
        self._cache.upsert(self._defined[winner][key])

    def invalid_documents(self) -> int:
        """Documents in the directory now that are not valid VirtualServices."""
        return sum(contents.rejected for contents in self._files.values())
