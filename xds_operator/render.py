"""`xds-operator render`: the Envoy resources a set of VirtualService files gives a proxy with given labels.

No server: the files go through the same validation, translation and cache as when served,
and the proxy's snapshot is printed in the shape of /debug/config_dump.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .files import expand, read_file
from .xds.cache import SnapshotCache
from .xds.dump import resources_json


@dataclass
class Rendered:
    resources: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # invalid files and documents, as `validate` prints them


def render(paths: Iterable[Path], labels: Mapping[str, str]) -> Rendered:
    result = Rendered()
    cache = SnapshotCache()
    seen: dict = {}
    for path in expand(paths):
        if not path.is_file():
            result.errors.append(f"{path}: no such file")
            continue
        contents = read_file(path)
        result.errors += contents.errors
        for vs in contents.services:
            if vs.key in seen:
                result.errors.append(f"{path}: VirtualService {vs} is already defined in {seen[vs.key]}")
                continue
            seen[vs.key] = path
            cache.upsert(vs)
    cache.commit()
    # A watch makes the proxy's group a real one: a VirtualService left out because it conflicts
    # is logged (a warning naming both) as when served.
    snapshot = cache.watch(dict(labels), lambda: None).snapshot
    assert snapshot is not None  # known labels always give a snapshot
    result.resources = resources_json(snapshot)
    return result
