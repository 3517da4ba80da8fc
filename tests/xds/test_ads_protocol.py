"""ADS protocol tests: the real gRPC server, in process, driven by a client that acts like Envoy.

Every test talks to `start_server` over a real grpc.aio channel and asserts what arrives on
the wire: versions, nonces, resource names, push order, and silence where the protocol
says the server must not answer (ACKs, NACKed versions, stale nonces, unchanged content).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.support.ads_client import SILENCE, AdsClient, eventually, resource_names
from tests.support.vs import (
    INGRESS,
    commit,
    expected_version,
    listener_spec,
    make_vs,
    proxy_types,
    two_eds_clusters,
)
from xds_operator.xds import server as server_module
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.server import AggregatedDiscoveryService, start_server
from xds_operator.xds.snapshot import CLUSTER, ENDPOINT, LISTENER
from xds_operator.xds.stream import SotwStream

ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
Connect = Callable[..., AdsClient]


@pytest.fixture
async def connect(channel: grpc.aio.Channel) -> AsyncIterator[Connect]:
    """connect(node_id, labels) opens one more ADS stream; all are closed after the test."""
    clients: list[AdsClient] = []

    def open_stream(node_id: str = "ingress-1", labels: Mapping[str, str] = INGRESS) -> AdsClient:
        client = AdsClient(channel, node_id, labels)
        clients.append(client)
        return client

    yield open_stream
    for client in clients:
        await client.close()


# -- initial requests and ACKs -------------------------------------------------------------------


async def test_initial_cds_and_lds_get_content_hash_versions_and_an_ack_gets_no_response(
    cache: SnapshotCache, connect: Connect
) -> None:
    services = [
        make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c"), listener_spec("rtcp-l", 2002, "rtcp-c")]),
    ]
    commit(cache, *services)
    envoy = connect()

    await envoy.send(CLUSTER)
    cds = await envoy.expect(CLUSTER, names=["rtp-c", "rtcp-c"], version=expected_version(CLUSTER, services))
    await envoy.send(LISTENER)
    lds = await envoy.expect(LISTENER, names=["rtp-l", "rtcp-l"], version=expected_version(LISTENER, services))
    assert cds.nonce != lds.nonce

    await envoy.ack(cds)
    await envoy.ack(lds)
    await envoy.expect_nothing()


async def test_acked_types_are_reported_per_proxy(
    cache: SnapshotCache, service: AggregatedDiscoveryService, connect: Connect
) -> None:
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c")]))
    envoy = connect("ingress-7")
    cds = await envoy.subscribe_and_ack(CLUSTER)
    lds = await envoy.subscribe_and_ack(LISTENER)
    await envoy.expect_nothing()

    (proxy,) = service.proxies()
    assert proxy["node_id"] == "ingress-7"
    assert proxy["labels"] == INGRESS
    assert proxy["types"]["CDS"] == {
        "version": cds.version_info,
        "state": "ACKed",
        "acked_version": cds.version_info,
        "error": None,
    }
    assert proxy["types"]["LDS"] == {
        "version": lds.version_info,
        "state": "ACKed",
        "acked_version": lds.version_info,
        "error": None,
    }


# -- NACK ----------------------------------------------------------------------------------------


async def test_nacked_listener_version_is_not_resent_is_reported_and_a_later_change_is_pushed(
    cache: SnapshotCache, service: AggregatedDiscoveryService, connect: Connect
) -> None:
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c")]))
    envoy = connect("ingress-1")
    await envoy.subscribe_and_ack(CLUSTER)
    good = await envoy.subscribe_and_ack(LISTENER)
    await envoy.expect_nothing()  # the ACKs are in before the change

    # A change only the listener sees (its port): one LDS push, which Envoy rejects.
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2100, "rtp-c")]))
    rejected = await envoy.expect(LISTENER, names=["rtp-l"])
    assert rejected.version_info != good.version_info
    await envoy.nack(rejected, "cannot bind 0.0.0.0:2100: address in use", kept_version=good.version_info)
    await envoy.expect_nothing()  # the rejected version is never sent again

    lds = proxy_types(service, "ingress-1")["LDS"]
    assert lds["state"] == "NACKed"
    assert lds["version"] == rejected.version_info
    assert lds["acked_version"] == good.version_info
    assert lds["error"] == "cannot bind 0.0.0.0:2100: address in use"
    assert proxy_types(service, "ingress-1")["CDS"]["state"] == "ACKed"

    # The operator fixes the VirtualService: the new version is pushed, and its ACK clears the error.
    services = [make_vs("calls", [listener_spec("rtp-l", 2200, "rtp-c")])]
    commit(cache, *services)
    fixed = await envoy.expect(LISTENER, names=["rtp-l"], version=expected_version(LISTENER, services))
    assert fixed.version_info not in (good.version_info, rejected.version_info)
    await envoy.ack(fixed)
    await envoy.expect_nothing()
    lds = proxy_types(service, "ingress-1")["LDS"]
    assert lds == {"version": fixed.version_info, "state": "ACKed", "acked_version": fixed.version_info, "error": None}


async def test_changes_wait_for_the_answer_to_the_previous_response_and_fold_into_one(
    cache: SnapshotCache, service: AggregatedDiscoveryService, connect: Connect
) -> None:
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c")]))
    envoy = connect("ingress-1")
    await envoy.subscribe_and_ack(CLUSTER)
    await envoy.send(LISTENER)
    good = await envoy.expect(LISTENER)

    # Two changes while the proxy has not answered: nothing more is sent to it meanwhile...
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2050, "rtp-c")]))
    services = [make_vs("calls", [listener_spec("rtp-l", 2100, "rtp-c")])]
    commit(cache, *services)
    await envoy.expect_nothing()
    # ...and its answer brings the latest state, in one response.
    await envoy.ack(good)
    rejected = await envoy.expect(LISTENER, version=expected_version(LISTENER, services))
    await envoy.nack(rejected, "bad listener", kept_version=good.version_info)
    await envoy.expect_nothing()

    lds = proxy_types(service, "ingress-1")["LDS"]
    # The NACK's version_info is the version Envoy still runs (discovery.proto: a NACK returns the previous version).
    assert lds == {
        "version": rejected.version_info,
        "state": "NACKed",
        "acked_version": good.version_info,
        "error": "bad listener",
    }


async def test_a_listener_never_overtakes_the_unanswered_cluster_it_needs(
    cache: SnapshotCache, connect: Connect
) -> None:
    first = make_vs("a", [listener_spec("a-l", 2000, "a-c")])
    commit(cache, first)
    envoy = connect()
    await envoy.subscribe_and_ack(CLUSTER)
    await envoy.subscribe_and_ack(LISTENER)
    second = make_vs("b", [listener_spec("b-l", 2001, "b-c")])
    commit(cache, first, second)
    clusters = await envoy.expect(CLUSTER, names=["a-c", "b-c"])
    listeners = await envoy.expect(LISTENER, names=["a-l", "b-l"])
    await envoy.ack(listeners)
    # CDS is unanswered, and the next call's listener needs a cluster that waits for that answer.
    commit(cache, first, second, make_vs("c", [listener_spec("c-l", 2002, "c-c")]))
    await envoy.expect_nothing()
    await envoy.ack(clusters)
    await envoy.expect(CLUSTER, names=["a-c", "b-c", "c-c"])
    await envoy.expect(LISTENER, names=["a-l", "b-l", "c-l"])


async def test_nack_of_the_first_response_keeps_nothing_and_waits_for_a_change(
    cache: SnapshotCache, service: AggregatedDiscoveryService, connect: Connect
) -> None:
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c")]))
    envoy = connect("ingress-1")
    await envoy.subscribe_and_ack(CLUSTER)
    await envoy.send(LISTENER)
    first = await envoy.expect(LISTENER)
    await envoy.nack(first, "rejected")  # no version accepted yet: version_info stays empty
    await envoy.expect_nothing()
    lds = proxy_types(service, "ingress-1")["LDS"]
    assert (lds["state"], lds["acked_version"], lds["error"]) == ("NACKed", None, "rejected")


# -- stale nonces --------------------------------------------------------------------------------


async def test_request_with_stale_nonce_is_ignored(
    cache: SnapshotCache, service: AggregatedDiscoveryService, connect: Connect
) -> None:
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c")]))
    envoy = connect()
    await envoy.subscribe_and_ack(CLUSTER)
    old = await envoy.subscribe_and_ack(LISTENER)

    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2100, "rtp-c")]))
    new = await envoy.expect(LISTENER)
    assert new.nonce != old.nonce

    # A request still answering the old response (it crossed the push on the wire): ignored,
    # whether it looks like an ACK or a NACK.
    await envoy.ack(old)
    await envoy.nack(old, "late rejection of the old version")
    await envoy.expect_nothing()
    assert proxy_types(service, "ingress-1")["LDS"]["error"] is None
    assert proxy_types(service, "ingress-1")["LDS"]["state"] == "pending"

    await envoy.ack(new)
    await envoy.expect_nothing()
    assert proxy_types(service, "ingress-1")["LDS"]["state"] == "ACKed"


async def test_stale_nonce_with_different_eds_names_is_ignored(cache: SnapshotCache, connect: Connect) -> None:
    commit(cache, two_eds_clusters())
    envoy = connect()
    await envoy.subscribe_and_ack(CLUSTER)
    await envoy.send(ENDPOINT, names=["eds-a"])
    first = await envoy.expect(ENDPOINT, names=["eds-a"])
    await envoy.ack(first, ["eds-a"])

    commit(cache, two_eds_clusters(addresses_a=("10.0.0.2",)))  # new endpoints for eds-a
    second = await envoy.expect(ENDPOINT, names=["eds-a"])

    await envoy.send(ENDPOINT, names=["eds-a", "eds-b"], version=first.version_info, nonce=first.nonce)
    await envoy.expect_nothing()  # stale: the subscription is unchanged

    await envoy.send(ENDPOINT, names=["eds-a", "eds-b"], version=second.version_info, nonce=second.nonce)
    await envoy.expect(ENDPOINT, names=["eds-a", "eds-b"])


# -- EDS subscriptions ---------------------------------------------------------------------------


async def test_eds_answers_only_the_subscribed_cluster_names(cache: SnapshotCache, connect: Connect) -> None:
    services = [two_eds_clusters()]
    commit(cache, *services)
    envoy = connect()
    cds = await envoy.subscribe_and_ack(CLUSTER)
    assert resource_names(cds) == ["eds-a", "eds-b"]
    for packed in cds.resources:
        cluster = cluster_pb2.Cluster()
        packed.Unpack(cluster)
        assert cluster.type == cluster_pb2.Cluster.EDS
        assert cluster.eds_cluster_config.eds_config.HasField("ads")

    await envoy.send(ENDPOINT, names=["eds-b"])
    only_b = await envoy.expect(
        ENDPOINT, names=["eds-b"], version=expected_version(ENDPOINT, services, names=["eds-b"])
    )
    assignment = endpoint_pb2.ClusterLoadAssignment()
    only_b.resources[0].Unpack(assignment)
    assert [lb.endpoint.address.socket_address.address for lb in assignment.endpoints[0].lb_endpoints] == ["10.0.1.1"]

    # Envoy widens its subscription in the ACK of the previous response.
    await envoy.ack(only_b, ["eds-a", "eds-b"])
    both = await envoy.expect(
        ENDPOINT, names=["eds-a", "eds-b"], version=expected_version(ENDPOINT, services, names=["eds-a", "eds-b"])
    )
    assert both.version_info != only_b.version_info
    await envoy.ack(both, ["eds-a", "eds-b"])
    await envoy.expect_nothing()

    # A change to a cluster Envoy did not subscribe to is not pushed; narrowing works the same way.
    await envoy.send(ENDPOINT, names=["eds-a"], version=both.version_info, nonce=both.nonce)
    only_a = await envoy.expect(ENDPOINT, names=["eds-a"])
    await envoy.ack(only_a, ["eds-a"])
    commit(
        cache,
        make_vs(
            "eds",
            [
                listener_spec("la", 3000, "eds-a", eds=True, addresses=("10.0.0.1",)),
                listener_spec("lb", 3001, "eds-b", eds=True, addresses=("10.0.1.9",)),
            ],
        ),
    )
    await envoy.expect_nothing()


async def test_eds_request_with_no_names_subscribes_nothing(cache: SnapshotCache, connect: Connect) -> None:
    commit(cache, two_eds_clusters())
    envoy = connect()
    await envoy.subscribe_and_ack(CLUSTER)
    await envoy.send(ENDPOINT, names=[])
    # The server may confirm the empty subscription, but never with a ClusterLoadAssignment.
    try:
        response = await asyncio.wait_for(envoy.responses.get(), SILENCE)
    except TimeoutError:
        pass
    else:
        assert response.type_url == ENDPOINT
        assert list(response.resources) == []
        await envoy.ack(response, [])
        await envoy.expect_nothing()

    # Endpoint changes of either cluster are not pushed to a proxy that subscribed to none.
    commit(cache, two_eds_clusters(addresses_a=("10.0.0.5",)))
    await envoy.expect_nothing()


# -- reconnects ----------------------------------------------------------------------------------


async def test_reconnect_with_current_versions_gets_no_response(
    cache: SnapshotCache, service: AggregatedDiscoveryService, connect: Connect
) -> None:
    commit(cache, two_eds_clusters())
    first = connect("ingress-1")
    cds = await first.subscribe_and_ack(CLUSTER)
    eds = await first.subscribe_and_ack(ENDPOINT, ["eds-a", "eds-b"])
    lds = await first.subscribe_and_ack(LISTENER)
    await first.close()
    await eventually(lambda: not service.proxies())

    # Envoy reconnects (no nonce: nonces belong to a stream) and says what it already has.
    again = connect("ingress-1")
    await again.send(CLUSTER, version=cds.version_info)
    await again.send(ENDPOINT, names=["eds-a", "eds-b"], version=eds.version_info)
    await again.send(LISTENER, version=lds.version_info)
    await again.expect_nothing()
    types = proxy_types(service, "ingress-1")
    assert {kind: state["state"] for kind, state in types.items()} == {"CDS": "ACKed", "EDS": "ACKed", "LDS": "ACKed"}

    # Nothing was sent on this stream, so its next request carries no nonce: still honoured.
    await again.send(ENDPOINT, names=["eds-a"], version=eds.version_info)
    await again.expect(ENDPOINT, names=["eds-a"])


async def test_reconnect_after_a_change_gets_the_new_versions(
    cache: SnapshotCache, service: AggregatedDiscoveryService, connect: Connect
) -> None:
    commit(cache, two_eds_clusters())
    first = connect("ingress-1")
    cds = await first.subscribe_and_ack(CLUSTER)
    eds = await first.subscribe_and_ack(ENDPOINT, ["eds-a", "eds-b"])
    lds = await first.subscribe_and_ack(LISTENER)
    await first.close()
    await eventually(lambda: not service.proxies())

    # While the proxy is away, eds-a's endpoints change (EDS only).
    services = [two_eds_clusters(addresses_a=("10.0.0.2",))]
    commit(cache, *services)

    again = connect("ingress-1")
    await again.send(CLUSTER, version=cds.version_info)
    await again.send(ENDPOINT, names=["eds-a", "eds-b"], version=eds.version_info)
    await again.send(LISTENER, version=lds.version_info)
    new_eds = await again.expect(
        ENDPOINT, names=["eds-a", "eds-b"], version=expected_version(ENDPOINT, services, names=["eds-a", "eds-b"])
    )
    assert new_eds.version_info != eds.version_info
    await again.expect_nothing()  # clusters and listeners are unchanged


async def test_reconnect_with_an_outdated_listener_version_gets_the_current_one(
    cache: SnapshotCache, connect: Connect
) -> None:
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c")]))
    first = connect()
    cds = await first.subscribe_and_ack(CLUSTER)
    lds = await first.subscribe_and_ack(LISTENER)
    await first.close()

    services = [make_vs("calls", [listener_spec("rtp-l", 2100, "rtp-c")])]
    commit(cache, *services)
    again = connect()
    await again.send(CLUSTER, version=cds.version_info)
    await again.send(LISTENER, version=lds.version_info)
    await again.expect(LISTENER, names=["rtp-l"], version=expected_version(LISTENER, services))
    await again.expect_nothing()


# -- push order ----------------------------------------------------------------------------------


async def test_a_change_to_every_type_is_pushed_clusters_then_endpoints_then_listeners(
    cache: SnapshotCache, connect: Connect
) -> None:
    commit(cache, two_eds_clusters())
    envoy = connect()
    await envoy.subscribe_and_ack(CLUSTER)
    await envoy.subscribe_and_ack(ENDPOINT, ["eds-a", "eds-b"])
    await envoy.subscribe_and_ack(LISTENER)
    await envoy.expect_nothing()

    # hash_key changes the cluster (Maglev) and the listener (hash policy); new addresses the endpoints.
    services = [two_eds_clusters(addresses_a=("10.0.0.3",), hash_key="callid")]
    commit(cache, *services)
    received = [await envoy.recv() for _ in range(3)]
    assert [response.type_url for response in received] == [CLUSTER, ENDPOINT, LISTENER]
    assert [response.version_info for response in received] == [
        expected_version(CLUSTER, services),
        expected_version(ENDPOINT, services, names=["eds-a", "eds-b"]),
        expected_version(LISTENER, services),
    ]
    assert len({response.nonce for response in received}) == 3
    for response in received:
        await envoy.ack(response, ["eds-a", "eds-b"] if response.type_url == ENDPOINT else [])
    await envoy.expect_nothing()


async def test_change_landing_right_after_an_ack_still_sends_clusters_before_listeners(
    cache: SnapshotCache, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit between the server receiving an ACK and handling it: the ACK must not jump the queue.

    The server's inbox is tapped so the commit lands deterministically at that point.
    """
    change_after: list[Callable[[discovery_pb2.DiscoveryRequest], None]] = []

    class Tap(asyncio.Queue):
        def put_nowait(self, item: object) -> None:
            super().put_nowait(item)
            if isinstance(item, discovery_pb2.DiscoveryRequest) and change_after:
                change_after.pop()(item)

    class TappedInbox(server_module._Inbox):
        def __init__(self) -> None:
            super().__init__()
            self.items = Tap()

    monkeypatch.setattr(server_module, "_Inbox", TappedInbox)
    commit(cache, two_eds_clusters())
    envoy = connect()
    await envoy.subscribe_and_ack(CLUSTER)
    await envoy.subscribe_and_ack(ENDPOINT, ["eds-a", "eds-b"])
    await envoy.send(LISTENER)
    lds = await envoy.expect(LISTENER)

    # A new listener with a new cluster (CDS + LDS) and new endpoints for eds-a (EDS).
    services = [
        make_vs(
            "eds",
            [
                listener_spec("la", 3000, "eds-a", eds=True, addresses=("10.0.0.7",)),
                listener_spec("lb", 3001, "eds-b", eds=True, addresses=("10.0.1.1",)),
                listener_spec("lc", 3002, "plain-c"),
            ],
        )
    ]
    change_after.append(lambda request: commit(cache, *services))
    await envoy.ack(lds)  # queued on the server just before the change
    received = [await envoy.recv() for _ in range(3)]
    assert [response.type_url for response in received] == [CLUSTER, ENDPOINT, LISTENER]
    assert resource_names(received[0]) == ["eds-a", "eds-b", "plain-c"]
    assert resource_names(received[2]) == ["la", "lb", "lc"]
    await envoy.expect_nothing()


