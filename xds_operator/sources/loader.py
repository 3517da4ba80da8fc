"""Reading VirtualService files: a path, its bytes, its YAML documents, then VirtualServices and problems.

Every reader of files goes through here: `serve --dir` (sources/directory.py, one file per change),
`validate` and `render` (commands/), and the demo. So all of them have the same limits and say the
same thing about a bad file. Nothing here raises for bad content: each problem is a message that
starts with the file's path (then the document number, its name and the field path), and the file's
other documents still count. `parse_file` (bytes to contents) and `add_file` (a file's contents
into what was loaded) are pure; `read_file`, `load` and the directory listings do the I/O around them.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xds_operator.api import API_GROUP, KIND, Key, ValidationError, VirtualService, key_of, parse_virtual_service
from xds_operator.api.validate import shortened

log = logging.getLogger(__name__)

# libyaml's parser (PyYAML's C extension) when present: 8.5× faster (0.33 s vs 2.81 s for 1,000 documents).
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

SUFFIXES = (".yaml", ".yml")
# Limits, so a file cannot exhaust memory or flood the log. 1 MiB is what a ConfigMap (the usual way
# to mount a directory of these files) can hold in all; a larger file is refused without being read
# past the limit.
MAX_FILE_BYTES = 1024 * 1024
MAX_DOCUMENTS = 1000  # per file: a file with more is refused (split it)


def virtual_service_files(directory: Path) -> list[Path]:
    """The VirtualService files of a directory, in name order: each *.yaml and *.yml name that leads to
    something other than a directory, as `serve --dir` reads them. So a FIFO or a device under such a
    name is listed, for read_file to refuse by name, rather than left out without a word."""
    return sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES and _leads_to_a_non_directory(p))


def _leads_to_a_non_directory(path: Path) -> bool:
    try:
        return not stat.S_ISDIR(path.stat().st_mode)
    except OSError:  # a dangling symlink, or gone meanwhile
        return False


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

    def may_still_define(self, previous: FileContents) -> list[VirtualService]:
        """The VirtualServices of an earlier read (`previous`) that vanished from this one, but not surely.

        Such a VirtualService may still be in the file when this read could not read the file at all,
        when a document of its name is invalid, or when an invalid document has no readable name (a
        typo in `metadata`, a list in place of a mapping): that document may be it, so it is not a
        deletion."""
        defined = {vs.key for vs in self.services}
        return [vs for vs in previous.services if vs.key not in defined and self._may_hide(vs.key)]

    def _may_hide(self, key: Key) -> bool:
        """Whether what this read failed on may be the VirtualService `key`."""
        return self.unreadable or self.unnamed_invalid or key in self.invalid_keys


# -- one file ---------------------------------------------------------------------------------


def read_file(path: Path) -> FileContents:
    """Read and parse one file, never more than MAX_FILE_BYTES + 1 bytes of it. Never raises for bad
    content or an unreadable file: problems are returned as messages."""
    try:
        data = _read_regular_file(path, MAX_FILE_BYTES + 1)
    except NotARegularFile as error:
        return _unreadable(f"{path}: {error}; skipped")
    except OSError as error:
        return _unreadable(f"{path}: cannot read: {error.strerror}")
    return parse_file(path, data)


def parse_file(path: Path, data: bytes) -> FileContents:
    """What a file's bytes hold (`path` only names it in messages). Bytes beyond MAX_FILE_BYTES refuse
    the whole file, so a reader need read no more than MAX_FILE_BYTES + 1."""
    if len(data) > MAX_FILE_BYTES:
        return _unreadable(f"{path}: file is larger than the limit of {MAX_FILE_BYTES} bytes; skipped")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        return _unreadable(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); skipped")
    documents = _documents(path, text)
    if isinstance(documents, str):
        return _unreadable(documents)
    contents = FileContents()
    for index, document in enumerate(documents):
        if document is not None:
            _add_document(contents, path, index, document)
    return contents


def _unreadable(problem: str) -> FileContents:
    return FileContents(errors=[problem], unreadable=True)


def _add_document(contents: FileContents, path: Path, index: int, document: Any) -> None:
    """Validate one document into `contents`: a VirtualService, a problem per field, or a skipped kind."""
    where = f"{path}: document {index + 1}"
    if _of_another_kind(document):
        log.debug("%s: skipping kind %s", where, shortened(document["kind"]))
        contents.other_kinds += 1
        return
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


def _of_another_kind(document: Any) -> bool:
    """Whether a document is of a kind the loader skips (a ConfigMap, a Kustomization). A near miss of
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


def _documents(path: Path, text: str) -> list[Any] | str:
    """The file's YAML documents, or the problem if any cannot be read (then the whole file is refused)."""
    documents: list[Any] = []
    try:
        for document in yaml.load_all(text, Loader=SAFE_LOADER):
            if len(documents) == MAX_DOCUMENTS:
                return (
                    f"{path}: more than {MAX_DOCUMENTS} YAML documents, the limit per file; "
                    "the whole file is skipped (split it)"
                )
            documents.append(document)
    except yaml.YAMLError as error:
        return f"{path}: invalid YAML: {_yaml_problem(error)}; the whole file is skipped"
    except (ValueError, OverflowError, RecursionError) as error:
        # PyYAML's constructors raise these for scalars they cannot convert (a date like 2024-13-45,
        # an integer of 5,000 digits) and its pure-Python parser for nesting too deep.
        problem = "nesting too deep" if isinstance(error, RecursionError) else str(error)
        return f"{path}: document {len(documents) + 1}: invalid YAML value: {problem}; the whole file is skipped"
    return documents


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


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


# -- many files at once (validate, render, the demo) ---------------------------------------------


@dataclass
class Loaded:
    """Files read at once: their VirtualServices, and every problem as `validate` prints it."""

    services: dict[Key, VirtualService] = field(default_factory=dict)  # each name's first definition
    files: list[tuple[Path, FileContents]] = field(default_factory=list)  # each file read, in order
    errors: list[str] = field(default_factory=list)  # missing files, invalid documents, a name defined twice


def load(paths: Iterable[Path]) -> Loaded:
    """Read files (a directory: its VirtualService files) in the order given; a name defined again, in
    the same file or a later one, is a problem and the first definition stands, as `serve --dir` does
    with a directory's files in name order."""
    loaded = Loaded()
    for path in dict.fromkeys(expand(paths)):  # a file given twice (also through its directory) is read once
        if not path.exists():
            loaded.errors.append(f"{path}: no such file")
            continue
        add_file(loaded, path, read_file(path))
    return loaded


def add_file(loaded: Loaded, path: Path, contents: FileContents) -> None:
    """Add what one file holds to `loaded`: pure, so the same bookkeeping serves files read anywhere."""
    loaded.files.append((path, contents))
    loaded.errors += contents.errors
    for vs in contents.services:
        if (first := loaded.services.get(vs.key)) is not None:
            loaded.errors.append(f"{path}: VirtualService {vs} is already defined in {first.origin}")
            continue
        loaded.services[vs.key] = vs
