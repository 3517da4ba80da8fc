"""Incremental (delta) ADS protocol tests: the real gRPC server, in process, and a client that acts like
Envoy's delta mux. Every test asserts what arrives on the wire: which resources, which removals, and
silence where nothing changed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping

import grpc
import pytest

from tests.support.ads_client import DeltaAdsClient, delta_names, eventually
from tests.support.vs import (  # the VirtualService builders
    INGRESS,
    commit,
    listener_spec,
    make_vs,
    two_eds_clusters,
)
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.server import AggregatedDiscoveryService
from xds_operator.xds.snapshot import CLUSTER, ENDPOINT, LISTENER

ConnectDelta = Callable[..., DeltaAdsClient]


@pytest.fixture
async def connect(channel: grpc.aio.Channel) -> AsyncIterator[ConnectDelta]:
    clients: list[DeltaAdsClient] = []

    def open_stream(
        node_id: str = "ingress-1", labels: Mapping[str, str] = INGRESS, held: dict | None = None
    ) -> DeltaAdsClient:
        client = DeltaAdsClient(channel, node_id, labels, held)
        clients.append(client)
        return client

    yield open_stream
    for client in clients:
        await client.close()


def calls(port: int = 2000, rtcp_port: int = 2002) -> list:
    return [make_vs("calls", [listener_spec("rtp-l", port, "rtp-c"), listener_spec("rtcp-l", rtcp_port, "rtcp-c")])]


async def start(envoy: DeltaAdsClient, eds_names: list[str] | None = None) -> None:
    """Envoy's start on a delta stream: wildcard CDS, EDS by name, wildcard LDS; each ACKed."""
    await envoy.subscribe_and_ack(CLUSTER)
    if eds_names:
        await envoy.subscribe_and_ack(ENDPOINT, eds_names)
    await envoy.subscribe_and_ack(LISTENER)


async def test_wildcard_subscriptions_get_every_resource_with_its_content_hash_version(
    cache: SnapshotCache,
    connect: ConnectDelta,
) -> None:
    commit(cache, *calls())
    envoy = connect()
    await envoy.send(CLUSTER)
    clusters = await envoy.expect(CLUSTER, changed=["rtcp-c", "rtp-c"], removed=[])
    snapshot = cache.snapshot_for(INGRESS)
    for resource in clusters.resources:
        assert resource.version == snapshot.resources[CLUSTER][resource.name].digest
    assert clusters.system_version_info == snapshot.versions[CLUSTER]
    await envoy.ack(clusters)
    await envoy.expect_nothing()
    await envoy.send(LISTENER, subscribe=["*"])  # the explicit wildcard
    await envoy.expect(LISTENER, changed=["rtcp-l", "rtp-l"])


async def test_an_empty_type_is_still_answered_so_envoy_can_finish_initializing(
    connect: ConnectDelta,
) -> None:
    envoy = connect()
    await envoy.send(LISTENER)
    await envoy.expect(LISTENER, changed=[], removed=[])


async def test_an_edit_sends_only_the_resources_that_changed(cache: SnapshotCache, connect: ConnectDelta) -> None:
    other = make_vs("other", [listener_spec("other-l", 3000, "other-c")])
    commit(cache, *calls(), other)
    envoy = connect()
    await start(envoy)
    commit(cache, *calls(port=2010), other)  # only rtp-l's port changes
    listeners = await envoy.expect(LISTENER, changed=["rtp-l"], removed=[])
    await envoy.ack(listeners)
    await envoy.expect_nothing()  # no CDS: no cluster changed


async def test_a_deleted_virtualservice_arrives_in_removed_resources(
    cache: SnapshotCache,
    connect: ConnectDelta,
) -> None:
    other = make_vs("other", [listener_spec("other-l", 3000, "other-c")])
    commit(cache, *calls(), other)
    envoy = connect()
    await start(envoy)
    cache.delete(other.key)
    cache.commit()
    clusters = await envoy.expect(CLUSTER, changed=[], removed=["other-c"])
    await envoy.ack(clusters)
    await envoy.ack(await envoy.expect(LISTENER, changed=[], removed=["other-l"]))
    assert sorted(envoy.held[CLUSTER]) == ["rtcp-c", "rtp-c"]
    await envoy.expect_nothing()


async def test_reconnecting_with_the_current_versions_sends_nothing(
    cache: SnapshotCache,
    connect: ConnectDelta,
) -> None:
    commit(cache, *calls(), two_eds_clusters())
    first = connect()
    await start(first, ["eds-a", "eds-b"])
    held = {type_url: dict(versions) for type_url, versions in first.held.items()}
    await first.close()

    again = connect(held=held)
    await again.send(CLUSTER, initial=held[CLUSTER])
    await again.send(ENDPOINT, subscribe=["eds-a", "eds-b"], initial=held[ENDPOINT])
    await again.send(LISTENER, initial=held[LISTENER])
    await again.expect_nothing()


