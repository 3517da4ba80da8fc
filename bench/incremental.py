"""Benchmark: one VirtualService edited among N → the new snapshot.

    .venv/bin/python bench/incremental.py [N]

After a full snapshot of N VirtualServices (as in snapshot_build.py), one of them is edited
(an endpoint port) again and again; each edit is one upsert + commit, timed until the new
snapshot and its versions exist. Reported: median and max time per edit, and how many
VirtualServices were translated and resources serialized per edit (only the edited one's).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from snapshot_build import LABELS, virtual_service

from xds_operator.api import parse_virtual_service
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.snapshot import CLUSTER

EDITS = 50


def measure(count: int, edits: int = EDITS) -> dict[str, Any]:
    cache = SnapshotCache()
    for index in range(count):
        cache.upsert(parse_virtual_service(virtual_service(index)))
    cache.commit()
    watch = cache.watch(LABELS, lambda: None)  # a proxy's group, kept up to date by every commit
    edited = count // 2
    seconds: list[float] = []
    translations = resources = 0
    for edit in range(edits):
        vs = parse_virtual_service(virtual_service(edited, endpoint_port=6000 + edit))
        before, serialized = cache.translations, cache.serialized
        started = time.perf_counter()
        cache.upsert(vs)
        cache.commit()
        snapshot = watch.snapshot
        assert snapshot is not None
        _ = snapshot.versions
        seconds.append(time.perf_counter() - started)
        translations += cache.translations - before
        resources += cache.serialized - serialized
    cluster = cluster_pb2.Cluster.FromString(watch.snapshot.resources[CLUSTER][f"cluster-{edited}"].body)
    ports = {e.endpoint.address.socket_address.port_value for e in cluster.load_assignment.endpoints[0].lb_endpoints}
    assert ports == {6000 + edits - 1}, ports  # the snapshot holds the last edit
    return {
        "scenario": "incremental change",
        "name": f"1 VirtualService edited among {count:,}",
        "parameters": {"virtual_services": count, "edits": edits},
        "figures": {
            "median_ms": statistics.median(seconds) * 1000,
            "max_ms": max(seconds) * 1000,
            "translated_per_edit": translations / edits,
            "serialized_resources_per_edit": resources / edits,
        },
        "ratios": {"median_vs_target": statistics.median(seconds) * 1000 / 5.0},
        "targets": {"median_ms": 5.0, "translated_per_edit": 1},
    }


def run(smoke: bool = False) -> list[dict[str, Any]]:
    return [measure(200, edits=5)] if smoke else [measure(10_000)]


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv else 10_000
    result = measure(count)
    figures = result["figures"]
    print(
        f"{count:,} VirtualServices, {EDITS} edits of one: median {figures['median_ms']:.2f} ms, "
        f"max {figures['max_ms']:.2f} ms, {figures['translated_per_edit']:.0f} translated and "
        f"{figures['serialized_resources_per_edit']:.0f} resources serialized per edit"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
