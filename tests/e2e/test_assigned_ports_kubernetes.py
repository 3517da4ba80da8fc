"""End to end in Kubernetes mode: an app creates a VirtualService whose listener names no port, reads the port
the operator assigned from status.listeners[].port once Ready, and a real Envoy forwards its datagram there."""

from __future__ import annotations

import pytest

from .conftest import ControlPlane, free_port, free_udp_port, send_until_answer
from .kube import GROUP, NS, PLURAL, VERSION, vs_body


@pytest.fixture
def assigned_port() -> int:
    """The one port of the range: free on this machine, so Envoy can bind it."""
    return free_udp_port()


@pytest.fixture
def operator_args(assigned_port: int) -> list[str]:
    return ["--listener-ports", f"{assigned_port}-{assigned_port}"]


@pytest.fixture
def xds_server(operator: ControlPlane) -> ControlPlane:
    return operator


def test_the_app_reads_the_assigned_port_from_status_and_reaches_its_worker(cluster, ingress, assigned_port):
    worker_port, health_port = free_udp_port(), free_port()
    cluster.worker_pod("worker-a", worker_port, health_port)
    body = vs_body("calls", 0, worker_port, health_port)
    del body["spec"]["listeners"][0]["udp"]["port"]
    cluster.create(body)

    cluster.wait_condition("calls", "Ready", "True")
    status = cluster.objects.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "calls")["status"]
    [listener] = status["listeners"]
    assert (listener["name"], listener["protocol"], listener["port"]) == ("calls-l", "UDP", assigned_port)
    assert send_until_answer(listener["port"]) == "worker-a"
