"""End to end in Kubernetes mode: a VirtualService's status follows endpoint health as a real Envoy reports it
(HDS): `status.listeners[].cluster.healthyEndpoints`, and `Ready` False with reason `Unhealthy` naming the
endpoints when none passes its health check on a proxy.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from tests.support.e2e import ControlPlane, free_port, free_udp_port, send_until_answer, wait_until
from tests.support.e2e_kube import GROUP, NS, PLURAL, VERSION, Cluster, vs_body


@pytest.fixture
def xds_server(operator: ControlPlane) -> ControlPlane:
    return operator


@pytest.fixture
def operator_args() -> list[str]:
    # One replica that writes at once: a restarted one does not wait for the Lease, whose wait would hide
    # a status written before the health reports come back.
    return ["--no-leader-elect"]


def cluster_status(cluster, name: str) -> dict[str, Any]:
    status = cluster.objects.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name).get("status") or {}
    listeners = status.get("listeners") or [{}]
    return listeners[0].get("cluster") or {}


def test_ready_turns_unhealthy_when_no_endpoint_passes_on_the_proxy(cluster, ingress, operator):
    worker_port, health_port, port = free_udp_port(), free_port(), free_udp_port()
    a = cluster.worker_pod("worker-a", worker_port, health_port)
    b = cluster.worker_pod("worker-b", worker_port, health_port)
    cluster.create(vs_body("calls", port, worker_port, health_port))
    ingress.wait_listener("calls-l", port)
    assert send_until_answer(port) in {"worker-a", "worker-b"}

    wait_until(lambda: cluster_status(cluster, "calls").get("healthyEndpoints") == 2, "2 healthy endpoints")
    assert cluster_status(cluster, "calls") == {
        "name": "calls-c",
        "readyEndpoints": 2,
        "healthyEndpoints": 2,
        "checkedEndpoints": 2,
    }
    assert cluster.condition("calls", "Ready")["status"] == "True"

    a.close_health()  # one left: still Ready, one endpoint fewer passes
    wait_until(lambda: cluster_status(cluster, "calls").get("healthyEndpoints") == 1, "1 healthy endpoint")
    assert cluster.condition("calls", "Ready")["status"] == "True"

    b.close_health()  # none passes: every datagram is dropped, and status says so
    ready = cluster.wait_condition("calls", "Ready", "False", "Unhealthy")
    assert ready["message"] == (
        f"cluster calls-c: no endpoint passes its health check on proxy {NS}/envoy-0: "
        f"{a.host}:{worker_port} (health check port {health_port}), "
        f"{b.host}:{worker_port} (health check port {health_port}) failing"
    )
    assert cluster_status(cluster, "calls")["healthyEndpoints"] == 0
    assert cluster.condition("calls", "Programmed")["status"] == "True"  # it runs; it just cannot forward

    b.open_health()
    cluster.wait_condition("calls", "Ready", "True")
    wait_until(lambda: cluster_status(cluster, "calls").get("healthyEndpoints") == 1, "1 healthy endpoint again")
    assert send_until_answer(port) == "worker-b"


def _status_patches(cluster: Cluster, name: str) -> int:
    """Status writes of one VirtualService the API server received so far."""
    path = f"/{PLURAL}/{name}/status"
    return sum(r.method == "PATCH" and r.path.endswith(path) for r in cluster.apiserver.requests)


def _reported_healthy(operator: ControlPlane, node_id: str) -> int | None:
    status, body = operator.get("/debug/proxies")
    if status != 200:
        return None
    for proxy in json.loads(body):
        if proxy["node_id"] == node_id and proxy.get("health"):
            return proxy["health"]["healthy"]
    return None


def test_a_restart_does_not_rewrite_health_counts_while_the_reports_come_back(cluster, ingress, operator):
    worker_port, health_port, port = free_udp_port(), free_port(), free_udp_port()
    cluster.worker_pod("worker-a", worker_port, health_port)
    cluster.create(vs_body("calls", port, worker_port, health_port))
    wait_until(lambda: cluster_status(cluster, "calls").get("healthyEndpoints") == 1, "1 healthy endpoint")
    cluster.wait_condition("calls", "Ready", "True")

    # The proxies ACK the restarted control plane at once; their health reports come back a little later.
    written_before = _status_patches(cluster, "calls")
    assert operator.process is not None
    operator.process.send_signal(signal.SIGTERM)
    operator.process.wait(timeout=30)
    operator.spawn()
    operator.wait_ready()
    wait_until(lambda: _reported_healthy(operator, f"{NS}/envoy-0") == 1, "the health reports to come back")

    # A status pass after the reports came back writes another VirtualService's status, and nothing of this
    # one: it was not rewritten without its health counts in between.
    other_port = free_udp_port()
    cluster.create(vs_body("other", other_port, worker_port))
    cluster.wait_condition("other", "Ready", "True")
    assert _status_patches(cluster, "calls") == written_before
    assert cluster_status(cluster, "calls")["healthyEndpoints"] == 1
