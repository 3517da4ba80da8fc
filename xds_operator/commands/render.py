"""`xds-operator render` and `validate`'s conflict check: VirtualService files without a server.

The files go through the same validation, translation and cache as when served: `render` prints the
snapshot a proxy with given labels would get, in the shape of /debug/config_dump, and `conflicts`
asks the cache which VirtualServices it would leave out of some proxy (as `serve` does, with a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from xds_operator.api.model import Key, VirtualService
from xds_operator.sources.directory import FileContents, expand, read_file
from xds_operator.xds import cache as cache_module
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.dump import TypeDump, resources_json

# validate looks for conflicts on the proxies any two distinct selectors select together: beyond
# this many selectors (pairs grow as their square) only on the proxies each selector selects.
MAX_SELECTORS_PAIRED = 100


@dataclass
class Loaded:
    """Files read into a cache: their VirtualServices, and the problems as `validate` prints them."""

    cache: SnapshotCache = field(default_factory=SnapshotCache)
    services: dict[Key, VirtualService] = field(default_factory=dict)
    files: list[tuple[Path, FileContents]] = field(default_factory=list)  # each file read, in order
    errors: list[str] = field(default_factory=list)  # missing files, invalid documents, a name defined twice


def load(paths: Iterable[Path]) -> Loaded:
    loaded = Loaded()
    for path in dict.fromkeys(expand(paths)):  # a file given twice (also through its directory) is read once
        if not path.is_file():
            loaded.errors.append(f"{path}: no such file")
            continue
        contents = read_file(path)
        loaded.files.append((path, contents))
        loaded.errors += contents.errors
        for vs in contents.services:
            if (first := loaded.services.get(vs.key)) is not None:
                loaded.errors.append(f"{path}: VirtualService {vs} is already defined in {first.origin}")
                continue
            loaded.services[vs.key] = vs
            loaded.cache.upsert(vs)
    loaded.cache.commit()
    return loaded


@dataclass
class Rendered:
    resources: dict[str, TypeDump] = field(default_factory=dict)  # per type: CDS, EDS, LDS
    errors: list[str] = field(default_factory=list)  # invalid files and documents, as `validate` prints them
    selected: int = 0  # valid VirtualServices whose selector the labels contain
    selectors: list[str] = field(default_factory=list)  # of the valid VirtualServices, distinct, as k=v,k=v


def render(paths: Iterable[Path], labels: Mapping[str, str]) -> Rendered:
    loaded = load(paths)
    result = Rendered(
        errors=loaded.errors,
        selected=sum(vs.selects(dict(labels)) for vs in loaded.services.values()),
        selectors=[",".join(f"{k}={v}" for k, v in s) for s in _distinct_selectors(loaded.services)],
    )
    # A watch makes the proxy's group a real one: a VirtualService left out because it conflicts
    # is logged (a warning naming both) as when served.
    snapshot = loaded.cache.watch(dict(labels), lambda: None).snapshot
    assert snapshot is not None  # known labels always give a snapshot
    result.resources = resources_json(snapshot)
    return result


def conflicts(loaded: Loaded) -> list[str]:
    """Each VirtualService `serve` would leave out of some proxy, naming both files: the cache decides.

    Two VirtualServices can only meet on a proxy whose labels contain both selectors, so the proxies
    labelled with exactly one selector, or with two compatible ones together, show every conflict."""
    selectors = _distinct_selectors(loaded.services)
    label_sets = [dict(selector) for selector in selectors]
    if len(selectors) <= MAX_SELECTORS_PAIRED:
        for i, first in enumerate(selectors):
            for second in selectors[i + 1 :]:
                merged = dict(first)
                if all(merged.setdefault(key, value) == value for key, value in second):
                    label_sets.append(merged)
    with _quiet(cache_module.log):  # reported here, with the files, instead of as the server's warning
        for labels in label_sets:
            loaded.cache.watch(labels, lambda: None)
    found = []
    for key, reason in sorted(loaded.cache.conflicts.items()):
        vs = loaded.services[key]
        # The cache's reason ends with the winner: "... by the older VirtualService NAMESPACE/NAME".
        namespace, _, name = reason.rpartition(" VirtualService ")[2].partition("/")
        older = loaded.services.get((namespace, name))
        where = f" (in {older.origin})" if older is not None else ""
        found.append(f"{vs.origin}: VirtualService {vs} conflicts: {reason}{where}; serve would leave it out")
    return found


def _distinct_selectors(services: Mapping[Key, VirtualService]) -> list[tuple[tuple[str, str], ...]]:
    return sorted({tuple(sorted(vs.selector)) for vs in services.values()})


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Only errors from this logger meanwhile."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
