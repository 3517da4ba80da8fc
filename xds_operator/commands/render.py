"""`xds-operator render` and `validate`'s conflict check: VirtualService files without a server.

The files go through the same loader (sources/loader.py), validation, translation and cache as when
served: `render` prints the snapshot a proxy with given labels would get, in the shape of
/debug/config_dump, and `conflicts` asks the cache which VirtualServices it would leave out of some
proxy (as `serve` does, with a warning). The demo asks the cache the same way (`left_out`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from xds_operator.api.model import Key, VirtualService
from xds_operator.ports.assigner import PortAssigner, PortRange, assigned_ports
from xds_operator.sources.loader import Loaded, load
from xds_operator.xds import cache as cache_module
from xds_operator.xds.cache import SnapshotCache, Watch
from xds_operator.xds.dump import TypeDump, resources_json

# validate looks for conflicts on the proxies any two distinct selectors select together: beyond
# this many selectors (pairs grow as their square) only on the proxies each selector selects.
MAX_SELECTORS_PAIRED = 100


# Listeners without a port are rendered and checked with a port from this range, unless --listener-ports says.
ASSUMED_LISTENER_PORTS = PortRange(20000, 29999)


@dataclass
class Placed:
    """The VirtualServices as `serve --listener-ports` would serve them: assigned ports in their specs."""

    services: list[VirtualService] = field(default_factory=list)
    assigned: list[str] = field(default_factory=list)  # per listener given a port here, which (for humans)
    waiting: list[str] = field(default_factory=list)  # VirtualServices serve would not serve: the range is full


def place(loaded: Loaded, ports: PortRange = ASSUMED_LISTENER_PORTS) -> Placed:
    """Assign ports as a `serve --listener-ports PORTS` starting with these files would."""
    assigner = PortAssigner(ports, settled_when_assigned=True)
    for vs in sorted(loaded.services.values(), key=lambda vs: (vs.created is None, vs.created or 0, vs.key)):
        assigner.place(vs)
    placed = Placed()
    for key, vs in loaded.services.items():
        served = assigner.result(key)
        if served is None:
            placed.waiting.append(f"{vs.origin}: VirtualService {vs}: {assigner.waiting(key)}")
            continue
        placed.services.append(served)
        placed.assigned += [
            f"{vs.origin}: VirtualService {vs}: listener {name} names no port; shown with {port}, the one "
            f"serve --listener-ports {ports} would assign it starting with these files (a running serve "
            "reports its own in status.listeners[].port)"
            for name, port in assigned_ports(served)
        ]
    return placed


def cache_of(loaded: Loaded, ports: PortRange = ASSUMED_LISTENER_PORTS) -> SnapshotCache:
    """The cache `serve` would fill with these VirtualServices: it decides conflicts as when served."""
    cache = SnapshotCache()
    for vs in place(loaded, ports).services:
        cache.upsert(vs)
    cache.commit()
    return cache


def served_quietly(cache: SnapshotCache, labels: Mapping[str, str]) -> Watch:
    """A proxy with these labels joins the cache; the conflicts it meets are left for the caller to report
    (cache.conflicts) with the files, rather than logged as the server's warnings."""
    with _quiet(cache_module.log):
        return cache.watch(dict(labels), lambda: None)


@dataclass
class Rendered:
    resources: dict[str, TypeDump] = field(default_factory=dict)  # per type: CDS, EDS, LDS
    errors: list[str] = field(default_factory=list)  # invalid files and documents, as `validate` prints them
    notes: list[str] = field(default_factory=list)  # the ports given to listeners that name none
    selected: int = 0  # valid VirtualServices whose selector the labels contain
    selectors: list[str] = field(default_factory=list)  # of the valid VirtualServices, distinct, as k=v,k=v


def render(paths: Iterable[Path], labels: Mapping[str, str], ports: PortRange = ASSUMED_LISTENER_PORTS) -> Rendered:
    loaded = load(paths)
    placed = place(loaded, ports)
    result = Rendered(
        errors=loaded.errors + placed.waiting,
        notes=placed.assigned,
        selected=sum(vs.selects(dict(labels)) for vs in loaded.services.values()),
        selectors=[",".join(f"{k}={v}" for k, v in s) for s in _distinct_selectors(loaded.services)],
    )
    # A watch makes the proxy's group a real one: a VirtualService left out because it conflicts
    # is logged (a warning naming both) as when served.
    snapshot = cache_of(loaded, ports).watch(dict(labels), lambda: None).snapshot
    assert snapshot is not None  # known labels always give a snapshot
    result.resources = resources_json(snapshot)
    return result


def conflicts(loaded: Loaded, ports: PortRange = ASSUMED_LISTENER_PORTS) -> list[str]:
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
    cache = cache_of(loaded, ports)
    for labels in label_sets:
        served_quietly(cache, labels)
    return [
        f"{vs.origin}: VirtualService {vs} conflicts: {reason}; serve would leave it out"
        for vs, reason in left_out(loaded, cache)
    ]


def left_out(loaded: Loaded, cache: SnapshotCache) -> list[tuple[VirtualService, str]]:
    """Each VirtualService the cache leaves out of a proxy that joined it, and why, in namespace/name
    order; the reason names the older VirtualService that won, and the file that defines it."""
    found = []
    for key, reason in sorted(cache.conflicts.items()):
        # The cache's reason ends with the winner: "... by the older VirtualService NAMESPACE/NAME".
        namespace, _, name = reason.rpartition(" VirtualService ")[2].partition("/")
        older = loaded.services.get((namespace, name))
        found.append((loaded.services[key], reason + (f" (in {older.origin})" if older is not None else "")))
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
