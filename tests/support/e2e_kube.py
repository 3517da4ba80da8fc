"""Kubernetes mode end to end: what an app and the kubelet do through the real `kubernetes` client against
the fake API server (tests/fake_apiserver.py), shared by the Kubernetes-mode e2e modules.

Worker "pods" get distinct loopback IPs (127.0.0.2, 127.0.0.3, ...) so that, as in a cluster, every
pod of a selector serves on the same port.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes import client

from tests.support.e2e import virtual_service, wait_until
from tests.support.fake_apiserver import FakeApiServer
from xds_operator.demo.echo import EchoWorker, TcpEchoWorker

GROUP, VERSION, PLURAL = "servicemesh.l7mp.io", "v1", "virtualservices"
NS = "media"
INGRESS = {"app": "envoy-ingress"}
WORKERS = {"app": "worker"}


class Cluster:
    """What an app and the kubelet would do, through the real client."""

    def __init__(self, apiserver: FakeApiServer):
        self.apiserver = apiserver
        self.api = apiserver.api_client()
        self.objects = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.workers: list[EchoWorker | TcpEchoWorker] = []
        self._next_ip = 2

    def pod(self, name: str, labels: Mapping[str, str], ip: str = "", ready: bool = True) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": dict(labels)},
            "spec": {"containers": [{"name": "main", "image": "example"}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
        }
        self.core.create_namespaced_pod(NS, body)

    def _next_worker_ip(self) -> str:
        ip = f"127.0.0.{self._next_ip}"
        self._next_ip += 1
        return ip

    def worker_pod(self, name: str, port: int, health_port: int) -> EchoWorker:
        """An echo worker on its own loopback IP, and a Ready pod with that IP."""
        worker = EchoWorker(name, host=self._next_worker_ip(), port=port, health_port=health_port)
        self.workers.append(worker)
        self.pod(name, WORKERS, worker.host)
        return worker

    def tcp_worker_pod(self, name: str, port: int) -> TcpEchoWorker:
        """A TCP echo worker on its own loopback IP, and a Ready pod with that IP."""
        worker = TcpEchoWorker(name, host=self._next_worker_ip(), port=port)
        self.workers.append(worker)
        self.pod(name, WORKERS, worker.host)
        return worker

    def delete_pod(self, name: str) -> None:
        self.core.delete_namespaced_pod(name, NS)

    def create(self, body: dict[str, Any]) -> None:
        self.objects.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)

    def delete(self, name: str) -> None:
        self.objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        status = self.objects.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name).get("status") or {}
        return {c["type"]: c for c in status.get("conditions", [])}.get(kind, {})

    def wait_condition(self, name: str, kind: str, status: str, reason: str | None = None) -> dict[str, Any]:
        def holds() -> bool:
            condition = self.condition(name, kind)
            return condition.get("status") == status and (reason is None or condition.get("reason") == reason)

        wait_until(holds, f"VirtualService {name}: {kind}={status}")
        return self.condition(name, kind)

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self.api.close()


def vs_body(
    name: str,
    port: int,
    worker_port: int,
    health_port: int | None = None,
    eds: bool = True,
    protocol: str = "udp",
    hash_key: str | None = None,
) -> dict:
    """A VirtualService in NS for the INGRESS proxies, its one endpoint the WORKERS pods (EDS by default)."""
    workers: dict[str, Any] = {"name": "workers", "host": {"selector": dict(WORKERS)}, "port": worker_port}
    if health_port is not None:
        workers["health_check_port"] = health_port
    return virtual_service(
        name,
        port,
        [workers],
        selector=INGRESS,
        namespace=NS,
        discovery="eds" if eds else "strictdns",
        hash_key=hash_key,
        health_check_ms=500 if health_port is not None else None,
        protocol=protocol,
    )
