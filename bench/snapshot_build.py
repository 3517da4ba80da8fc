"""Benchmark: N VirtualServices → one full snapshot, against protobuf's own cost.

    .venv/bin/python bench/snapshot_build.py [N ...]

Each VirtualService has one UDP listener, a cluster with a hash key, a TCP health check and
three endpoints. Two floors are measured in the same run: serializing the same final Envoy
resources with protobuf alone (the issue's floor: what no control plane can avoid), and
building them with protobuf from the parsed VirtualServices plus serializing (translation
without our cache). The ratios say what translation and our cache cost on top.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from xds_operator.api import parse_virtual_service
from xds_operator.translate import translate_virtual_service
from xds_operator.xds.cache import SnapshotCache

LABELS = {"app": "ingress"}


def virtual_service(index: int, *, endpoint_port: int = 5000) -> dict:
    return {
        "apiVersion": "servicemesh.l7mp.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": f"vs-{index}", "namespace": "bench"},
        "spec": {
            "selector": dict(LABELS),
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
                                    "port": endpoint_port,
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


def measure(count: int) -> dict[str, Any]:
    # Ports repeat past 60k VirtualServices; the benchmark needs distinct names only (no conflicts below that).
    services = [parse_virtual_service(virtual_service(i)) for i in range(count)]

    started = time.perf_counter()
    built = [translate_virtual_service(vs) for vs in services]
    messages = [m for r in built for m in (*r.listeners, *r.clusters, *r.load_assignments)]
    translate_floor = time.perf_counter() - started
    started = time.perf_counter()
    for message in messages:
        message.SerializeToString(deterministic=True)
    serialize_floor = time.perf_counter() - started
    translate_floor += serialize_floor

    started = time.perf_counter()
    cache = SnapshotCache()
    for vs in services:
        cache.upsert(vs)
    cache.commit()
    snapshot = cache.snapshot_for(LABELS)
    _ = snapshot.versions
    full = time.perf_counter() - started
    assert sum(len(of_type) for of_type in snapshot.resources.values()) == 2 * count
    return {
        "scenario": "snapshot build",
        "name": f"{count:,} VirtualServices → full snapshot",
        "parameters": {"virtual_services": count, "resources": 2 * count},
        "figures": {
            "snapshot_seconds": full,
            "protobuf_serialize_seconds": serialize_floor,
            "protobuf_build_and_serialize_seconds": translate_floor,
        },
        "ratios": {"vs_serialize_floor": full / serialize_floor, "vs_build_and_serialize": full / translate_floor},
        "targets": {"snapshot_seconds": 1.0, "vs_serialize_floor": 3.0} if count >= 10_000 else {},
    }


def run(smoke: bool = False) -> list[dict[str, Any]]:
    return [measure(count) for count in ([50] if smoke else [1000, 10_000])]


def main(argv: list[str]) -> int:
    counts = [int(arg) for arg in argv] or [1000, 10_000]
    print(
        f"{'VirtualServices':>16} {'snapshot s':>11} {'serialize s':>12} {'ratio':>6} {'build+ser. s':>13} {'ratio':>6}"
    )
    for count in counts:
        result = measure(count)
        figures, ratios = result["figures"], result["ratios"]
        print(
            f"{count:>16,} {figures['snapshot_seconds']:>11.3f} {figures['protobuf_serialize_seconds']:>12.3f} "
            f"{ratios['vs_serialize_floor']:>6.1f} {figures['protobuf_build_and_serialize_seconds']:>13.3f} "
            f"{ratios['vs_build_and_serialize']:>6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
