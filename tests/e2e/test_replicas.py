"""Several control plane replicas, as processes (`xds-operator serve`).

Kubernetes mode against the fake API server: every replica serves xDS, one leader elected
through a Lease writes status (each replica's requests carry its identity in the User-Agent,
so the API server's request log tells who wrote what); a killed or frozen leader is replaced
once the Lease expires, a stopped one hands over at once; status counts the proxies of every
replica. Directory mode: two replicas given the same input serve identical versions, so a real
Envoy that moves from one to the other is sent nothing new.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support.e2e import (
    ControlPlane,
    Envoy,
    VsFiles,
    endpoint,
    free_udp_port,
    launch_control_plane,
    virtual_service,
    wait_until,
)
from tests.support.e2e_kube import GROUP, INGRESS, NS, PLURAL, VERSION
from tests.support.fake_apiserver import FakeApiServer
from xds_operator.app.shutdown import EXIT_DEADLINE_SECONDS

LEASE_NS = "xds-operator-system"
WAIT = 45.0  # a takeover waits for the Lease to expire on top of the usual (tests.support.e2e.WAIT), under load too
SHORT = ["--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.2"]  # a takeover waits 3 s


class Replicas:
    """Starts `xds-operator serve --kubeconfig` replicas with fixed identities; all stopped at the end."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path, apiserver: FakeApiServer):
        self.request, self.tmp_path, self.apiserver = request, tmp_path, apiserver
        self.kubeconfig = apiserver.kubeconfig(tmp_path / "kubeconfig")
        self.stack = contextlib.ExitStack()
        self.planes: dict[str, ControlPlane] = {}

    def start(self, identity: str, lease: list[str] = SHORT) -> ControlPlane:
        args = ["--kubeconfig", str(self.kubeconfig), "--identity", identity, "--lease-namespace", LEASE_NS, *lease]
        launch = contextlib.contextmanager(launch_control_plane)
        plane = self.stack.enter_context(launch(self.request, self.tmp_path, args, name=identity))
        self.planes[identity] = plane
        return plane

    def holder(self) -> str:
        return ((self.apiserver.get("leases", LEASE_NS, "xds-operator") or {}).get("spec") or {}).get(
            "holderIdentity"
        ) or ""

    def leader(self) -> str:
        wait_until(lambda: self.holder() in self.planes, "a replica to hold the Lease", WAIT)
        return self.holder()

    def leading(self, identity: str) -> bool:
        status, body = self.planes[identity].get("/debug/leader")
        return status == 200 and json.loads(body)["leading"]

    def status_writers(self, since: int = 0) -> list[str]:
        """The identity in the User-Agent of every status write, in order."""
        return [
            r.user_agent.rpartition("(")[2].rstrip(")")
            for r in self.apiserver.requests[since:]
            if r.method == "PATCH" and r.path.endswith("/status")
        ]

    def event_writers(self) -> list[str]:
        return [
            r.user_agent.rpartition("(")[2].rstrip(")")
            for r in self.apiserver.requests
            if r.method == "POST" and r.path.endswith("/events")
        ]


@pytest.fixture
def replicas(request: pytest.FixtureRequest, tmp_path: Path, apiserver: FakeApiServer) -> Iterator[Replicas]:
    group = Replicas(request, tmp_path, apiserver)
    with group.stack:
        yield group


@pytest.fixture
def objects(apiserver: FakeApiServer) -> Iterator[client.CustomObjectsApi]:
    with apiserver.api_client() as api:
        yield client.CustomObjectsApi(api)


def vs_body(name: str, port: int = 2000) -> dict[str, Any]:
    return virtual_service(
        name, port, [{"name": "w", "host": {"address": "127.0.0.1"}, "port": 9}], selector=INGRESS, namespace=NS
    )


def conditions(apiserver: FakeApiServer, name: str) -> dict[str, dict]:
    status = (apiserver.get(PLURAL, NS, name) or {}).get("status") or {}
    return {c["type"]: c for c in status.get("conditions", [])}


def wait_status(apiserver: FakeApiServer, name: str, generation: int) -> None:
    def written() -> bool:
        status = (apiserver.get(PLURAL, NS, name) or {}).get("status") or {}
        return status.get("observedGeneration") == generation and "Accepted" in conditions(apiserver, name)

    wait_until(written, f"status of {name} for generation {generation}", WAIT)


