"""examples/session_manager.py without --port, against the real operator and a real Envoy: it prints the port
the operator assigned (status.listeners[].port) and the route answers there.

The operator assigns a port to a listener that leaves it out only once that feature is in; until then
the validator rejects such a listener (`spec.listeners[0].udp.port: required`) and this module is
skipped. The program's own side of it is proven without the operator in tests/test_session_manager_cli.py
and tests/test_session_routes.py, where the test writes the status.
"""

from __future__ import annotations

import pytest

from xds_operator.api.validate import ValidationError, parse_virtual_service
from xds_operator.demo.echo import EchoWorker
from xds_operator.sessions import virtual_service

from .conftest import free_udp_port, send_until_answer, wait_until
from .kube import NS, PLURAL, Cluster
from .test_session_manager import session_manager, xds_server  # noqa: F401  (fixtures)


def _operator_assigns_ports() -> bool:
    pod = {"metadata": {"name": "w", "uid": "u"}}
    body = virtual_service("x", namespace=NS, manager="m", proxy_selector={"app": "envoy-ingress"},
                           worker_label={"session": "x"}, worker_port=2001, worker_pod=pod)  # fmt: skip
    try:
        parse_virtual_service(body)
    except ValidationError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _operator_assigns_ports(), reason="the operator does not assign ports yet (a listener needs its port)"
)


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