def test_request_answered_against_a_newer_snapshot_keeps_push_order() -> None:
    """The state machine alone (no I/O): an LDS ACK handled after a change yields CDS, then LDS."""

    def parsed(responses: list[bytes]) -> list[discovery_pb2.DiscoveryResponse]:
        return [discovery_pb2.DiscoveryResponse.FromString(raw) for raw in responses]

    cache = SnapshotCache()
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c")]))
    stream = SotwStream("ingress-1")
    before = cache.snapshot_for(INGRESS)
    (cds,) = parsed(stream.on_request(discovery_pb2.DiscoveryRequest(type_url=CLUSTER), before))
    assert cds.nonce and cds.version_info == before.versions[CLUSTER] and resource_names(cds) == ["rtp-c"]
    assert (
        stream.on_request(
            discovery_pb2.DiscoveryRequest(type_url=CLUSTER, version_info=cds.version_info, response_nonce=cds.nonce),
            before,
        )
        == []
    )
    (lds,) = parsed(stream.on_request(discovery_pb2.DiscoveryRequest(type_url=LISTENER), before))
    assert lds.nonce != cds.nonce

    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c"), listener_spec("rtcp-l", 2001, "rtcp-c")]))
    after = cache.snapshot_for(INGRESS)
    ack = discovery_pb2.DiscoveryRequest(type_url=LISTENER, version_info=lds.version_info, response_nonce=lds.nonce)
    responses = parsed(stream.on_request(ack, after))
    assert [response.type_url for response in responses] == [CLUSTER, LISTENER]
    assert stream.on_snapshot(after) == []  # the change notice that follows finds nothing left to send