async def test_reconnecting_with_old_versions_gets_only_the_difference(
    cache: SnapshotCache,
    connect: ConnectDelta,
) -> None:
    commit(cache, *calls())
    first = connect()
    await start(first)
    held = {type_url: dict(versions) for type_url, versions in first.held.items()}
    await first.close()

    # While it was away: rtp-l moved, rtcp went away, a new VirtualService came.
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2010, "rtp-c")]))
    commit(cache, make_vs("new", [listener_spec("new-l", 4000, "new-c")]))
    again = connect(held=held)
    await again.send(CLUSTER, initial=held[CLUSTER])
    await again.expect(CLUSTER, changed=["new-c"], removed=["rtcp-c"])
    await again.send(LISTENER, initial=held[LISTENER])
    await again.expect(LISTENER, changed=["new-l", "rtp-l"], removed=["rtcp-l"])


async def test_a_nack_is_not_answered_with_the_same_resources_again(
    cache: SnapshotCache,
    service: AggregatedDiscoveryService,
    connect: ConnectDelta,
) -> None:
    commit(cache, *calls())
    envoy = connect()
    await start(envoy)
    commit(cache, *calls(port=2010))
    rejected = await envoy.expect(LISTENER, changed=["rtp-l"])
    await envoy.nack(rejected, "cannot bind 0.0.0.0:2010")
    await envoy.expect_nothing()  # the NACK was handled within this window
    (proxy,) = service.proxies()
    assert proxy["variant"] == "delta"
    assert proxy["types"]["LDS"]["state"] == "NACKed" and "2010" in proxy["types"]["LDS"]["error"]

    # The next change carries only what is new: not the rejected rtp-l again.
    commit(cache, *calls(port=2010, rtcp_port=2012))
    listeners = await envoy.expect(LISTENER, changed=["rtcp-l"])
    await envoy.ack(listeners)
    await eventually(lambda: service.proxies()[0]["types"]["LDS"]["state"] == "ACKed")
    # A fix of the rejected listener is sent.
    commit(cache, *calls(port=2020, rtcp_port=2012))
    await envoy.expect(LISTENER, changed=["rtp-l"])


async def test_eds_follows_subscriptions_and_reports_names_that_do_not_exist(
    cache: SnapshotCache,
    connect: ConnectDelta,
) -> None:
    commit(cache, two_eds_clusters())
    envoy = connect()
    await envoy.subscribe_and_ack(CLUSTER)
    await envoy.send(ENDPOINT, subscribe=["eds-a", "missing"])
    endpoints = await envoy.expect(ENDPOINT, changed=["eds-a"], removed=["missing"])
    await envoy.ack(endpoints)
    await envoy.send(ENDPOINT, subscribe=["eds-b"])  # a spontaneous request: no nonce
    await envoy.ack(await envoy.expect(ENDPOINT, changed=["eds-b"], removed=[]))
    await envoy.send(ENDPOINT, unsubscribe=["eds-a", "missing"])
    await envoy.expect_nothing()  # unsubscribing needs no answer
    # A changed eds-a is not sent any more; a resubscribed name is sent even if held.
    commit(cache, two_eds_clusters(addresses_a=("10.0.0.9",)))
    await envoy.expect_nothing()
    await envoy.send(ENDPOINT, subscribe=["eds-b"])
    await envoy.expect(ENDPOINT, changed=["eds-b"])


async def test_subscription_changes_count_even_with_a_stale_nonce(
    cache: SnapshotCache,
    connect: ConnectDelta,
) -> None:
    commit(cache, two_eds_clusters())
    envoy = connect()
    await envoy.subscribe_and_ack(CLUSTER)
    await envoy.send(ENDPOINT, subscribe=["eds-a"])
    first = await envoy.expect(ENDPOINT, changed=["eds-a"])
    await envoy.send(ENDPOINT, subscribe=["eds-b"], nonce="stale-nonce")
    await envoy.expect_nothing()  # paced: the first response is unanswered, so the new name waits...
    await envoy.ack(first)  # ...for this answer, which names no new subscription: the stale one counted
    await envoy.expect(ENDPOINT, changed=["eds-b"])
    await envoy.expect_nothing()


async def test_one_endpoint_change_among_many_clusters_is_one_resource_on_the_wire(
    cache: SnapshotCache,
    connect: ConnectDelta,
) -> None:
    services = [
        make_vs(f"vs-{i}", [listener_spec(f"l-{i}", 3000 + i, f"c-{i}", eds=True, addresses=("10.0.0.1",))])
        for i in range(50)
    ]
    commit(cache, *services)
    envoy = connect()
    await start(envoy, [f"c-{i}" for i in range(50)])
    services[7] = make_vs("vs-7", [listener_spec("l-7", 3007, "c-7", eds=True, addresses=("10.0.0.2",))])
    commit(cache, *services)
    update = await envoy.expect(ENDPOINT, changed=["c-7"], removed=[])
    assert delta_names(update) == ["c-7"]
    await envoy.ack(update)
    await envoy.expect_nothing()  # CDS and LDS untouched