def patch_port(objects: client.CustomObjectsApi, name: str, port: int) -> None:
    body = vs_body(name, port)
    objects.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name, {"spec": body["spec"]})


def other(identity: str) -> str:
    return {"replica-a": "replica-b", "replica-b": "replica-a"}[identity]


def test_only_the_leader_writes_status_and_a_killed_leader_is_replaced(replicas, apiserver, objects):
    replicas.start("replica-a")
    replicas.start("replica-b")
    objects.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, vs_body("calls"))
    broken = vs_body("broken")
    broken["spec"]["listeners"][0]["udp"]["port"] = 0  # invalid: a Warning Event, from the leader only
    objects.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, broken)
    wait_status(apiserver, "calls", 1)
    wait_until(lambda: apiserver.list("events", NS), "the Warning Event about broken", WAIT)
    leader = replicas.leader()
    assert set(replicas.status_writers()) == {leader}
    assert replicas.event_writers() == [leader]
    assert not replicas.leading(other(leader))

    killed = len(apiserver.requests)
    replicas.planes[leader].process.send_signal(signal.SIGKILL)  # no release: the Lease must expire
    patch_port(objects, "calls", 2001)
    wait_status(apiserver, "calls", 2)
    assert replicas.holder() == other(leader)
    assert set(replicas.status_writers(killed)) == {other(leader)}
    assert apiserver.get("leases", LEASE_NS, "xds-operator")["spec"]["leaseTransitions"] == 1


def test_a_frozen_leader_stops_writing_and_the_new_leader_writes_what_it_computed(replicas, apiserver, objects):
    replicas.start("replica-a")
    replicas.start("replica-b")
    leader = replicas.leader()
    follower = other(leader)
    frozen = replicas.planes[leader].process
    frozen.send_signal(signal.SIGSTOP)  # like a long pause: no renewals, no writes
    try:
        since = len(apiserver.requests)
        # Created while the leader is frozen: the follower computes its status, writes it once it leads.
        objects.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, vs_body("late"))
        wait_status(apiserver, "late", 1)
        assert replicas.holder() == follower
        assert set(replicas.status_writers(since)) == {follower}
    finally:
        frozen.send_signal(signal.SIGCONT)
    # Awake again, the old leader sees it lost the Lease and writes nothing, not even what it had queued.
    wait_until(lambda: not replicas.leading(leader), f"{leader} to know it does not lead", WAIT)
    patch_port(objects, "late", 2002)
    wait_status(apiserver, "late", 2)
    assert set(replicas.status_writers(since)) == {follower}
    assert replicas.holder() == follower


def test_a_stopped_leader_hands_over_at_once(replicas, apiserver, objects):
    long_lease = ["--lease-duration", "60", "--renew-deadline", "30", "--retry-period", "0.2"]
    replicas.start("replica-a", long_lease)
    replicas.start("replica-b", long_lease)
    leader = replicas.leader()
    replicas.planes[leader].process.send_signal(signal.SIGTERM)
    replicas.planes[leader].process.wait(timeout=EXIT_DEADLINE_SECONDS + 10)  # room for a loaded machine
    # Far sooner than the 60 s the Lease would take to expire (WAIT is less): the stopped leader released it.
    wait_until(lambda: replicas.holder() == other(leader), "the other replica to take the Lease", WAIT)
    objects.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, vs_body("calls"))
    wait_status(apiserver, "calls", 1)
    assert replicas.leading(other(leader))


