"""End to end in Kubernetes mode: an app creates VirtualServices through the real `kubernetes` client
against the fake API server; `xds-operator serve --kubeconfig` (a subprocess) watches it; a real Envoy,
identified as a pod the API server knows, forwards datagrams to echo workers that stand in for pods
on their own loopback IPs (tests/support/e2e_kube.py).
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.support.e2e import (
    ControlPlane,
    Envoy,
    assert_silent,
    free_port,
    free_udp_port,
    send_until_answer,
    tcp_answered_by,
    tcp_wait_answer,
    wait_all_answered_by,
    wait_until,
)
from tests.support.e2e_kube import NS, vs_body


@pytest.fixture
def xds_server(operator: ControlPlane) -> ControlPlane:
    return operator


def healthy_ips(envoy: Envoy, cluster: str) -> set[str]:
    """The IPs of the hosts Envoy counts as healthy (every worker pod listens on the same port)."""
    ips = set()
    for line in envoy.get("/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and parts[2] == "health_flags" and parts[3] == "healthy":
            ips.add(parts[1].rsplit(":", 1)[0])
    return ips


def versions(plane: ControlPlane, node_id: str = f"{NS}/envoy-0") -> dict[str, Any]:
    """The CDS/EDS/LDS versions the proxy ACKed, from the control plane's admin port, once it ACKed
    everything it was sent: Envoy ACKs a new EDS cluster only after it warmed, a few ms after its hosts
    (and their health) show up on Envoy's admin port."""

    def acked() -> dict[str, Any] | None:
        status, body = plane.get("/debug/proxies")
        assert status == 200
        (proxy,) = [p for p in json.loads(body) if p["node_id"] == node_id]
        types = proxy["types"]
        if all(state["state"] == "ACKed" for state in types.values()):
            return {kind: state["acked_version"] for kind, state in types.items()}
        return None

    return wait_until(acked, f"proxy {node_id} to ACK everything it was sent")


def test_an_app_creates_a_virtualservice_and_datagrams_flow_to_worker_pods(cluster, ingress, operator):
    worker_port, health_port, port = free_udp_port(), free_port(), free_udp_port()
    cluster.worker_pod("worker-a", worker_port, health_port)
    cluster.worker_pod("worker-b", worker_port, health_port)
    cluster.create(vs_body("calls", port, worker_port, health_port))

    ingress.wait_listener("calls-l", port)
    assert send_until_answer(port) in {"worker-a", "worker-b"}
    programmed = cluster.wait_condition("calls", "Programmed", "True")
    assert programmed["message"] == "1 of 1 selected proxies run it"
    assert cluster.condition("calls", "Accepted")["status"] == "True"


def test_a_tcp_listener_with_a_hash_key_pins_every_connection_to_one_worker_pod(cluster, ingress, operator):
    worker_port, port = free_port(), free_port()
    ips = {cluster.tcp_worker_pod(name, worker_port).host for name in ("worker-a", "worker-b", "worker-c")}
    cluster.create(vs_body("signaling", port, worker_port, protocol="tcp", hash_key="callid"))

    ingress.wait_listener("signaling-l", port)
    # No health check: every host counts as healthy once Envoy has it.
    wait_until(lambda: healthy_ips(ingress, "signaling-c") == ips, "the three worker pods in Envoy's cluster")
    chosen = tcp_wait_answer(port)
    names = {tcp_answered_by(port, f"call-{i}".encode())[0] for i in range(20)}
    assert names == {chosen}
    assert cluster.wait_condition("signaling", "Programmed", "True")["message"] == "1 of 1 selected proxies run it"


def test_worker_pods_coming_and_going_change_only_eds(cluster, ingress, operator):
    worker_port, health_port, port = free_udp_port(), free_port(), free_udp_port()
    cluster.worker_pod("worker-a", worker_port, health_port)
    cluster.worker_pod("worker-b", worker_port, health_port)
    cluster.create(vs_body("calls", port, worker_port, health_port))
    ingress.wait_listener("calls-l", port)
    wait_until(lambda: healthy_ips(ingress, "calls-c") == {"127.0.0.2", "127.0.0.3"}, "both worker pods healthy")
    before = versions(operator)

    cluster.delete_pod("worker-a")
    wait_all_answered_by(port, "worker-b")
    cluster.worker_pod("worker-c", worker_port, health_port)
    cluster.delete_pod("worker-b")
    wait_all_answered_by(port, "worker-c")

    after = versions(operator)
    assert after["EDS"] != before["EDS"]
    assert (after["CDS"], after["LDS"]) == (before["CDS"], before["LDS"])  # no cluster or listener re-warm


