"""A NACK is blamed on the VirtualServices whose resources Envoy's error text names, not on every one
the proxy was sent since its last full ACK (issue 14, B.13). The real gRPC server in process, a client
that acts like Envoy, and the status side's own summary (progress.summarize) of what the server knows.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest

from tests.support.ads_client import AdsClient, DeltaAdsClient, eventually
from tests.support.vs import (  # the VirtualService builders
    INGRESS,
    commit,
    listener_spec,
    make_vs,
)
from xds_operator.api import Key
from xds_operator.status.progress import Progress, summarize
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.server import AggregatedDiscoveryService
from xds_operator.xds.snapshot import CLUSTER, LISTENER, SHORT_NAMES

CALLS = [make_vs(f"call-{i}", [listener_spec(f"call-{i}-l", 3000 + i, f"call-{i}-c")]) for i in range(4)]


@dataclass
class Plane:
    """The in-process control plane: its cache, its ADS service, and a channel to it."""

    cache: SnapshotCache
    service: AggregatedDiscoveryService
    channel: grpc.aio.Channel


@pytest.fixture
def plane(cache: SnapshotCache, service: AggregatedDiscoveryService, channel: grpc.aio.Channel) -> Plane:
    return Plane(cache, service, channel)


def progress(plane: Plane) -> dict[str, Progress]:
    proxies, services = plane.service.progress(), plane.cache.virtual_services()
    return {name: p for (_, name), p in summarize(proxies, services).items()}


def blamed(result: dict[str, Progress]) -> set[str]:
    return {name for name, p in result.items() if p.rejections}


def applied(result: dict[str, Progress]) -> set[str]:
    return {name for name, p in result.items() if p.applied == p.selected == 1}


async def nacked_on_first_push(
    plane: Plane,
    type_url: str,
    error: str,
    variant: type[AdsClient] | type[DeltaAdsClient] = AdsClient,
) -> AdsClient | DeltaAdsClient:
    """A proxy that gets everything in one response per type (a new or reconnecting Envoy) and rejects the
    `type_url` one with `error`, ACKing the other."""
    envoy = variant(plane.channel, "ingress-1", INGRESS)
    for kind in (CLUSTER, LISTENER):
        await envoy.send(kind)
        response = await envoy.expect(kind)
        if kind == type_url:
            await envoy.nack(response, error)
        else:
            await envoy.ack(response)
    # Both answers handled by the server (the NACK alone would let a check run before the ACK arrived).
    expected = {SHORT_NAMES[kind]: "NACKed" if kind == type_url else "ACKed" for kind in (CLUSTER, LISTENER)}

    def answered() -> bool:
        types = plane.service.proxies()[0]["types"]
        return {kind: types[kind]["state"] for kind in expected if kind in types} == expected

    await eventually(answered, "the NACK and the ACK to arrive")
    return envoy


async def test_a_rejected_listener_blames_only_the_virtualservice_envoy_names(plane: Plane) -> None:
    commit(plane.cache, *CALLS)
    error = "Error adding/updating listener(s) call-2-l: cannot bind '0.0.0.0:3002': Address already in use\n"
    envoy = await nacked_on_first_push(plane, LISTENER, error)
    result = progress(plane)
    assert blamed(result) == {"call-2"}
    assert result["call-2"].rejections == [("ingress-1", f"LDS: {error}")]
    assert applied(result) == {"call-0", "call-1", "call-3"}  # Envoy applied every other listener
    assert result["call-2"].applied == 0
    await envoy.close()


async def test_a_rejected_shared_cluster_blames_every_virtualservice_that_declares_it(plane: Plane) -> None:
    sharing = [make_vs(f"share-{i}", [listener_spec(f"share-{i}-l", 4000 + i, "worker-c")]) for i in range(2)]
    commit(plane.cache, *CALLS, *sharing)
    error = "Error adding/updating cluster(s) worker-c: some field is invalid"
    envoy = await nacked_on_first_push(plane, CLUSTER, error)
    result = progress(plane)
    assert blamed(result) == {"share-0", "share-1"}
    assert applied(result) == {f"call-{i}" for i in range(4)}
    await envoy.close()


async def test_a_rejection_naming_nothing_known_blames_everything_not_acked(plane: Plane) -> None:
    commit(plane.cache, *CALLS)
    envoy = await nacked_on_first_push(plane, LISTENER, "Proto constraint validation failed")
    result = progress(plane)
    assert blamed(result) == {f"call-{i}" for i in range(4)}  # nothing to tell them apart: the old rule
    assert applied(result) == set()
    await envoy.close()


async def test_a_delta_nack_naming_one_listener_blames_only_its_virtualservice(plane: Plane) -> None:
    commit(plane.cache, *CALLS)
    error = "Error adding/updating listener(s) call-0-l: cannot bind: in use"
    envoy = await nacked_on_first_push(plane, LISTENER, error, DeltaAdsClient)
    result = progress(plane)
    assert blamed(result) == {"call-0"}
    assert applied(result) == {"call-1", "call-2", "call-3"}
    await envoy.close()


async def test_a_later_fix_of_the_named_virtualservice_clears_its_rejection(plane: Plane) -> None:
    commit(plane.cache, *CALLS)
    error = "Error adding/updating listener(s) call-1-l: cannot bind '0.0.0.0:3001': Address already in use"
    envoy = await nacked_on_first_push(plane, LISTENER, error)
    commit(plane.cache, make_vs("call-1", [listener_spec("call-1-l", 3101, "call-1-c")]))
    await envoy.ack(await envoy.expect(LISTENER))
    everything = {f"call-{i}" for i in range(4)}
    await eventually(lambda: applied(progress(plane)) == everything, "the ACK to arrive")
    assert blamed(progress(plane)) == set()
    await envoy.close()


def test_owners_of_names_the_holders_of_listener_and_cluster_claims(plane: Plane) -> None:
    commit(plane.cache, *CALLS)
    plane.cache.snapshot_for(INGRESS)
    watch = plane.cache.watch(INGRESS, lambda: None)
    key: Key = ("media", "call-3")
    assert plane.cache.owners_of(INGRESS, [("listener", "call-3-l"), ("listener", "Address")]) == {key}
    assert plane.cache.owners_of(INGRESS, [("cluster", "call-3-l")]) == frozenset()  # a listener name, not a cluster
    assert plane.cache.owners_of({"app": "nobody"}, [("listener", "call-3-l")]) == frozenset()
    plane.cache.cancel(watch)


async def test_delta_sends_the_named_rejected_resources_again_with_the_next_response_only(plane: Plane) -> None:
    """Delta sends only what changed: without this, a later ACK would count the rejected listener as running."""
    commit(plane.cache, *CALLS)
    envoy = DeltaAdsClient(plane.channel, "ingress-1", INGRESS)
    await envoy.subscribe_and_ack(CLUSTER)
    await envoy.send(LISTENER)
    await envoy.nack(await envoy.expect(LISTENER), "Error adding/updating listener(s) call-0-l: cannot bind: in use")
    await envoy.expect_nothing()  # not at once: the same content would be rejected the same way
    commit(plane.cache, make_vs("call-9", [listener_spec("call-9-l", 3009, "call-9-c")]))
    await envoy.ack(await envoy.expect(CLUSTER, changed=["call-9-c"]))
    again = await envoy.expect(LISTENER, changed=["call-0-l", "call-9-l"])
    await envoy.nack(again, "Error adding/updating listener(s) call-0-l: cannot bind: in use")
    await eventually(lambda: any(p.rejection for p in plane.service.progress()), "the second NACK to arrive")
    result = progress(plane)
    assert blamed(result) == {"call-0"}
    assert applied(result) == {"call-1", "call-2", "call-3", "call-9"}
    await envoy.close()
