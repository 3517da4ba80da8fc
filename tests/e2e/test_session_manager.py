"""examples/session_manager.py as a session manager would run it: a subprocess talking to the fake API
server through the real `kubernetes` client, `xds-operator serve --kubeconfig` watching it, a real Envoy
(the pod envoy-0, IP 127.0.0.1) and echo workers standing in for worker pods on 127.0.0.x.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.e2e import ControlPlane, assert_silent, free_udp_port, send_until_answer, wait_until
from tests.support.e2e_kube import NS, PLURAL, Cluster
from tests.support.session_manager import EXAMPLE
from xds_operator.demo.echo import EchoWorker


@pytest.fixture
def xds_server(operator: ControlPlane) -> ControlPlane:
    return operator


def test_the_route_is_printed_once_the_sessions_pod_is_ready_and_removed_when_the_session_ends(
    cluster: Cluster, ingress, operator, session_manager
):
    worker_port, port = free_udp_port(), free_udp_port()
    for name, session, ip, ready in (("worker-s1", "s1", "127.0.0.2", False), ("worker-s2", "s2", "127.0.0.3", True)):
        cluster.workers.append(EchoWorker(name, host=ip, port=worker_port, health_port=None))
        cluster.pod(name, {"session": session}, ip, ready=ready)

    manager = session_manager("s1", "--port", str(port), "--worker-port", str(worker_port), "--timeout", "60")
    # The route exists on the proxy, but the session's worker pod is not Ready: no route is handed out.
    ingress.wait_listener("session-s1", port)
    not_ready = cluster.wait_condition("session-s1", "Ready", "False", "NoReadyEndpoints")
    assert "session=s1" in not_ready["message"]
    time.sleep(1.0)  # several status ticks: it stays not Ready, and the manager keeps waiting
    assert cluster.condition("session-s1", "Ready")["status"] == "False"
    assert manager.printed() == [] and manager.process.poll() is None

    cluster.core.patch_namespaced_pod(  # the kubelet reports the worker Ready
        "worker-s1", NS, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    )
    line = manager.next_line(timeout=30)
    assert cluster.condition("session-s1", "Ready")["status"] == "True"  # printed only once Ready
    assert line == f"route 127.0.0.1:{port}"  # the pod IP of the only proxy, and the session's port
    host, route_port = line.split()[1].rsplit(":", 1)
    assert (host, int(route_port)) == ("127.0.0.1", port)
    assert send_until_answer(int(route_port)) == "worker-s1"  # the session's worker, not the other one

    assert manager.end_session() == 0
    assert cluster.apiserver.get(PLURAL, NS, "session-s1") is None
    ingress.wait_listener_absent("session-s1")
    assert_silent(port)


def test_a_session_that_never_gets_ready_times_out_and_leaves_no_route(cluster: Cluster, operator, session_manager):
    cluster.pod("worker-s9", {"session": "s9"}, "127.0.0.9")  # the route is owned by its worker pod: one must exist
    manager = session_manager("s9", "--port", str(free_udp_port()), "--timeout", "3")
    assert manager.process.wait(timeout=30) == 1
    assert manager.printed() == []
    err = manager.stderr_path.read_text()
    assert "not Ready after 3s: NoProxies" in err and "session s9 ended" in err
    wait_until(lambda: cluster.apiserver.get(PLURAL, NS, "session-s9") is None, "the VirtualService to be deleted")


def test_help_explains_the_program():
    result = subprocess.run([sys.executable, str(EXAMPLE), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "session=<SESSION>" in result.stdout and "--hold SECONDS" in result.stdout
    bad = subprocess.run([sys.executable, str(EXAMPLE), "Bad_ID", "--port", "3000"], capture_output=True, text=True)
    assert bad.returncode == 2 and "lowercase" in bad.stderr


def test_without_a_kubeconfig_it_says_so_in_one_line(tmp_path: Path):
    # It printed the kubernetes client's traceback.
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "absent")}
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "s1", "--port", "3000"], capture_output=True, text=True, env=environment
    )
    assert result.returncode == 1
    assert result.stderr.startswith("cannot load Kubernetes credentials from in-cluster config, $KUBECONFIG")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
