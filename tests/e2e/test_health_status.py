"""End to end in Kubernetes mode: a VirtualService's status follows endpoint health as a real Envoy reports it
(HDS): `status.listeners[].cluster.healthyEndpoints`, and `Ready` False with reason `Unhealthy` naming the
endpoints when none passes its health check on a proxy.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import ControlPlane, free_port, free_udp_port, send_until_answer, wait_until
from .kube import GROUP, NS, PLURAL, VERSION, vs_body


@pytest.fixture
def xds_server(operator: ControlPlane) -> ControlPlane:
    return operator


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
