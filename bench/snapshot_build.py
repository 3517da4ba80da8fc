"""Benchmark: N VirtualServices → one full snapshot, against the raw protobuf floor.

    .venv/bin/python bench/snapshot_build.py [N ...]

Each VirtualService has one UDP listener, a cluster with a hash key, a TCP health check and
three endpoints. The floor is serializing the same final Envoy resources with protobuf
alone, measured in the same run; the ratio says what our cache and versioning cost on top.
"""

from __future__ import annotations

import sys
import time

from xds_operator.api import parse_virtual_service
from xds_operator.translate import translate_virtual_service
from xds_operator.xds.cache import SnapshotCache


def virtual_service(index: int) -> dict:
    return {
        "apiVersion": "servicemesh.l7mp.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": f"vs-{index}", "namespace": "bench"},
        "spec": {
            "selector": {"app": "ingress"},
            "listeners": [
                {
                    "name": f"listener-{index}",
                    "udp": {
                        "port": 1024 + index % 60000,
                        "cluster": {
                            "name": f"cluster-{index}",
                            "hash_key": "callid",
                            "health_check": {"protocol": "TCP", "interval": 500},
                            "endpoints": [
                                {
                                    "name": f"e{j}",
                                    "host": {"address": f"10.0.{j}.{index % 250 + 1}"},
                                    "port": 5000,
                                    "health_check_port": 5001,
                                }
                                for j in range(3)
                            ],
                        },
                    },
                }
            ],
        },
    }


def measure(count: int) -> dict[str, float]:
    # Distinct ports per proxy would cap N at 64k; the benchmark only needs distinct names.
    services = [parse_virtual_service(virtual_service(i)) for i in range(count)]

    started = time.perf_counter()
    envoy = [translate_virtual_service(vs) for vs in services]
    for resources in envoy:
        for message in (*resources.listeners, *resources.clusters, *resources.load_assignments):
            message.SerializeToString(deterministic=True)
    floor = time.perf_counter() - started

    started = time.perf_counter()
    cache = SnapshotCache()
    for vs in services:
        cache.upsert(vs)
    cache.commit()
    snapshot = cache.snapshot_for({"app": "ingress"})
    full = time.perf_counter() - started
    assert len(snapshot.resources) == 3
    return {"virtual_services": count, "snapshot_seconds": full, "floor_seconds": floor, "ratio": full / floor}


def main(argv: list[str]) -> int:
    counts = [int(arg) for arg in argv] or [1000]
    print(f"{'VirtualServices':>16} {'snapshot s':>11} {'floor s':>9} {'ratio':>6}")
    for count in counts:
        figures = measure(count)
        print(
            f"{count:>16} {figures['snapshot_seconds']:>11.3f} "
            f"{figures['floor_seconds']:>9.3f} {figures['ratio']:>6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
