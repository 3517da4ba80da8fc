"""The inotify watches behind the directory source (Linux).

One `--dir` needs more than one watch:

- its files: a watch on the directory it resolves to now;
- the directory above it and above every symlink on its path, where it can be removed and made
  again, or switched to another directory (git-sync replaces a link to the checkout);
- the directories holding the files its symlinks point to: an edit there changes a file of
  `--dir` without any event in `--dir`.

One inode has one watch whatever role it plays, so every watch is added with IN_MASK_ADD and
its roles are looked up by watch descriptor. Watches are not removed when a role ends (a
directory can play several); the kernel removes a watch when its directory is deleted.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from inotify_simple import Event as Event
from inotify_simple import INotify
from inotify_simple import flags as f

# Files complete (written and closed, renamed in), linked in (a symlink or a hard link gives CREATE only),
# made readable (ATTRIB), removed or renamed away; and the directory itself removed or renamed.
FILE_EVENTS = f.CLOSE_WRITE | f.MOVED_TO | f.MOVED_FROM | f.DELETE | f.CREATE | f.ATTRIB
DIRECTORY_GONE = f.DELETE_SELF | f.MOVE_SELF | f.IGNORED | f.UNMOUNT
PLACE_EVENTS = f.CREATE | f.MOVED_TO | f.MOVED_FROM | f.DELETE  # a name in a directory above ours


class Watches:
    def __init__(self, directory: Path):
        self.directory = Path(os.path.abspath(directory))
        self.resolved: Path | None = None  # what the directory resolves to now; None while it is missing
        self._inotify = INotify(nonblocking=True)
        self._files: int | None = None  # the watch on the directory's files
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the directory watched
        self._places: dict[int, set[str]] = {}  # watch on a directory above → names in it that lead to ours
        self._targets: dict[int, Path] = {}  # watch → a directory holding files our symlinks point to
        self._by_target: dict[Path, int] = {}

    def fileno(self) -> int:
        return self._inotify.fileno()

    def read(self) -> list[Event]:
        return self._inotify.read(timeout=0)

    def close(self) -> None:
        self._inotify.close()

    # -- the directory itself ------------------------------------------------------------------

    def place(self) -> bool:
        """Watch what the directory is now (and where it can change); True if that is another directory
        than before, or none (removed), or one again."""
        self._watch_places()
        identity, resolved = _directory_identity(self.directory)
        if identity == self._identity and (identity is None or self._files is not None):
            return False  # (a directory made again may have the same inode number, but no watch yet)
        self._files = self._add(self.directory, FILE_EVENTS | DIRECTORY_GONE) if identity else None
        self._identity, self.resolved = (identity, resolved) if self._files is not None else (None, None)
        return True

    def moved(self, events: Iterable[Event]) -> bool:
        """Whether these events say the directory may now be another one, or gone, or back."""
        if self._files is None:
            return True
        for event in events:
            if event.wd == self._files and event.mask & DIRECTORY_GONE:
                return True
            if event.name in self._places.get(event.wd, ()):
                return True
        return False

    def _watch_places(self) -> None:
        """Watch the directories above ours and above each symlink on its path, as far as they exist."""
        places: dict[int, set[str]] = {}
        for path in (self.directory, *self.directory.parents):
            if path.parent != path and (path == self.directory or path.is_symlink()):
                watch = self._add(path.parent, PLACE_EVENTS)
                if watch is not None:
                    places.setdefault(watch, set()).add(path.name)
        self._places = places

    # -- files ---------------------------------------------------------------------------------

    def overflowed(self, events: Iterable[Event]) -> bool:
        """The kernel's queue overflowed: events were lost, everything must be looked at."""
        return any(event.mask & f.Q_OVERFLOW for event in events)

    def file_events(self, events: Iterable[Event]) -> dict[str, int]:
        """Name → the events (mask) for entries of the directory."""
        names: dict[str, int] = {}
        for event in events:
            if event.wd == self._files and event.name:
                names[event.name] = names.get(event.name, 0) | event.mask
        return names

    def changed_targets(self, events: Iterable[Event]) -> set[Path]:
        """Paths that changed in the directories of symlink targets (and in ours: a link may point there)."""
        changed: set[Path] = set()
        for event in events:
            directory = self._targets.get(event.wd) or (self.resolved if event.wd == self._files else None)
            if directory is not None and event.name:
                changed.add(directory / event.name)
        return changed

    def watch_targets(self, directories: Iterable[Path]) -> None:
        for directory in directories:
            if directory not in self._by_target and directory != self.resolved:
                watch = self._add(directory, FILE_EVENTS)
                if watch is not None:
                    self._targets[watch] = directory
                    self._by_target[directory] = watch

    def unwatch_target(self, directory: Path) -> None:
        watch = self._by_target.pop(directory, None)
        if watch is not None:
            self._targets.pop(watch, None)

    def forget(self, events: Iterable[Event]) -> None:
        """Drop the roles of watches the kernel removed (their numbers are used again)."""
        for event in events:
            if event.mask & f.IGNORED:
                if event.wd == self._files:  # the directory was deleted: watch it again when it is back
                    self._files = None
                directory = self._targets.pop(event.wd, None)
                if directory is not None:
                    self._by_target.pop(directory, None)
                self._places.pop(event.wd, None)

    def _add(self, path: Path, mask: int) -> int | None:
        try:
            return self._inotify.add_watch(path, mask | f.MASK_ADD)
        except OSError:
            return None  # gone meanwhile (or not a directory): it is looked at again on the next change


def _directory_identity(path: Path) -> tuple[tuple[int, int] | None, Path | None]:
    """(st_dev, st_ino) and the resolved path of a directory; (None, None) if it is not one now."""
    try:
        info = path.stat()
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return None, None
    return ((info.st_dev, info.st_ino), resolved) if stat.S_ISDIR(info.st_mode) else (None, None)
