"""What one hostile or broken client can do to the server: bounded memory, work and log output.

The real gRPC server in process, driven by raw streams that misbehave on purpose. Every test
asserts outcomes (what is kept, counted, logged or received), never timings.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import weakref
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from tests.support.ads_client import AdsClient, DeltaAdsClient, eventually, resource_names
from tests.support.h2_raw import RawConnection
from tests.support.vs import (  # the VirtualService builders
    INGRESS,
    commit,
    listener_spec,
    make_vs,
    two_eds_clusters,
)
from xds_operator.admin.logs import TEXT_FORMAT, TextFormatter, clip
from xds_operator.admin.metrics import Metrics
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.server import (
    MAX_QUEUED_REQUESTS,
    MAX_STREAMS_PER_CONNECTION,
    AggregatedDiscoveryService,
    start_server,
)
from xds_operator.xds.snapshot import CLUSTER, ENDPOINT
from xds_operator.xds.stream import (
    MAX_KEPT_ERROR,
    MAX_LOGGED_ERROR,
    MAX_NAME_LENGTH,
    MAX_REPORTED_TYPES,
    MAX_SHOWN_NODE_ID,
    NAME_MARGIN,
)

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
async def port(service: AggregatedDiscoveryService) -> AsyncIterator[int]:
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
    cache: SnapshotCache,
    service: AggregatedDiscoveryService,
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
    service: AggregatedDiscoveryService,
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
    cache: SnapshotCache,
    service: AggregatedDiscoveryService,
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


# -- A.2: resource-name sets ---------------------------------------------------------------------------


def test_a_snapshot_keeps_no_name_set_a_client_asked_for() -> None:
    """Each distinct set of EDS names used to be memoized in the shared snapshot for its whole life."""
    own = SnapshotCache()
    commit(own, two_eds_clusters())
    snapshot = own.snapshot_for(INGRESS)
    names = frozenset({"eds-a", *(f"junk-{i}" for i in range(1000))})
    kept = weakref.ref(names)
    assert [r.name for r in snapshot.select(ENDPOINT, names).resources] == ["eds-a"]
    assert snapshot.select(ENDPOINT, frozenset({"eds-a", "eds-b"})) is snapshot.select(ENDPOINT)  # shared
    del names
    gc.collect()
    assert kept() is None


async def test_a_delta_stream_keeps_at_most_the_names_it_can_use_and_still_gets_its_endpoints(
    cache: SnapshotCache,
    service: AggregatedDiscoveryService,
    channel: grpc.aio.Channel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    commit(cache, two_eds_clusters())
    envoy = DeltaAdsClient(channel, "greedy-1", INGRESS)
    try:
        await envoy.subscribe_and_ack(CLUSTER)
        junk = [f"junk-{round}-{i}" for round in range(3) for i in range(NAME_MARGIN)]
        with caplog.at_level(logging.WARNING, logger="xds_operator.xds.stream"):
            for start in range(0, len(junk), NAME_MARGIN):  # subscriptions only grow
                await envoy.send(ENDPOINT, subscribe=junk[start : start + NAME_MARGIN])
            await envoy.send(ENDPOINT, subscribe=["eds-a", "eds-b", "x" * (MAX_NAME_LENGTH + 1)])
            await eventually(lambda: "eds-a" in subscribed(service, ENDPOINT), "eds-a subscribed")

        names = subscribed(service, ENDPOINT)
        assert len(names) <= 2 + NAME_MARGIN and {"eds-a", "eds-b"} <= names
        assert not any(len(name) > MAX_NAME_LENGTH for name in names)
        warnings = [r.getMessage() for r in caplog.records if "names" in r.getMessage()]
        assert len(warnings) == 1 and "greedy-1" in warnings[0]  # once per stream, naming the proxy
        # The endpoints it asked for arrive (after removals of the junk names the stream kept), as it ACKs.
        for _ in range(10):
            await envoy.ack(await envoy.recv())
            if {"eds-a", "eds-b"} <= envoy.held.get(ENDPOINT, {}).keys():
                break
        assert {"eds-a", "eds-b"} <= envoy.held.get(ENDPOINT, {}).keys()
    finally:
        await envoy.close()


async def test_a_sotw_stream_keeps_at_most_the_names_it_can_use_and_still_gets_its_endpoints(
    cache: SnapshotCache,
    service: AggregatedDiscoveryService,
    channel: grpc.aio.Channel,
) -> None:
    commit(cache, two_eds_clusters())
    envoy = AdsClient(channel, "greedy-2", INGRESS)
    try:
        await envoy.subscribe_and_ack(CLUSTER)
        await envoy.send(ENDPOINT, names=[*(f"junk-{i}" for i in range(3 * NAME_MARGIN)), "eds-b", "eds-a"])
        response = await envoy.expect(ENDPOINT, names=["eds-a", "eds-b"])
        assert len(subscribed(service, ENDPOINT)) <= 2 + NAME_MARGIN
        assert response.version_info == cache.snapshot_for(INGRESS).select(ENDPOINT).version
    finally:
        await envoy.close()


def subscribed(ads: AggregatedDiscoveryService, type_url: str) -> frozenset[str]:
    """The names the server keeps for the one stream; none until it has read that type's first request."""
    (connection,) = ads.connections()
    state = connection.stream.types.get(type_url)  # the request may still be on its way
    return (state.names if state is not None else None) or frozenset()


