"""End to end in Kubernetes mode: an app creates a VirtualService whose listener names no port, reads the port
the operator assigned from status.listeners[].port once Ready, and a real Envoy forwards its datagram there."""

from __future__ import annotations

import itertools
import socket

import pytest

from tests.support.e2e import ControlPlane, free_port, free_udp_port, send_until_answer, stop_process, wait_until
from tests.support.e2e_kube import GROUP, NS, PLURAL, VERSION, vs_body
from xds_operator.api import parse_virtual_service
from xds_operator.ports.assigner import PortRange, _Pool, _preferred


def two_free_udp_ports() -> int:
    """The first of two consecutive UDP ports that are free now."""
    for _ in range(100):
        first = free_udp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("0.0.0.0", first + 1))
            except OSError:
                continue
        return first
    raise AssertionError("no two consecutive free UDP ports")


@pytest.fixture
def listener_ports() -> PortRange:
    """Two ports, free on this machine, so Envoy can bind them."""
    first = two_free_udp_ports()
    return PortRange(first, first + 1)


@pytest.fixture
def assigned_port(listener_ports: PortRange) -> int:
    return listener_ports.first


@pytest.fixture
def operator_args(listener_ports: PortRange) -> list[str]:
    return ["--listener-ports", str(listener_ports)]


@pytest.fixture
def xds_server(operator: ControlPlane) -> ControlPlane:
    return operator


def portless(name: str, worker_port: int, health_port: int) -> dict:
    body = vs_body(name, 0, worker_port, health_port)
    del body["spec"]["listeners"][0]["udp"]["port"]
    return body


def status_listener(cluster, name: str) -> dict:
    status = cluster.objects.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name).get("status") or {}
    [listener] = status.get("listeners") or [{}]
    return listener


def test_the_app_reads_the_assigned_port_from_status_and_reaches_its_worker(cluster, ingress, listener_ports):
    worker_port, health_port = free_udp_port(), free_port()
    cluster.worker_pod("worker-a", worker_port, health_port)
    cluster.create(portless("calls", worker_port, health_port))

    cluster.wait_condition("calls", "Ready", "True")
    listener = status_listener(cluster, "calls")
    assert (listener["name"], listener["protocol"]) == ("calls-l", "UDP") and listener["port"] in listener_ports
    assert send_until_answer(listener["port"]) == "worker-a"


def colliding_names(ports: PortRange) -> tuple[str, str]:
    """Two names, in name order, whose listeners start their search at the same port of `ports`."""
    pool = _Pool(ports)

    def start(name: str) -> int:
        vs = parse_virtual_service(portless(name, 9, 9))
        return _preferred(vs, (f"{name}-l", "UDP"), pool)

    for first, second in itertools.combinations(sorted(f"call-{i}" for i in range(10)), 2):
        if start(first) == start(second):
            return first, second
    raise AssertionError("no two names collide")


def test_a_restart_keeps_the_port_where_a_fresh_computation_would_move_it(cluster, ingress, operator, listener_ports):
    worker_port, health_port = free_udp_port(), free_port()
    cluster.worker_pod("worker-a", worker_port, health_port)
    older, younger = colliding_names(listener_ports)
    cluster.create(portless(older, worker_port, health_port))
    cluster.create(portless(younger, worker_port, health_port))
    cluster.wait_condition(older, "Ready", "True")
    cluster.wait_condition(younger, "Ready", "True")
    port = status_listener(cluster, younger)["port"]
    assert status_listener(cluster, older)["port"] != port
    assert send_until_answer(port) == "worker-a"

    assert operator.process is not None
    stop_process(operator.process)
    cluster.delete(older)  # while no control plane runs: a fresh computation would give `younger` its port
    operator.spawn()
    operator.wait_ready()
    ingress.wait_listener_absent(f"{older}-l")
    assert ingress.listeners()[f"{younger}-l"] == port
    assert send_until_answer(port) == "worker-a"
    wait_until(lambda: status_listener(cluster, younger).get("port") == port, "the status to keep the port")