def test_status_counts_the_proxies_of_every_replica(replicas, apiserver, cluster, objects, start_envoy):
    """Two Envoys, one per replica: the leader's Programmed counts both (each replica sees only its own)."""
    a, b = replicas.start("replica-a"), replicas.start("replica-b")
    for pod in ("envoy-a", "envoy-b"):
        cluster.pod(pod, INGRESS, "127.0.0.1")
    port = free_udp_port()
    objects.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, vs_body("calls", port))
    envoy_a = start_envoy({}, node_id=f"{NS}/envoy-a", xds_address=a.xds_address)
    envoy_b = start_envoy({}, node_id=f"{NS}/envoy-b", xds_address=b.xds_address)
    for envoy in (envoy_a, envoy_b):
        envoy.wait_listener("calls-l", port)

    def programmed_by_both() -> bool:
        condition = conditions(apiserver, "calls").get("Programmed", {})
        return condition.get("status") == "True" and condition.get("message", "").startswith("2 of 2")

    wait_until(programmed_by_both, "Programmed: 2 of 2 selected proxies", WAIT)
    assert conditions(apiserver, "calls")["Programmed"]["message"] == (
        "2 of 2 selected proxies run it (proxies of all 2 control plane replicas)"
    )
    # The proxy of the follower goes away: the leader counts one proxy, still Programmed.
    follower = other(replicas.leader())
    (envoy_a if follower == "replica-a" else envoy_b).stop()
    wait_until(
        lambda: conditions(apiserver, "calls")["Programmed"]["message"].startswith("1 of 1"),
        "Programmed: 1 of 1 after the follower's proxy left",
        WAIT,
    )
    assert conditions(apiserver, "calls")["Programmed"]["status"] == "True"


# -------------------------------------------------------------------------------- identical versions


def envoy_counters(envoy: Envoy) -> dict[str, Any]:
    """How many configuration updates Envoy accepted, and the versions it runs."""
    stats = {s["name"]: s.get("value") for s in json.loads(envoy.get("/stats?format=json"))["stats"] if "name" in s}
    wanted = ("cluster_manager.cds.update_success", "listener_manager.lds.update_success")
    counters = {name: stats[name] for name in wanted}
    for line in envoy.get("/stats?filter=version_text").splitlines():
        name, _, value = line.partition(": ")
        if name in ("cluster_manager.cds.version_text", "listener_manager.lds.version_text"):
            counters[name] = value
    return counters


def acked_versions(plane: ControlPlane, node_id: str) -> dict[str, str]:
    """Per type, the version the proxy ACKed on this control plane ({} while anything is not ACKed)."""
    status, body = plane.get("/debug/proxies")
    for proxy in json.loads(body) if status == 200 else []:
        types = proxy["types"]
        if proxy["node_id"] == node_id and types and all(state["state"] == "ACKed" for state in types.values()):
            return {kind: state["acked_version"] for kind, state in types.items()}
    return {}


def test_an_envoy_moving_to_another_replica_with_the_same_input_is_sent_nothing_new(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    vs_dir: Path,
    vs_files: VsFiles,
    control_plane: ControlPlane,
    start_envoy: Callable[..., Envoy],
    workers,
):
    worker = workers("worker-a")
    port = free_udp_port()
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(worker)], discovery="eds"))
    envoy = start_envoy({"app": "e2e-ingress", "tier": "edge"})
    envoy.wait_listener("calls-l", port)
    wait_until(lambda: len(acked_versions(control_plane, envoy.node_id)) == 3, "the proxy to ACK CDS, EDS, LDS", WAIT)
    on_a = acked_versions(control_plane, envoy.node_id)
    before = envoy_counters(envoy)
    assert all(before.values()), before

    # Replica A stops; replica B, given the same directory, serves on the address Envoy reconnects to.
    control_plane.process.send_signal(signal.SIGTERM)
    control_plane.process.wait(timeout=EXIT_DEADLINE_SECONDS + 10)  # room for a loaded machine
    launch = contextlib.contextmanager(launch_control_plane)
    with launch(
        request, tmp_path, ["--dir", str(vs_dir)], vs_dir, xds_port=control_plane.xds_port, name="replica-b"
    ) as b:
        # Replica B computed the versions replica A had sent, and Envoy's reconnect says it runs them.
        wait_until(lambda: acked_versions(b, envoy.node_id) == on_a, "Envoy to run replica B's versions", WAIT)
        after = envoy_counters(envoy)
        assert after == before  # no update applied, same versions: nothing was re-pushed

        # The counters do move when replica B has something new: a listener port change is applied once.
        new_port = free_udp_port()
        vs_files.write("calls.yaml", virtual_service("calls", new_port, [endpoint(worker)], discovery="eds"))
        envoy.wait_listener("calls-l", new_port)
        changed = envoy_counters(envoy)
        assert changed["listener_manager.lds.update_success"] == before["listener_manager.lds.update_success"] + 1
        assert changed["listener_manager.lds.version_text"] != before["listener_manager.lds.version_text"]