def test_streams_are_sent_one_shared_serialized_response_equal_to_protobufs_own() -> None:
    cache = SnapshotCache()
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c"), listener_spec("rtcp-l", 2001, "rtcp-c")]))
    snapshot = cache.snapshot_for(INGRESS)
    (one,) = SotwStream("a").on_request(discovery_pb2.DiscoveryRequest(type_url=CLUSTER), snapshot)
    (two,) = SotwStream("b").on_request(discovery_pb2.DiscoveryRequest(type_url=CLUSTER), snapshot)
    assert one is two  # serialized once, not per stream
    selection = snapshot.select(CLUSTER)
    expected = discovery_pb2.DiscoveryResponse(
        version_info=selection.version,
        type_url=CLUSTER,
        nonce=selection.version,
        resources=[resource.packed for resource in selection.resources],
    )
    assert discovery_pb2.DiscoveryResponse.FromString(one) == expected
    assert resource_names(expected) == ["rtcp-c", "rtp-c"]


# -- selection by labels -------------------------------------------------------------------------


async def test_proxy_not_selected_gets_empty_answers_and_never_the_resources(
    cache: SnapshotCache, connect: Connect
) -> None:
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c")], selector=INGRESS))
    other = connect("gateway-1", {"app": "gateway"})
    selected = connect("ingress-1", {"app": "ingress", "zone": "a"})  # a superset of the selector matches

    # Still answered, with nothing in it, so Envoy can finish initialising.
    empty_cds = await other.subscribe_and_ack(CLUSTER)
    empty_lds = await other.subscribe_and_ack(LISTENER)
    assert list(empty_cds.resources) == [] and list(empty_lds.resources) == []
    assert empty_cds.version_info == expected_version(CLUSTER, [], labels={"app": "gateway"})

    cds = await selected.subscribe_and_ack(CLUSTER)
    assert resource_names(cds) == ["rtp-c"]
    await selected.subscribe_and_ack(LISTENER)

    # Changes to the VirtualService reach the selected proxy only.
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c"), listener_spec("rtcp-l", 2001, "rtcp-c")]))
    await selected.expect(CLUSTER, names=["rtcp-c", "rtp-c"])
    await selected.expect(LISTENER, names=["rtcp-l", "rtp-l"])
    await other.expect_nothing()

    # A VirtualService that does select the other proxy reaches it, without the first one's resources.
    commit(cache, make_vs("gateway", [listener_spec("gw-l", 4000, "gw-c")], selector={"app": "gateway"}))
    await other.expect(CLUSTER, names=["gw-c"])
    await other.expect(LISTENER, names=["gw-l"])
    await selected.expect_nothing()