# -- A.6: log flooding -------------------------------------------------------------------------------


async def test_a_huge_node_id_asking_for_unknown_types_logs_little_and_forges_no_line(
    cache: SnapshotCache,
    service: AggregatedDiscoveryService,
    channel: grpc.aio.Channel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 1 MB node id with a newline, asking 200 times for unknown types: a few short lines, each one line."""
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c")]))
    node_id = "evil\n2026-01-01 00:00:00,000 ERROR forged: line" + "x" * 1_000_000
    envoy = AdsClient(channel, node_id, INGRESS)
    formatter = TextFormatter(TEXT_FORMAT)
    try:
        with caplog.at_level(logging.INFO, logger="xds_operator"):
            for index in range(200):
                await envoy.send(f"type.googleapis.com/unknown.Type{index % 20}/" + "y" * 100_000)
            assert resource_names(await envoy.subscribe_and_ack(CLUSTER)) == ["rtp-c"]  # still served
        lines = [formatter.format(record) for record in caplog.records]
        assert sum(len(line) for line in lines) < 20_000  # it sent 20 MB
        assert all("\n" not in line for line in lines)
        assert all("forged" not in line or "evil\\n2026" in line for line in lines)
        unsupported = [line for line in lines if "unsupported type" in line]
        assert len(unsupported) == MAX_REPORTED_TYPES + 1  # once per type, then once "more"
        (proxy,) = service.proxies()
        assert len(proxy["node_id"]) < MAX_SHOWN_NODE_ID + 100 and "more)" in proxy["node_id"]
        assert service.connections()[0].stream.node_id == node_id  # its identity is not cut
    finally:
        await envoy.close()


async def test_a_huge_nack_text_is_cut_in_the_log_and_in_what_is_kept(
    cache: SnapshotCache,
    service: AggregatedDiscoveryService,
    channel: grpc.aio.Channel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c")]))
    envoy = AdsClient(channel, "nacker", INGRESS)
    try:
        await envoy.send(CLUSTER)
        response = await envoy.expect(CLUSTER)
        with caplog.at_level(logging.WARNING, logger="xds_operator"):
            await envoy.nack(response, "bad\r\n" + "z" * 1_000_000)
            await eventually(lambda: service.proxies()[0]["types"]["CDS"]["state"] == "NACKed", "the NACK")
        (record,) = [r for r in caplog.records if "NACKed" in r.getMessage()]
        assert len(record.getMessage()) < MAX_LOGGED_ERROR + 200 and "bad\\r\\n" in record.getMessage()
        kept = service.proxies()[0]["types"]["CDS"]["error"]
        assert kept.startswith("bad\r\n") and len(kept) < MAX_KEPT_ERROR + 50 and kept.endswith("more)")
    finally:
        await envoy.close()


def test_text_logs_escape_control_characters_in_messages_but_keep_tracebacks() -> None:
    formatter = TextFormatter(TEXT_FORMAT)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "proxy %s connected", ("a\nb\x1b[31m",), None)
    assert formatter.format(record).endswith("proxy a\\nb\\x1b[31m connected")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "\nValueError: boom" in formatter.format(record)
    assert clip("é\u2028" + "x" * 10, 3) == "é\\u2028x…(9 more)"


async def test_every_limit_a_client_hits_is_counted_in_the_metrics(cache: SnapshotCache) -> None:
    commit(cache, two_eds_clusters())
    metrics = Metrics()
    ads = AggregatedDiscoveryService(cache, observer=metrics)
    server, bound = await start_server(ads, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bound}") as fresh:
            envoy = AdsClient(fresh, "n" * (MAX_SHOWN_NODE_ID + 1), INGRESS)
            await envoy.send("type.googleapis.com/unknown.Type")
            await envoy.send("type.googleapis.com/unknown.Type")
            await envoy.send(ENDPOINT, names=["x" * (MAX_NAME_LENGTH + 1), "eds-a"])
            await envoy.expect(ENDPOINT, names=["eds-a"])
            await envoy.close()
    finally:
        await server.stop(None)
    text = metrics.exposition().decode()
    assert 'xds_operator_xds_client_limits_total{limit="unsupported_type"} 2.0' in text
    assert 'xds_operator_xds_client_limits_total{limit="resource_names"} 1.0' in text
    assert 'xds_operator_xds_client_limits_total{limit="node_id"} 1.0' in text
