"""End to end: TCP listeners, VirtualService files → xds-operator → a real Envoy → TCP echo workers.

Every test asserts what a TCP client receives (each answer names the worker that echoed it);
Envoy's admin API is used only to wait for configuration to arrive.
"""

from __future__ import annotations

import socket

import pytest

from tests.support.e2e import (
    answers,
    endpoint,
    free_port,
    send_until_answer,
    tcp_answered_by,
    tcp_exchange,
    tcp_wait_answer,
    virtual_service,
    wait_until,
)
from xds_operator.demo.echo import EchoWorker, TcpEchoWorker

CONNECTIONS = 20


def test_bytes_over_a_tcp_listener_reach_the_echo_worker_and_come_back(envoy, tcp_workers, vs_files):
    worker = tcp_workers("tcp-worker")
    port = free_port()
    vs_files.write("signaling.yaml", virtual_service("sig", port, [endpoint(worker)], protocol="tcp"))
    envoy.wait_listener("sig-l", port)
    assert tcp_wait_answer(port) == "tcp-worker"

    payloads = [f"INVITE {i}".encode() for i in range(5)] + [b"x" * 50_000]
    got, _ = tcp_exchange(port, payloads)  # several exchanges on one connection, a large one last
    assert got == [b"tcp-worker: " + payload for payload in payloads]


def test_without_a_hash_key_connections_spread_over_the_workers(envoy, tcp_workers, vs_files):
    """The control for the next test: without the key, the same connections do not stick to one worker."""
    workers = [tcp_workers(f"tcp-{name}") for name in "abc"]
    port = free_port()
    vs_files.write("signaling.yaml", virtual_service("sig", port, [endpoint(w) for w in workers], protocol="tcp"))
    envoy.wait_listener("sig-l", port)
    envoy.wait_hosts("sig-c", {w.port for w in workers})
    tcp_wait_answer(port)

    names = [tcp_answered_by(port, f"call-{i}".encode())[0] for i in range(CONNECTIONS)]
    assert None not in names, f"unanswered connections: {names}"
    assert len(set(names)) > 1, f"all {CONNECTIONS} connections went to {names[0]} without a hash key"


def test_hash_key_pins_every_connection_to_one_worker(envoy, tcp_workers, vs_files):
    workers = [tcp_workers(f"tcp-{name}") for name in "abc"]
    port = free_port()
    vs_files.write(
        "signaling.yaml",
        virtual_service("sig", port, [endpoint(w) for w in workers], hash_key="callid", protocol="tcp"),
    )
    envoy.wait_listener("sig-l", port)
    envoy.wait_hosts("sig-c", {w.port for w in workers})  # all three there (and, unchecked, healthy)
    tcp_wait_answer(port)

    results = [tcp_answered_by(port, f"call-{i}".encode()) for i in range(CONNECTIONS)]
    names = [name for name, _ in results]
    assert len({source for _, source in results}) == CONNECTIONS, "each connection should have its own source port"
    assert None not in names, f"unanswered connections: {names}"
    assert len(set(names)) == 1, f"connections spread over {sorted(set(names))}"


def paired_workers(name: str) -> tuple[EchoWorker, TcpEchoWorker]:
    """A UDP and a TCP echo worker with one name on one port number (retried while the TCP port is taken)."""
    for _ in range(20):
        udp = EchoWorker(name, health_port=None)
        try:
            return udp, TcpEchoWorker(name, port=udp.port)
        except OSError:
            udp.close()
    pytest.fail("no port free for both UDP and TCP")


@pytest.fixture
def paired() -> list[tuple[EchoWorker, TcpEchoWorker]]:
    made = [paired_workers(f"worker-{name}") for name in "abc"]
    yield made
    for udp, tcp in made:
        udp.close()
        tcp.close()


def test_udp_and_tcp_listeners_share_a_port_and_a_key_picks_the_same_worker_for_both(envoy, paired, vs_files):
    """One port number, UDP and TCP, the same hash key and upstream addresses: both pick the same worker.

    tcp_proxy hashes the key (a filter-state object) the way udp_proxy hashes its own, and Maglev
    builds the same table from the same addresses: a call's TCP signaling and its UDP media meet
    on one worker. Three keys, so an accidental match is unlikely (1 in 27).
    """
    keys = ["callid", "session-7", "100%-of-the-calls"]  # the % must reach Envoy literally
    ports = []
    for index, key in enumerate(keys):
        port = free_port()
        while not _udp_free(port):
            port = free_port()
        ports.append(port)
        udp = [{"name": u.name, "host": {"address": "127.0.0.1"}, "port": u.port} for u, _ in paired]
        tcp_cluster = {"name": f"tcp{index}-c", "hash_key": key, "endpoints": udp}
        udp_cluster = {"name": f"udp{index}-c", "hash_key": key, "endpoints": udp}
        vs_files.write(
            f"call{index}.yaml",
            {
                "apiVersion": "servicemesh.l7mp.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": f"call{index}"},
                "spec": {
                    "selector": {"app": "e2e-ingress"},
                    "listeners": [
                        {"name": f"tcp{index}-l", "tcp": {"port": port, "cluster": tcp_cluster}},
                        {"name": f"udp{index}-l", "udp": {"port": port, "cluster": udp_cluster}},
                    ],
                },
            },
        )
    worker_ports = {u.port for u, _ in paired}
    for index, port in enumerate(ports):
        envoy.wait_listener(f"tcp{index}-l", port)
        envoy.wait_listener(f"udp{index}-l", port)
        envoy.wait_hosts(f"tcp{index}-c", worker_ports)  # the same hosts in both: the same Maglev table
        envoy.wait_hosts(f"udp{index}-c", worker_ports)
    for index, port in enumerate(ports):
        tcp_name = tcp_wait_answer(port)
        udp_name = send_until_answer(port)
        assert {tcp_answered_by(port)[0] for _ in range(5)} == {tcp_name}
        assert set(answers(port, 5)) == {udp_name}
        assert tcp_name == udp_name, f"key {keys[index]!r}: TCP went to {tcp_name}, UDP to {udp_name}"


def test_removing_the_tcp_listener_closes_the_port(envoy, tcp_workers, vs_files):
    worker = tcp_workers("tcp-worker")
    port = free_port()
    vs_files.write("signaling.yaml", virtual_service("sig", port, [endpoint(worker)], protocol="tcp"))
    envoy.wait_listener("sig-l", port)
    assert tcp_wait_answer(port) == "tcp-worker"

    vs_files.delete("signaling.yaml")
    envoy.wait_listener_absent("sig-l")
    wait_until(lambda: tcp_answered_by(port, timeout=0.5)[0] is None, f"TCP port {port} to stop answering")


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