def test_deleting_the_virtualservice_removes_the_listener(cluster, ingress, operator):
    worker_port, port = free_udp_port(), free_udp_port()
    cluster.worker_pod("worker-a", worker_port, free_port())
    cluster.create(vs_body("calls", port, worker_port, eds=False))
    ingress.wait_listener("calls-l", port)
    assert send_until_answer(port) == "worker-a"
    cluster.delete("calls")
    ingress.wait_listener_absent("calls-l")
    assert_silent(port)


def test_a_rejected_virtualservice_reports_why_and_a_conflict_is_reported_on_the_loser(cluster, ingress, operator):
    worker_port, port = free_udp_port(), free_udp_port()
    cluster.worker_pod("worker-a", worker_port, free_port())
    cluster.create(vs_body("first", port, worker_port))
    ingress.wait_listener("first-l", port)
    cluster.wait_condition("first", "Programmed", "True")

    second = vs_body("second", port, worker_port)  # the same port on the same proxy
    cluster.create(second)
    conflicted = cluster.wait_condition("second", "Conflicted", "True")
    assert f"port {port}" in conflicted["message"] and f"{NS}/first" in conflicted["message"]
    assert cluster.condition("first", "Conflicted")["status"] == "False"

    invalid = vs_body("invalid", free_udp_port(), worker_port)
    invalid["spec"]["listeners"][0]["udp"]["cluster"]["endpoints"][0]["host"] = {"address": "worker.media.svc"}
    cluster.create(invalid)  # a DNS name in an EDS cluster: only the operator can tell
    accepted = cluster.wait_condition("invalid", "Accepted", "False", "Invalid")
    assert "host.address" in accepted["message"]
    assert send_until_answer(port) == "worker-a"  # the winner keeps serving throughout


def test_a_call_whose_port_is_taken_is_the_only_one_rejected(cluster, ingress, operator):
    """Envoy applies every listener but the one it cannot bind and names it: only that call is Rejected,
    also for the calls sent after it in the same (state-of-the-world: every listener) responses."""
    worker_port = free_udp_port()
    cluster.worker_pod("worker-a", worker_port, free_port())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:  # no SO_REUSEPORT: Envoy cannot bind it
        held.bind(("0.0.0.0", 0))
        cluster.create(vs_body("call-1", held.getsockname()[1], worker_port))
        rejected = cluster.wait_condition("call-1", "Programmed", "False", "Rejected")
        assert "call-1-l" in rejected["message"] and "Address already in use" in rejected["message"]
        ports = {"call-0": free_udp_port(), "call-2": free_udp_port()}
        for name, port in ports.items():
            cluster.create(vs_body(name, port, worker_port))
        for name, port in ports.items():
            ingress.wait_listener(f"{name}-l", port)
            cluster.wait_condition(name, "Programmed", "True", "Programmed")
            cluster.wait_condition(name, "Ready", "True")
            assert send_until_answer(port) == "worker-a"
        assert cluster.condition("call-1", "Programmed")["reason"] == "Rejected"
        assert "call-1-l" not in ingress.listeners()


def test_dropped_watches_and_410_gone_lose_no_update(cluster, apiserver, ingress, operator):
    worker_port = free_udp_port()
    cluster.worker_pod("worker-a", worker_port, free_port())
    first_port, second_port, third_port = free_udp_port(), free_udp_port(), free_udp_port()
    cluster.create(vs_body("first", first_port, worker_port))
    ingress.wait_listener("first-l", first_port)

    apiserver.drop_watches()  # the connection breaks: the operator resumes from its last resourceVersion
    cluster.create(vs_body("second", second_port, worker_port))
    ingress.wait_listener("second-l", second_port)

    # Watches fail for a while, changes happen, and the history is compacted: resuming gets 410 Gone,
    # and the operator relists and reconciles.
    apiserver.fail_next(4, code=503, path_contains="watch=")
    apiserver.drop_watches()
    cluster.delete("first")
    cluster.create(vs_body("third", third_port, worker_port))
    apiserver.compact()
    ingress.wait_listener("third-l", third_port)
    ingress.wait_listener_absent("first-l")
    assert set(ingress.listeners()) == {"second-l", "third-l"}
    assert send_until_answer(third_port) == "worker-a"
    assert "listing again" in operator.log()