# -- several streams -----------------------------------------------------------------------------


async def test_same_node_on_two_streams_gets_pushes_on_both_and_closing_cleans_up(
    cache: SnapshotCache, service: AggregatedDiscoveryService, connect: Connect
) -> None:
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c")]))
    streams = [connect("ingress-1"), connect("ingress-1")]
    for envoy in streams:
        await envoy.subscribe_and_ack(CLUSTER)
        await envoy.subscribe_and_ack(LISTENER)
    assert [proxy["node_id"] for proxy in service.proxies()] == ["ingress-1", "ingress-1"]
    assert cache.group_count() == 1  # equal labels share one group

    services = [make_vs("calls", [listener_spec("rtp-l", 2100, "rtp-c")])]
    commit(cache, *services)
    for envoy in streams:
        await envoy.expect(LISTENER, names=["rtp-l"], version=expected_version(LISTENER, services))
        await envoy.expect_nothing()

    # One stream cancelled by the client, the other half-closed: both are forgotten.
    await streams[0].close()
    await eventually(lambda: len(service.proxies()) == 1)
    assert cache.group_count() == 1
    await streams[1].call.done_writing()
    await eventually(lambda: not service.proxies() and cache.group_count() == 0)


# -- robustness ----------------------------------------------------------------------------------


