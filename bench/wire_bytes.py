"""Benchmark: bytes on the wire for one change, state-of-the-world vs incremental (delta) ADS.

    .venv/bin/python bench/wire_bytes.py [N]

N VirtualServices (default 1,000), each one UDP listener and one EDS cluster with three
endpoints, served to one proxy subscribed to everything. Then (a) one cluster's endpoints
change, (b) one listener's port changes. Reported: the serialized size of the responses each
protocol variant sends for that change (the protobuf payload; gRPC and HTTP/2 framing add a
few bytes per message on top), and the ratio.
"""

from __future__ import annotations

import sys

from envoy.service.discovery.v3 import discovery_pb2

from xds_operator.api import parse_virtual_service
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.delta import DeltaStream
from xds_operator.xds.snapshot import CLUSTER, ENDPOINT, LISTENER
from xds_operator.xds.stream import SotwStream

LABELS = {"app": "ingress"}


def virtual_service(index: int, *, endpoint_octet: int = 1, port_offset: int = 0):
    return parse_virtual_service(
        {
            "apiVersion": "servicemesh.l7mp.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": f"vs-{index}", "namespace": "bench"},
            "spec": {
                "selector": LABELS,
                "listeners": [
                    {
                        "name": f"listener-{index}",
                        "udp": {
                            "port": 1024 + index + port_offset,
                            "cluster": {
                                "name": f"cluster-{index}",
                                "service_discovery": "eds",
                                "hash_key": "callid",
                                "endpoints": [
                                    {"name": f"e{j}", "host": {"address": f"10.{j}.{endpoint_octet}.1"}, "port": 5000}
                                    for j in range(3)
                                ],
                            },
                        },
                    }
                ],
            },
        }
    )


def subscribed_sotw(snapshot, cluster_names):
    stream = SotwStream("sotw")
    for type_url, names in ((CLUSTER, ()), (ENDPOINT, cluster_names), (LISTENER, ())):
        (raw,) = stream.on_request(discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names), snapshot)
        response = discovery_pb2.DiscoveryResponse.FromString(raw)
        ack = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=names, version_info=response.version_info, response_nonce=response.nonce
        )
        assert stream.on_request(ack, snapshot) == []
    return stream


def subscribed_delta(snapshot, cluster_names):
    stream = DeltaStream("delta")
    for type_url, names in ((CLUSTER, ()), (ENDPOINT, cluster_names), (LISTENER, ())):
        (raw,) = stream.on_request(
            discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=names), snapshot
        )
        response = discovery_pb2.DeltaDiscoveryResponse.FromString(raw)
        ack = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=response.nonce)
        assert stream.on_request(ack, snapshot) == []
    return stream


def measure(count: int) -> list[tuple[str, int, int, int, int]]:
    cache = SnapshotCache()
    for index in range(count):
        cache.upsert(virtual_service(index))
    cache.commit()
    before = cache.snapshot_for(LABELS)
    names = [f"cluster-{index}" for index in range(count)]
    rows = []
    for label, changed in (
        ("one cluster's endpoints", virtual_service(count // 2, endpoint_octet=2)),
        ("one listener's port", virtual_service(count // 2, port_offset=count)),
    ):
        sotw, delta = subscribed_sotw(before, names), subscribed_delta(before, names)
        cache.upsert(changed)
        cache.commit()
        after = cache.snapshot_for(LABELS)
        sotw_responses, delta_responses = sotw.on_snapshot(after), delta.on_snapshot(after)
        sotw_bytes = sum(len(raw) for raw in sotw_responses)  # both variants send pre-serialized responses
        delta_bytes = sum(len(raw) for raw in delta_responses)
        sotw_resources = sum(len(discovery_pb2.DiscoveryResponse.FromString(raw).resources) for raw in sotw_responses)
        delta_resources = sum(
            len(discovery_pb2.DeltaDiscoveryResponse.FromString(raw).resources) for raw in delta_responses
        )
        rows.append((label, sotw_bytes, sotw_resources, delta_bytes, delta_resources))
        cache.upsert(virtual_service(count // 2))  # back to the start for the next change
        cache.commit()
    return rows


def run(smoke: bool = False) -> list[dict]:
    count = 20 if smoke else 1000
    return [
        {
            "scenario": "wire bytes",
            "name": f"{label} among {count:,} EDS clusters",
            "parameters": {"virtual_services": count},
            "figures": {
                "sotw_bytes": sotw_bytes,
                "sotw_resources": sotw_resources,
                "delta_bytes": delta_bytes,
                "delta_resources": delta_resources,
            },
            "ratios": {"sotw_vs_delta": sotw_bytes / delta_bytes},
            "targets": {},
        }
        for label, sotw_bytes, sotw_resources, delta_bytes, delta_resources in measure(count)
    ]


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    print(f"{count} VirtualServices (1 listener + 1 EDS cluster each), one proxy subscribed to all")
    print(f"{'change':<26}{'SotW bytes':>12}{'(resources)':>13}{'delta bytes':>13}{'(resources)':>13}{'ratio':>9}")
    for label, sotw_bytes, sotw_resources, delta_bytes, delta_resources in measure(count):
        ratio = sotw_bytes / delta_bytes
        print(
            f"{label:<26}{sotw_bytes:>12,}{sotw_resources:>13,}{delta_bytes:>13,}{delta_resources:>13,}{ratio:>8.0f}×"
        )


if __name__ == "__main__":
    main()
