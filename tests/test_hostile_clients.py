"""What one hostile or broken client can do to the server: bounded memory, work and log output.

The real gRPC server in process, driven by raw streams that misbehave on purpose. Every test
asserts outcomes (what is kept, counted, logged or received), never timings.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from ads_client import eventually
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from test_ads_protocol import (  # the VirtualService factories and the server fixtures
    INGRESS,
    cache,  # noqa: F401 (fixture)
    channel,  # noqa: F401 (fixture)
    commit,
    listener_spec,
    make_vs,
    service,  # noqa: F401 (fixture)
)

from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.server import MAX_QUEUED_REQUESTS, AggregatedDiscoveryService, start_server
from xds_operator.xds.snapshot import CLUSTER, ENDPOINT

LONG_HOSTS = [f"h{n:02d}" + "h" * 57 + "." + "o" * 60 + "." + "s" * 60 + "." + "t" * 60 + ".example" for n in range(32)]


def big_services(count: int) -> list:
    """VirtualServices with 64 strictdns clusters of 32 long DNS names each: ~0.5 MB of CDS apiece."""
    return [
        make_vs(
            f"big-{index}",
            [
                listener_spec(f"l{index}-{n}", 10000 + 64 * index + n, f"c{index}-{n}", addresses=LONG_HOSTS)
                for n in range(64)
            ],
        )
        for index in range(count)
    ]


@pytest.fixture
async def port(service: AggregatedDiscoveryService) -> AsyncIterator[int]:  # noqa: F811
    """The port of a running server, for tests that open channels with options of their own."""
    server, bound = await start_server(service, "127.0.0.1:0")
    try:
        yield bound
    finally:
        await server.stop(None)


def node(node_id: str = "hostile-1") -> base_pb2.Node:
    proxy = base_pb2.Node(id=node_id)
    proxy.metadata.update({"labels": INGRESS})
    return proxy


async def write_until_blocked(call: Any, requests: list[Any], timeout: float = 2.0) -> tuple[int, asyncio.Task | None]:
    """Write requests until one is not taken within `timeout` (flow control holds it back).

    Returns how many were written and the write still waiting (None if every one went)."""
    for sent, request in enumerate(requests):
        write = asyncio.ensure_future(call.write(request))
        done, _ = await asyncio.wait([write], timeout=timeout)
        if not done:
            return sent, write
        write.result()
    return len(requests), None


# -- A.1: requests of a client that does not read its responses ------------------------------------


async def test_a_client_that_never_reads_cannot_queue_more_than_the_bound_of_requests(
    cache: SnapshotCache,  # noqa: F811
    service: AggregatedDiscoveryService,  # noqa: F811
    port: int,
) -> None:
    """A response the client does not read blocks its stream's handler; what the client sends meanwhile
    must wait in gRPC's flow control (its writes block), not pile up in the server's memory."""
    commit(cache, *big_services(4))  # a CDS response far larger than the stream's flow-control window
    # Without BDP probing the client's receive window stays at 64 KiB while it reads nothing.
    own = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.http2.bdp_probe", 0)])
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(own).DeltaAggregatedResources()
    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, node=node()))
    # Each request subscribes new EDS names (each would need an answer); 1 KiB apiece.
    requests = [
        discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, resource_names_subscribe=[f"eds-{i}-" + "x" * 1000])
        for i in range(20000)
    ]
    sent, blocked = await write_until_blocked(call, requests)

    assert blocked is not None, f"all {sent} writes went through: the server kept reading"
    assert 0 < service.counts()["queued_requests"] <= MAX_QUEUED_REQUESTS
    # Reading again, the client gets its clusters, and every queued request is handled.
    first = await asyncio.wait_for(call.read(), 30)
    assert first.type_url == CLUSTER and len(first.resources) == 4 * 64
    await asyncio.wait_for(blocked, 30)  # flow control lets the held write go
    await eventually(lambda: service.counts()["queued_requests"] == 0, "the queue to drain")
    call.cancel()
    await own.close()