async def test_unknown_type_url_is_ignored_and_the_stream_keeps_working(
    cache: SnapshotCache, service: AggregatedDiscoveryService, connect: Connect
) -> None:
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c")]))
    envoy = connect()
    await envoy.send(ROUTE, names=["some-route"])  # the first request, carrying the node
    await envoy.expect_nothing()
    await envoy.send("type.googleapis.com/not.a.Type")
    await envoy.expect_nothing()

    await envoy.subscribe_and_ack(CLUSTER)
    lds = await envoy.subscribe_and_ack(LISTENER)
    assert resource_names(lds) == ["rtp-l"]
    await envoy.send(ROUTE, names=["another-route"], nonce=lds.nonce)
    await envoy.expect_nothing()
    assert set(proxy_types(service, "ingress-1")) == {"CDS", "LDS"}

    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2100, "rtp-c")]))
    await envoy.expect(LISTENER, names=["rtp-l"])


async def test_rapid_changes_end_at_the_last_version_without_repeats(cache: SnapshotCache, connect: Connect) -> None:
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c")]))
    envoy = connect()
    await envoy.subscribe_and_ack(CLUSTER)
    await envoy.subscribe_and_ack(LISTENER)

    for port in range(2101, 2106):
        commit(cache, make_vs("calls", [listener_spec("rtp-l", port, "rtp-c")]))
    final = expected_version(LISTENER, [make_vs("calls", [listener_spec("rtp-l", 2105, "rtp-c")])])
    versions = [(await envoy.expect(LISTENER)).version_info]
    while versions[-1] != final:
        versions.append((await envoy.expect(LISTENER)).version_info)
    assert len(versions) == len(set(versions))
    await envoy.expect_nothing()


