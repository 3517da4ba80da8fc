"""A NACK is blamed on the VirtualServices whose resources Envoy's error text names, not on every one
the proxy was sent since its last full ACK (issue 14, B.13). The real gRPC server in process, a client
that acts like Envoy, and the status side's own summary (progress.summarize) of what the server knows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from ads_client import AdsClient, DeltaAdsClient, eventually
from test_ads_protocol import INGRESS, commit, listener_spec, make_vs

from xds_operator.api import Key
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.progress import Progress, summarize
from xds_operator.xds.server import AggregatedDiscoveryService, start_server
from xds_operator.xds.snapshot import CLUSTER, LISTENER

CALLS = [make_vs(f"call-{i}", [listener_spec(f"call-{i}-l", 3000 + i, f"call-{i}-c")]) for i in range(4)]


@pytest.fixture
def cache() -> SnapshotCache:
    return SnapshotCache()


@pytest.fixture
def service(cache: SnapshotCache) -> AggregatedDiscoveryService:
    return AggregatedDiscoveryService(cache)


@pytest.fixture
async def channel(service: AggregatedDiscoveryService) -> AsyncIterator[grpc.aio.Channel]:
    server, port = await start_server(service, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(None)


def progress(service: AggregatedDiscoveryService, cache: SnapshotCache) -> dict[str, Progress]:
    return {name: p for (_, name), p in summarize(service.progress(), cache.virtual_services()).items()}


def blamed(result: dict[str, Progress]) -> set[str]:
    return {name for name, p in result.items() if p.rejections}


def applied(result: dict[str, Progress]) -> set[str]:
    return {name for name, p in result.items() if p.applied == p.selected == 1}


async def nacked_on_first_push(
    channel: grpc.aio.Channel, service: AggregatedDiscoveryService, type_url: str, error: str
) -> AdsClient:
    """A SotW proxy that gets everything in one response per type (a new or reconnecting Envoy) and
    rejects the `type_url` one with `error`, ACKing the other."""
    envoy = AdsClient(channel, "ingress-1", INGRESS)
    for kind in (CLUSTER, LISTENER):
        await envoy.send(kind)
        response = await envoy.expect(kind)
        if kind == type_url:
            await envoy.nack(response, error)
        else:
            await envoy.ack(response)
    await eventually(lambda: any(p.rejection for p in service.progress()), "the NACK to arrive")
    return envoy


async def test_a_rejected_listener_blames_only_the_virtualservice_envoy_names(
    cache: SnapshotCache, service: AggregatedDiscoveryService, channel: grpc.aio.Channel
) -> None:
    commit(cache, *CALLS)
    error = "Error adding/updating listener(s) call-2-l: cannot bind '0.0.0.0:3002': Address already in use\n"
    envoy = await nacked_on_first_push(channel, service, LISTENER, error)
    result = progress(service, cache)
    assert blamed(result) == {"call-2"}
    assert result["call-2"].rejections == [("ingress-1", f"LDS: {error}")]
    assert applied(result) == {"call-0", "call-1", "call-3"}  # Envoy applied every other listener
    assert result["call-2"].applied == 0
    await envoy.close()


async def test_a_rejected_shared_cluster_blames_every_virtualservice_that_declares_it(
    cache: SnapshotCache, service: AggregatedDiscoveryService, channel: grpc.aio.Channel
) -> None:
    sharing = [make_vs(f"share-{i}", [listener_spec(f"share-{i}-l", 4000 + i, "worker-c")]) for i in range(2)]
    commit(cache, *CALLS, *sharing)
    error = "Error adding/updating cluster(s) worker-c: some field is invalid"
    envoy = await nacked_on_first_push(channel, service, CLUSTER, error)
    result = progress(service, cache)
    assert blamed(result) == {"share-0", "share-1"}
    assert applied(result) == {f"call-{i}" for i in range(4)}
    await envoy.close()


async def test_a_rejection_naming_nothing_known_blames_everything_not_acked(
    cache: SnapshotCache, service: AggregatedDiscoveryService, channel: grpc.aio.Channel
) -> None:
    commit(cache, *CALLS)
    envoy = await nacked_on_first_push(channel, service, LISTENER, "Proto constraint validation failed")
    result = progress(service, cache)
    assert blamed(result) == {f"call-{i}" for i in range(4)}  # nothing to tell them apart: the old rule
    assert applied(result) == set()
    await envoy.close()


async def test_a_delta_nack_naming_one_listener_blames_only_its_virtualservice(
    cache: SnapshotCache, service: AggregatedDiscoveryService, channel: grpc.aio.Channel
) -> None:
    commit(cache, *CALLS)
    envoy = DeltaAdsClient(channel, "ingress-1", INGRESS)
    for kind in (CLUSTER, LISTENER):
        await envoy.send(kind)
        response = await envoy.expect(kind)
        if kind == LISTENER:
            await envoy.nack(response, "Error adding/updating listener(s) call-0-l: cannot bind: in use")
        else:
            await envoy.ack(response)
    await eventually(lambda: any(p.rejection for p in service.progress()), "the NACK to arrive")
    result = progress(service, cache)
    assert blamed(result) == {"call-0"}
    assert applied(result) == {"call-1", "call-2", "call-3"}
    await envoy.close()


async def test_a_later_fix_of_the_named_virtualservice_clears_its_rejection(
    cache: SnapshotCache, service: AggregatedDiscoveryService, channel: grpc.aio.Channel
) -> None:
    commit(cache, *CALLS)
    error = "Error adding/updating listener(s) call-1-l: cannot bind '0.0.0.0:3001': Address already in use"
    envoy = await nacked_on_first_push(channel, service, LISTENER, error)
    commit(cache, make_vs("call-1", [listener_spec("call-1-l", 3101, "call-1-c")]))
    await envoy.ack(await envoy.expect(LISTENER))
    everything = {f"call-{i}" for i in range(4)}
    await eventually(lambda: applied(progress(service, cache)) == everything, "the ACK to arrive")
    assert blamed(progress(service, cache)) == set()
    await envoy.close()


def test_owners_of_names_the_holders_of_listener_and_cluster_claims(cache: SnapshotCache) -> None:
    commit(cache, *CALLS)
    cache.snapshot_for(INGRESS)
    watch = cache.watch(INGRESS, lambda: None)
    key: Key = ("media", "call-3")
    assert cache.owners_of(INGRESS, [("listener", "call-3-l"), ("listener", "Address")]) == {key}
    assert cache.owners_of(INGRESS, [("cluster", "call-3-l")]) == frozenset()  # a listener name, not a cluster
    assert cache.owners_of({"app": "nobody"}, [("listener", "call-3-l")]) == frozenset()
    cache.cancel(watch)


async def test_delta_sends_the_named_rejected_resources_again_with_the_next_response_only(
    cache: SnapshotCache, service: AggregatedDiscoveryService, channel: grpc.aio.Channel
) -> None:
    """Delta sends only what changed: without this, a later ACK would count the rejected listener as running."""
    commit(cache, *CALLS)
    envoy = DeltaAdsClient(channel, "ingress-1", INGRESS)
    await envoy.subscribe_and_ack(CLUSTER)
    await envoy.send(LISTENER)
    await envoy.nack(await envoy.expect(LISTENER), "Error adding/updating listener(s) call-0-l: cannot bind: in use")
    await envoy.expect_nothing()  # not at once: the same content would be rejected the same way
    commit(cache, make_vs("call-9", [listener_spec("call-9-l", 3009, "call-9-c")]))
    await envoy.ack(await envoy.expect(CLUSTER, changed=["call-9-c"]))
    again = await envoy.expect(LISTENER, changed=["call-0-l", "call-9-l"])
    await envoy.nack(again, "Error adding/updating listener(s) call-0-l: cannot bind: in use")
    await eventually(lambda: any(p.rejection for p in service.progress()), "the second NACK to arrive")
    result = progress(service, cache)
    assert blamed(result) == {"call-0"}
    assert applied(result) == {"call-1", "call-2", "call-3", "call-9"}
    await envoy.close()
