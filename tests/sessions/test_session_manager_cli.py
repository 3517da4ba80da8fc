"""examples/session_manager.py as a subprocess against the fake API server, no operator: the test writes
the status the operator would, so the CLI's side (the port read from the status, cleanup on every way
out, the route surviving SIGKILL only as long as its worker pod) is proven on its own.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support.fake_apiserver import FakeApiServer
from tests.support.session_manager import SessionManager

PLURAL, NS = "virtualservices", "media"


@pytest.fixture
def cli(request: pytest.FixtureRequest, server: FakeApiServer, tmp_path: Path) -> Iterator[Any]:
    started: list[SessionManager] = []

    def start(*args: str) -> SessionManager:
        started.append(SessionManager(request, tmp_path, server, *args))
        return started[-1]

    yield start
    for one in started:
        if one.process.poll() is None:
            one.process.kill()
            one.process.wait(timeout=10)


def worker_pod(server: FakeApiServer, name: str, session: str) -> None:
    server.put({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS,
                "labels": {"session": session}}, "status": {"podIP": "10.1.0.9"}})  # fmt: skip


def wait_created(server: FakeApiServer, name: str) -> dict[str, Any]:
    assert server.wait_for(lambda s: s.get(PLURAL, NS, name) is not None, timeout=30), f"{name} never created"
    obj = server.get(PLURAL, NS, name)
    assert obj is not None
    return obj


def write_ready(server: FakeApiServer, name: str, port: int, addresses: list[str]) -> None:
    obj = wait_created(server, name)
    generation = obj["metadata"]["generation"]
    ready = {"type": "Ready", "status": "True", "reason": "Ready", "message": "ok", "observedGeneration": generation}
    obj["status"] = {
        "observedGeneration": generation,
        "conditions": [ready],
        "listeners": [{"name": name, "protocol": "udp", "port": port, "addresses": addresses}],
    }
    server.put(obj)


def gone(server: FakeApiServer, name: str) -> bool:
    return server.wait_for(lambda s: s.get(PLURAL, NS, name) is None, timeout=30)


def test_without_port_the_operators_port_from_the_status_is_printed(server, cli) -> None:
    worker_pod(server, "worker-1", "s1")
    manager = cli("s1", "--worker-port", "2001")
    listener = wait_created(server, "session-s1")["spec"]["listeners"][0]["udp"]
    assert "port" not in listener  # left to the operator
    write_ready(server, "session-s1", 31234, ["10.0.0.5"])
    assert manager.next_line() == "route 10.0.0.5:31234"
    manager.process.stdin.close()  # the session ends
    assert manager.process.wait(timeout=30) == 0
    assert server.get(PLURAL, NS, "session-s1") is None
    assert "session s1 ended: VirtualService media/session-s1 deleted" in manager.stderr


def test_a_killed_session_manager_leaves_a_route_that_goes_with_its_worker_pod(server, cli) -> None:
    worker_pod(server, "worker-2", "s2")
    manager = cli("s2", "--port", "3000")
    write_ready(server, "session-s2", 3000, ["10.0.0.5"])
    assert manager.next_line() == "route 10.0.0.5:3000"
    manager.process.send_signal(signal.SIGKILL)  # no chance to clean up
    manager.process.wait(timeout=30)
    assert server.get(PLURAL, NS, "session-s2") is not None  # left behind...
    with server.api_client() as api:
        client.CoreV1Api(api).delete_namespaced_pod("worker-2", NS)
    assert gone(server, "session-s2")  # ...until its worker pod goes: the garbage collector deletes it


def test_sigterm_before_ready_deletes_the_route(server, cli) -> None:
    worker_pod(server, "worker-3", "s3")
    manager = cli("s3", "--port", "3000", "--timeout", "600")
    wait_created(server, "session-s3")
    manager.process.send_signal(signal.SIGTERM)
    assert manager.process.wait(timeout=30) == 0
    assert server.get(PLURAL, NS, "session-s3") is None
    assert "session s3: SIGTERM" in manager.stderr


def test_the_worker_pod_deleted_while_the_session_holds_ends_it(server, cli) -> None:
    worker_pod(server, "worker-4", "s4")
    manager = cli("s4")
    write_ready(server, "session-s4", 31000, ["10.0.0.5"])
    assert manager.next_line() == "route 10.0.0.5:31000"
    server.delete("pods", NS, "worker-4")
    assert manager.process.wait(timeout=30) == 1
    assert "media/session-s4 was deleted (is the worker pod gone?)" in manager.stderr


def test_without_a_worker_pod_it_says_so_and_creates_nothing(server, cli) -> None:
    manager = cli("s5", "--port", "3000")
    assert manager.process.wait(timeout=30) == 1
    assert "no running pod labelled session=s5 in namespace media" in manager.stderr
    assert server.list(PLURAL, NS) == []
