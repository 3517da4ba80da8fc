"""The route a session manager opened outlives a SIGKILLed manager only as long as its worker pod: the real
operator and a real Envoy behind the fake API server, whose garbage collector deletes the VirtualService
owned by the pod once the pod is deleted (examples/session_manager.py as a subprocess, as in
test_session_manager.py, whose fixtures this module shares).
"""

from __future__ import annotations

import pytest

from tests.support.e2e import ControlPlane, assert_silent, free_udp_port, send_until_answer, wait_until
from tests.support.e2e_kube import NS, PLURAL, Cluster
from xds_operator.demo.echo import EchoWorker


@pytest.fixture
def xds_server(operator: ControlPlane) -> ControlPlane:
    return operator


def test_a_killed_session_managers_port_closes_when_the_worker_pod_goes(
    cluster: Cluster,
    ingress,
    operator,
    session_manager,  # noqa: F811
):
    worker_port, port = free_udp_port(), free_udp_port()
    cluster.workers.append(EchoWorker("worker-k1", host="127.0.0.2", port=worker_port, health_port=None))
    cluster.pod("worker-k1", {"session": "k1"}, "127.0.0.2")
    manager = session_manager("k1", "--port", str(port), "--worker-port", str(worker_port), "--timeout", "60")
    assert manager.next_line(timeout=30) == f"route 127.0.0.1:{port}"
    assert send_until_answer(port) == "worker-k1"

    manager.process.kill()  # SIGKILL: it deletes nothing
    manager.process.wait(timeout=10)
    assert cluster.apiserver.get(PLURAL, NS, "session-k1") is not None
    assert send_until_answer(port) == "worker-k1"  # the session goes on while its pod lives

    cluster.delete_pod("worker-k1")
    wait_until(lambda: cluster.apiserver.get(PLURAL, NS, "session-k1") is None, "the route to be garbage collected")
    ingress.wait_listener_absent("session-k1")
    assert_silent(port)
