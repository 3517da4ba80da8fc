"""Pushes paced by the proxy's answers, through random call churn, for both ADS variants, in process.

A simulated Envoy applies each response as it arrives and answers it late or soon, at random.
Whatever the timing: at most one unanswered response per type, a listener never arrives before
the cluster it names, and once the proxy has answered everything it holds exactly its snapshot.
Delta streams also take the path that compares only what changed since the last push, so this
checks that path against the snapshot's full content.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.support.ads_client import resource_names
from tests.support.vs import listener_spec, make_vs
from xds_operator.xds.cache import SnapshotCache, Watch
from xds_operator.xds.delta import DeltaStream
from xds_operator.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, Snapshot
from xds_operator.xds.stream import ProxyStream, SotwStream

INGRESS = {"app": "envoy-ingress"}
ZONE_B = {"app": "envoy-ingress", "zone": "b"}  # a second group: snapshots branch when only one is touched


class SimulatedEnvoy:
    """Holds what it was sent per type (name → version), answers responses when told to, and
    subscribes EDS names for the EDS clusters it holds, as Envoy does."""

    def __init__(self, stream: ProxyStream, watch: Watch):
        self.stream, self.watch = stream, watch
        self.held: dict[str, dict[str, str]] = {type_url: {} for type_url in PUSH_ORDER}
        self.unanswered: dict[str, Any] = {}  # type → the response awaiting an answer
        self.last: dict[str, Any] = {}  # type → the latest response received
        self.eds_clusters: set[str] = set()

    @property
    def delta(self) -> bool:
        return isinstance(self.stream, DeltaStream)

    def start(self) -> None:
        node = base_pb2.Node(id="envoy")
        for type_url in (CLUSTER, ENDPOINT, LISTENER):  # EDS asks for the EDS clusters the CDS answer named
            names = sorted(self.eds_clusters) if type_url == ENDPOINT else []
            request: Any = (
                discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, node=node, resource_names_subscribe=names)
                if self.delta
                else discovery_pb2.DiscoveryRequest(type_url=type_url, node=node, resource_names=names)
            )
            self.receive(self.stream.on_request(request, self.watch.snapshot))

    def receive(self, responses: list[bytes]) -> None:
        for raw in responses:
            response: Any = (discovery_pb2.DeltaDiscoveryResponse if self.delta else discovery_pb2.DiscoveryResponse)()
            response.ParseFromString(raw)
            assert response.type_url not in self.unanswered, "a second response before the first was answered"
            self.unanswered[response.type_url] = self.last[response.type_url] = response
            self.apply(response)

    def apply(self, response: Any) -> None:
        held = self.held[response.type_url]
        if self.delta:
            for resource in response.resources:
                held[resource.name] = resource.version
            for name in response.removed_resources:
                held.pop(name, None)
        else:
            held.clear()
            held.update(dict.fromkeys(resource_names(response), response.version_info))
        if response.type_url == LISTENER:
            for listener in held:
                assert listener.replace("-l", "-c") in self.held[CLUSTER], f"{listener} came before its cluster"
        if response.type_url == CLUSTER:
            self.subscribe_eds(response)

    def subscribe_eds(self, response: Any) -> None:
        resources = [r.resource for r in response.resources] if self.delta else list(response.resources)
        for packed in resources:
            cluster = cluster_pb2.Cluster()
            packed.Unpack(cluster)
            if cluster.type == cluster_pb2.Cluster.EDS:
                self.eds_clusters.add(cluster.name)
            else:  # a cluster that changed discovery type
                self.eds_clusters.discard(cluster.name)
        self.eds_clusters &= set(self.held[CLUSTER])
        wanted = set(self.eds_clusters)
        if ENDPOINT not in self.stream.types:
            return  # not subscribed yet: the first EDS request names them
        if self.delta:
            current = set(self.stream.types[ENDPOINT].names or ())
            request: Any = discovery_pb2.DeltaDiscoveryRequest(
                type_url=ENDPOINT,
                resource_names_subscribe=sorted(wanted - current),
                resource_names_unsubscribe=sorted(current - wanted),
                response_nonce="stale" if ENDPOINT in self.unanswered else "",
            )
            for name in request.resource_names_unsubscribe:  # Envoy drops what it unsubscribes
                self.held[ENDPOINT].pop(name, None)
            if request.resource_names_subscribe or request.resource_names_unsubscribe:
                self.receive(self.stream.on_request(request, self.watch.snapshot))
        else:  # SotW: the request carries the latest EDS response received, so it also answers that one
            received = self.unanswered.pop(ENDPOINT, None) or self.last[ENDPOINT]
            request = discovery_pb2.DiscoveryRequest(
                type_url=ENDPOINT,
                resource_names=sorted(wanted),
                version_info=received.version_info,
                response_nonce=received.nonce,
            )
            self.receive(self.stream.on_request(request, self.watch.snapshot))

    def answer(self, type_url: str) -> None:
        response = self.unanswered.pop(type_url)
        if self.delta:
            request: Any = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=response.nonce)
        else:
            names = sorted(self.eds_clusters) if type_url == ENDPOINT else []
            request = discovery_pb2.DiscoveryRequest(
                type_url=type_url,
                version_info=response.version_info,
                response_nonce=response.nonce,
                resource_names=names,
            )
        self.receive(self.stream.on_request(request, self.watch.snapshot))

    def answer_all(self) -> None:
        while self.unanswered:
            self.answer(next(iter(self.unanswered)))

    def holds_exactly(self, snapshot: Snapshot) -> None:
        for type_url in (CLUSTER, LISTENER):
            assert set(self.held[type_url]) == set(snapshot.resources[type_url]), type_url
        assert set(self.held[ENDPOINT]) == set(snapshot.resources[ENDPOINT]) & self.eds_clusters
        assert self.eds_clusters == {n for n, r in snapshot.resources[CLUSTER].items() if (ENDPOINT, n) in r.requires}
        if self.delta:  # versions too: every resource's content is the current one
            for type_url in PUSH_ORDER:
                for name, version in self.held[type_url].items():
                    assert version == snapshot.resources[type_url][name].digest


def call(index: int, rng: random.Random) -> Any:
    selector = ZONE_B if rng.random() < 0.3 else INGRESS
    listener = listener_spec(
        f"call-{index}-l",
        20000 + index,
        f"call-{index}-c",
        eds=rng.random() < 0.5,
        addresses=(f"10.0.0.{rng.randint(1, 9)}",),
    )
    return make_vs(f"call-{index}", [listener], selector=selector)


@pytest.mark.parametrize("variant", [SotwStream, DeltaStream])
@pytest.mark.parametrize("seed", range(4))
def test_paced_streams_converge_to_the_snapshot_through_churn(variant: type[ProxyStream], seed: int) -> None:
    rng = random.Random(seed)
    cache = SnapshotCache()
    live: dict[int, Any] = {}
    for index in range(30):
        live[index] = call(index, rng)
        cache.upsert(live[index])
    cache.commit()
    envoys = []
    for labels in (INGRESS, ZONE_B):
        watch = cache.watch(labels, lambda: None)
        envoy = SimulatedEnvoy(variant(f"envoy-{len(envoys)}"), watch)
        envoy.start()
        envoys.append(envoy)
    next_index = len(live)
    for _ in range(300):
        for _ in range(rng.randint(1, 4)):  # a few calls start, end or change between commits
            roll = rng.random()
            if roll < 0.4 or not live:
                live[next_index] = call(next_index, rng)
                cache.upsert(live[next_index])
                next_index += 1
            elif roll < 0.8:
                cache.delete(live.pop(rng.choice(list(live))).key)
            else:
                index = rng.choice(list(live))
                live[index] = call(index, rng)  # same names, other endpoints (and maybe the other group)
                cache.upsert(live[index])
        cache.commit()
        for envoy in envoys:
            envoy.receive(envoy.stream.on_snapshot(envoy.watch.snapshot))
            for type_url in list(envoy.unanswered):
                if rng.random() < 0.4 and type_url in envoy.unanswered:  # answering CDS may have answered EDS
                    envoy.answer(type_url)
    for envoy in envoys:
        envoy.answer_all()
        assert envoy.watch.snapshot is not None
        envoy.holds_exactly(envoy.watch.snapshot)
        assert envoy.held[LISTENER], "the proxy runs calls"