async def test_proxy_of_unknown_identity_waits_unanswered(cache: SnapshotCache) -> None:
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c")]))
    service = AggregatedDiscoveryService(cache, identify=lambda node: None)
    server, port = await start_server(service, "127.0.0.1:0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        envoy = AdsClient(channel, "pod-not-known-yet", INGRESS)
        try:
            await envoy.send(CLUSTER)
            await envoy.send(LISTENER)
            await envoy.expect_nothing()
            (proxy,) = service.proxies()
            assert proxy["labels"] is None
            assert {state["state"] for state in proxy["types"].values()} == {"waiting"}
            assert cache.group_count() == 0
        finally:
            await envoy.close()
    await server.stop(None)


async def test_a_proxy_still_gets_its_config_when_every_send_slot_is_held(
    cache: SnapshotCache, service: AggregatedDiscoveryService, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slots bound the responses in flight; proxies that stop reading keep theirs, and must not stall others."""
    monkeypatch.setattr(server_module, "SLOT_WAIT_SECONDS", 0.05)
    service._sending = asyncio.Semaphore(0)  # as if stuck proxies held every slot
    commit(cache, make_vs("calls", [listener_spec("rtp-l", 2000, "rtp-c")]))
    envoy = connect()
    assert resource_names(await envoy.subscribe_and_ack(CLUSTER)) == ["rtp-c"]
    assert resource_names(await envoy.subscribe_and_ack(LISTENER)) == ["rtp-l"]


async def test_removing_the_last_eds_cluster_ends_with_every_type_acked(
    cache: SnapshotCache, service: AggregatedDiscoveryService, connect: Connect
) -> None:
    """What a real Envoy does (tests/e2e/test_ops.py): the CDS push removing its last EDS cluster makes it
    unsubscribe from EDS with the nonce it last saw, crossing the empty EDS response; it takes that one
    without answering (it watches no name then). So nothing stays pending, and the proxy runs the snapshot."""
    plain = make_vs("plain", [listener_spec("plain-l", 2000, "plain-c")])
    commit(cache, two_eds_clusters(), plain)
    envoy = connect()
    await envoy.subscribe_and_ack(CLUSTER)
    eds = await envoy.subscribe_and_ack(ENDPOINT, ["eds-a", "eds-b"])
    await envoy.subscribe_and_ack(LISTENER)
    cache.delete(("media", "eds"))
    cache.commit()
    await envoy.ack(await envoy.expect(CLUSTER, names=["plain-c"]))
    await envoy.expect(ENDPOINT, names=[])  # taken silently
    await envoy.send(ENDPOINT, names=[], version=eds.version_info, nonce=eds.nonce)  # the stale unsubscribe
    await envoy.ack(await envoy.expect(LISTENER, names=["plain-l"]))
    await envoy.expect_nothing()
    types = proxy_types(service, "ingress-1")
    assert {kind: state["state"] for kind, state in types.items()} == {"CDS": "ACKed", "EDS": "ACKed", "LDS": "ACKed"}
    assert types["EDS"]["version"] == "0000000000000000"
    (progress,) = service.progress()
    assert progress.applied is progress.current


async def test_an_eds_response_to_a_proxy_that_unsubscribed_everything_counts_as_taken(
    cache: SnapshotCache, service: AggregatedDiscoveryService, connect: Connect
) -> None:
    """The other order: the unsubscribe arrives first (current nonce); the empty response then gets no answer."""
    commit(cache, two_eds_clusters())
    envoy = connect()
    await envoy.subscribe_and_ack(CLUSTER)
    eds = await envoy.subscribe_and_ack(ENDPOINT, ["eds-a", "eds-b"])
    await envoy.send(ENDPOINT, names=[], version=eds.version_info, nonce=eds.nonce)
    await envoy.expect(ENDPOINT, names=[])
    await envoy.expect_nothing()
    assert proxy_types(service, "ingress-1")["EDS"]["state"] == "ACKed"
