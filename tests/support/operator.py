"""The Kubernetes-mode control plane in process, without Envoy: the real `kubernetes` client against the
fake API server, the real ADS server on a free port, and ADS clients acting like Envoy (`Operator`);
builders for the objects an app and the kubelet create (`vs_body`, `pod_body`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from kubernetes import client

from tests.support.ads_client import AdsClient, eventually
from tests.support.fake_apiserver import FakeApiServer
from xds_operator.app.wiring import KubernetesPlane, build_kubernetes_plane
from xds_operator.sources.kubernetes.reflector import Reflector
from xds_operator.sources.kubernetes.source import KubernetesSource
from xds_operator.status.writer import StatusWriter
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.server import AggregatedDiscoveryService, start_server
from xds_operator.xds.snapshot import CLUSTER, ENDPOINT, LISTENER

GROUP, VERSION, PLURAL = "servicemesh.l7mp.io", "v1", "virtualservices"
NS = "media"
INGRESS = {"app": "envoy-ingress"}
WAIT = 15.0  # generous: a loaded machine; only a failing test waits this long


def vs_body(
    name: str,
    port: int = 2000,
    *,
    selector: Mapping[str, str] = INGRESS,
    eds: bool = False,
    host: Mapping[str, Any] | None = None,
    listener: str | None = None,
    cluster: str | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "selector": dict(selector),
            "listeners": [
                {
                    "name": listener or f"{name}-l",
                    "udp": {
                        "port": port,
                        "cluster": {
                            "name": cluster or f"{name}-c",
                            "service_discovery": "eds" if eds else "strictdns",
                            "endpoints": [
                                {"name": "worker", "host": dict(host or {"address": "10.9.0.1"}), "port": 2001}
                            ],
                        },
                    },
                }
            ],
        },
    }


def pod_body(name: str, labels: Mapping[str, str], ip: str = "", ready: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": dict(labels)},
        "spec": {"containers": [{"name": "main", "image": "example"}]},
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def endpoint_ips(response) -> list[str]:
    ips = []
    for packed in response.resources:
        assignment = endpoint_pb2.ClusterLoadAssignment()
        packed.Unpack(assignment)
        for group in assignment.endpoints:
            ips.extend(e.endpoint.address.socket_address.address for e in group.lb_endpoints)
    return sorted(ips)


def inline_ips(response, cluster_name: str) -> list[str]:
    for packed in response.resources:
        cluster = cluster_pb2.Cluster()
        packed.Unpack(cluster)
        if cluster.name == cluster_name:
            return sorted(
                e.endpoint.address.socket_address.address
                for group in cluster.load_assignment.endpoints
                for e in group.lb_endpoints
            )
    raise AssertionError(f"no cluster {cluster_name}")


@dataclass
class Operator:
    apiserver: FakeApiServer
    plane: KubernetesPlane
    channel: grpc.aio.Channel
    objects: client.CustomObjectsApi
    core: client.CoreV1Api
    clients: list[AdsClient]

    @property
    def source(self) -> KubernetesSource:
        return self.plane.source

    @property
    def service(self) -> AggregatedDiscoveryService:
        return self.plane.service

    @property
    def cache(self) -> SnapshotCache:
        return self.plane.cache

    @property
    def writer(self) -> StatusWriter:
        return self.plane.writer

    @property
    def reflectors(self) -> list[Reflector]:
        return self.plane.reflectors

    async def settle(self) -> None:
        """Wait until the operator has applied everything the API server holds now."""

        def caught_up() -> bool:
            pods = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in self.apiserver.list("pods")}
            services = {(v["metadata"]["namespace"], v["metadata"]["name"]) for v in self.apiserver.list(PLURAL)}
            return len(self.source.pods) == len(pods) and set(self.source.records) == services and self.source.settled

        await eventually(caught_up, "the operator to catch up with the API server")

    def connect(self, node_id: str, claimed_labels: Mapping[str, str] | None = None) -> AdsClient:
        ads = AdsClient(self.channel, node_id, claimed_labels or {})
        self.clients.append(ads)
        return ads

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.objects.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)

    def create_pod(self, name: str, labels: Mapping[str, str], ip: str = "", ready: bool = True) -> dict[str, Any]:
        return self.core.create_namespaced_pod(NS, pod_body(name, labels, ip, ready)).to_dict()

    def status_writes(self) -> int:
        """What the API server received: every status PATCH of any VirtualService."""
        return sum(1 for r in self.apiserver.requests if r.method == "PATCH" and r.path.endswith("/status"))

    def status(self, name: str) -> dict[str, Any]:
        return (self.apiserver.get(PLURAL, NS, name) or {}).get("status") or {}

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        return {c["type"]: c for c in self.status(name).get("conditions", [])}.get(kind, {})

    async def wait_condition(
        self, name: str, kind: str, status: str, reason: str | None = None, timeout: float = WAIT
    ) -> dict[str, Any]:
        def holds() -> bool:
            condition = self.condition(name, kind)
            return condition.get("status") == status and (reason is None or condition.get("reason") == reason)

        await eventually(holds, f"{name}: condition {kind}={status} ({reason})", timeout)
        return self.condition(name, kind)


async def start_operator(apiserver: FakeApiServer, namespaces: Sequence[str] = (), **options: float) -> Operator:
    """`options`: build_kubernetes_plane's keyword arguments (how long first statuses may be held back)."""
    api = apiserver.api_client()
    plane = build_kubernetes_plane(api, namespaces, status_retry_delay=0.1, **options)
    plane.start_watches()
    await asyncio.wait_for(plane.source.synced(), WAIT)
    server, port = await start_server(plane.service, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    operator = Operator(apiserver, plane, channel, client.CustomObjectsApi(api), client.CoreV1Api(api), [])
    operator._cleanup = (server, api)  # type: ignore[attr-defined]
    return operator


@contextlib.asynccontextmanager
async def running_operator(apiserver: FakeApiServer, **options: float) -> AsyncIterator[Operator]:
    running = await start_operator(apiserver, **options)
    tasks = [asyncio.create_task(work) for work in running.plane.background()]
    try:
        yield running
    finally:
        for ads in running.clients:
            await ads.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await running.plane.close(reflector_timeout=1.0)
        server, api = running._cleanup  # type: ignore[attr-defined]
        await running.channel.close()
        await server.stop(None)
        api.close()


async def subscribe(ads: AdsClient) -> tuple:
    """Envoy's start: CDS, then EDS for the EDS clusters, then LDS; each ACKed."""
    clusters = await ads.subscribe_and_ack(CLUSTER)
    eds_names = []
    for packed in clusters.resources:
        cluster = cluster_pb2.Cluster()
        packed.Unpack(cluster)
        if cluster.type == cluster_pb2.Cluster.EDS:
            eds_names.append(cluster.name)
    endpoints = await ads.subscribe_and_ack(ENDPOINT, eds_names) if eds_names else None
    listeners = await ads.subscribe_and_ack(LISTENER)
    return clusters, endpoints, listeners
