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
from ads_client import AdsClient, eventually, resource_names
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from h2_raw import RawConnection
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
from xds_operator.xds.server import (
    MAX_QUEUED_REQUESTS,
    MAX_STREAMS_PER_CONNECTION,
    AggregatedDiscoveryService,
    start_server,
)
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


# -- A.3: stream floods ------------------------------------------------------------------------------


async def test_one_connection_cannot_open_more_than_the_bound_of_streams(
    service: AggregatedDiscoveryService,  # noqa: F811
    port: int,
) -> None:
    """Streams opened without a request each cost the server a call and tasks: one connection gets at most
    MAX_STREAMS_PER_CONNECTION, the rest are refused by gRPC (RST_STREAM)."""
    connection = RawConnection()
    await connection.open(port)
    try:
        await connection.streams(500, reset=False)
        await eventually(lambda: connection.refused >= 500 - MAX_STREAMS_PER_CONNECTION, "the excess streams refused")
        assert connection.max_concurrent_streams == MAX_STREAMS_PER_CONNECTION
        assert service.counts()["streams"] <= MAX_STREAMS_PER_CONNECTION
    finally:
        await connection.close()
    await eventually(lambda: service.counts()["streams"] == 0, "the streams to end with their connection")


async def test_streams_opened_and_reset_at_once_leave_nothing_behind_and_a_new_proxy_is_served(
    cache: SnapshotCache,  # noqa: F811
    service: AggregatedDiscoveryService,  # noqa: F811
    port: int,
) -> None:
    """The HTTP/2 "rapid reset" pattern, bounded: a few thousand streams opened and cancelled at once."""
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c")]))
    tasks_before = len(asyncio.all_tasks())
    connection = RawConnection()
    await connection.open(port)
    try:
        await connection.streams(3000, reset=True)  # HEADERS and RST_STREAM, frame after frame
    finally:
        await connection.close()
    await eventually(lambda: service.counts()["streams"] == 0, "every stream to end")
    await eventually(lambda: len(asyncio.all_tasks()) <= tasks_before, "the tasks to end")

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as fresh:
        envoy = AdsClient(fresh, "after-the-flood", INGRESS)
        try:
            assert resource_names(await envoy.subscribe_and_ack(CLUSTER)) == ["rtp-c"]
        finally:
            await envoy.close()
