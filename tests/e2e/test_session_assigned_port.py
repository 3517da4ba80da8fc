"""examples/session_manager.py without --port, against the real operator (serve --listener-ports) and a real
Envoy: it prints the port the operator assigned (status.listeners[].port) and the route answers there.

The program's own side of it is proven without the operator in tests/test_session_manager_cli.py and
tests/test_session_routes.py, where the test writes the status.
"""

from __future__ import annotations

import pytest

from tests.support.e2e import ControlPlane, free_udp_port, send_until_answer, wait_until
from tests.support.e2e_kube import NS, PLURAL, Cluster
from xds_operator.demo.echo import EchoWorker


@pytest.fixture
def xds_server(operator: ControlPlane) -> ControlPlane:
    return operator


@pytest.fixture
def operator_args() -> list[str]:
    """The operator assigns ports from a range of one port that is free here (so Envoy can bind it)."""
    port = free_udp_port()
    return ["--listener-ports", f"{port}-{port}"]


def test_without_port_the_assigned_port_is_printed_and_answers(
    cluster: Cluster,
    ingress,
    operator,
    session_manager,  # noqa: F811
):
    worker_port = free_udp_port()
    cluster.workers.append(EchoWorker("worker-p1", host="127.0.0.2", port=worker_port, health_port=None))
    cluster.pod("worker-p1", {"session": "p1"}, "127.0.0.2")
    manager = session_manager("p1", "--worker-port", str(worker_port), "--timeout", "60")
    line = manager.next_line(timeout=30)
    host, port = line.removeprefix("route ").rsplit(":", 1)
    status = cluster.apiserver.get(PLURAL, NS, "session-p1")["status"]
    assert host == "127.0.0.1" and int(port) == status["listeners"][0]["port"]
    assert send_until_answer(int(port)) == "worker-p1"
    assert manager.end_session() == 0
    wait_until(lambda: cluster.apiserver.get(PLURAL, NS, "session-p1") is None, "the route to be deleted")
