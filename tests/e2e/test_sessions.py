"""End to end: session limits, idle timeouts and hashing by source IP, with a real Envoy.

What is asserted is what clients see: which datagrams and connections are answered, by which
worker, and when Envoy ends an idle one. Envoy's admin stats are read only to know that something
has happened (a datagram was dropped for the limit, a session ended) before looking at the client.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.e2e import (
    PROXY_LABELS,
    WAIT,
    answered_by,
    endpoint,
    free_port,
    free_udp_port,
    fresh_socket,
    tcp_wait_answer,
    wait_until,
)


def listener_doc(name: str, protocol: str, port: int, cluster: dict[str, Any], **session: int) -> dict[str, Any]:
    return {"name": name, protocol: {"port": port, "cluster": cluster, **session}}


def vs_doc(name: str, *listeners: dict[str, Any], selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "servicemesh.l7mp.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": selector or {"app": PROXY_LABELS["app"]}, "listeners": list(listeners)},
    }


def cluster_doc(name: str, workers: list[Any], **extra: str) -> dict[str, Any]:
    return {"name": name, **extra, "endpoints": [endpoint(w, health=False) for w in workers]}


def talk(sock: socket.socket, port: int, payload: bytes, *, timeout: float = WAIT) -> str:
    """Send from this socket (one session) until an answer comes; the answering worker's name."""
    sock.settimeout(0.3)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.sendto(payload, ("127.0.0.1", port))
        with contextlib.suppress(TimeoutError):
            answer = sock.recv(65535)
            name = answered_by(answer)
            assert name is not None and answer.endswith(b": " + payload), answer
            return name
    pytest.fail(f"no answer on port {port} from source {sock.getsockname()} within {timeout:.0f}s")


def pending(sock: socket.socket) -> bytes | None:
    """A datagram already waiting on the socket, if any (never waits)."""
    sock.setblocking(False)
    try:
        return sock.recv(65535)
    except BlockingIOError:
        return None
    finally:
        sock.setblocking(True)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


# -- UDP ----------------------------------------------------------------------------------------


def test_a_udp_listener_admits_max_sessions_clients_and_drops_the_next(envoy, workers, vs_files, sockets):
    """Two sessions on a listener limited to two; a third client's datagrams are dropped while another
    listener on the same worker cluster (a call without a limit) keeps taking new clients. (An eds
    cluster: the limited listener's private copy gets its endpoints over EDS under its own name.)"""
    worker = workers("media-a")
    limited, shared = free_udp_port(), free_udp_port()
    cluster = cluster_doc("media-c", [worker], service_discovery="eds")
    vs_files.write(
        "limited.yaml", vs_doc("limited", listener_doc("limited-l", "udp", limited, cluster, max_sessions=2))
    )
    vs_files.write("open.yaml", vs_doc("open", listener_doc("open-l", "udp", shared, cluster)))
    envoy.wait_listener("limited-l", limited)
    envoy.wait_listener("open-l", shared)

    first, second, third = (fresh_socket() for _ in range(3))
    sockets.extend([first, second, third])
    assert talk(first, limited, b"one") == "media-a"
    assert talk(second, limited, b"two") == "media-a"

    overflow = "cluster.media-c@limited-l.upstream_cx_overflow"
    third.sendto(b"three", ("127.0.0.1", limited))
    wait_until(lambda: envoy.stats().get(overflow, 0) >= 1, "Envoy to refuse a third session on limited-l")
    assert pending(third) is None, "the third client was answered past the limit"
    # The admitted sessions go on; the listener without a limit takes more clients than the other's limit.
    assert talk(first, limited, b"one again") == "media-a"
    others = [fresh_socket() for _ in range(3)]
    sockets.extend(others)
    assert [talk(sock, shared, b"call") for sock in others] == ["media-a"] * 3
    assert pending(third) is None


def test_an_idle_udp_session_ends_after_idle_timeout_and_frees_its_place(envoy, workers, vs_files, sockets):
    """A listener limited to one session, idle after 1 s: once the first client falls silent its session
    ends (Envoy's active sessions drop to zero) and a second client gets through."""
    worker = workers("media-a")
    port = free_udp_port()
    cluster = cluster_doc("media-c", [worker])
    doc = vs_doc("idle", listener_doc("idle-l", "udp", port, cluster, max_sessions=1, idle_timeout=1))
    vs_files.write("idle.yaml", doc)
    envoy.wait_listener("idle-l", port)

    first, second = fresh_socket(), fresh_socket()
    sockets.extend([first, second])
    assert talk(first, port, b"hello") == "media-a"
    ended = "udp.idle-l.downstream_sess_active"
    wait_until(lambda: envoy.stats().get(ended) == 0, "the silent session to end after its idle timeout")
    assert talk(second, port, b"my turn") == "media-a"


# -- TCP ----------------------------------------------------------------------------------------


def tcp_connect(port: int, source_ip: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source_ip, 0))
    sock.settimeout(WAIT)
    return sock


def tcp_talk(sock: socket.socket, payload: bytes) -> str | None:
    """One exchange on an open connection: the answering worker, or None if Envoy closed it."""
    try:
        sock.sendall(payload)
        answer = b""
        while not answer.endswith(b": " + payload):
            chunk = sock.recv(65536)
            if not chunk:
                return None
            answer += chunk
    except (ConnectionResetError, BrokenPipeError):
        return None
    return answered_by(answer)


def test_a_tcp_listener_admits_max_sessions_connections_and_closes_the_next(envoy, tcp_workers, vs_files, sockets):
    worker = tcp_workers("sip-a")
    port = free_port()
    vs_files.write(
        "sip.yaml", vs_doc("sip", listener_doc("sip-l", "tcp", port, cluster_doc("sip-c", [worker]), max_sessions=2))
    )
    envoy.wait_listener("sip-l", port)
    tcp_wait_answer(port)  # (that connection is closed again; wait until the filter has counted it out)
    active = "connection_limit.sip-l.active_connections"
    wait_until(lambda: envoy.stats().get(active) == 0, "the probe connection to be counted out")

    first, second = tcp_connect(port), tcp_connect(port)
    sockets.extend([first, second])
    assert (tcp_talk(first, b"one"), tcp_talk(second, b"two")) == ("sip-a", "sip-a")
    third = tcp_connect(port)
    sockets.append(third)
    assert tcp_talk(third, b"three") is None, "a third connection was served past the limit"
    assert envoy.stats()["connection_limit.sip-l.limited_connections"] >= 1
    assert tcp_talk(first, b"still here") == "sip-a"

    first.close()  # a place frees: the next connection is served
    wait_until(lambda: envoy.stats().get(active) == 1, "the closed connection to be counted out")
    fourth = tcp_connect(port)
    sockets.append(fourth)
    assert tcp_talk(fourth, b"four") == "sip-a"


def test_an_idle_tcp_connection_is_closed_after_idle_timeout(envoy, tcp_workers, vs_files, sockets):
    worker = tcp_workers("sip-a")
    port = free_port()
    doc = vs_doc("sip", listener_doc("sip-l", "tcp", port, cluster_doc("sip-c", [worker]), idle_timeout=1))
    vs_files.write("sip.yaml", doc)
    envoy.wait_listener("sip-l", port)
    tcp_wait_answer(port)

    connection = tcp_connect(port)
    sockets.append(connection)
    assert tcp_talk(connection, b"hello") == "sip-a"
    connection.settimeout(WAIT)  # nothing more is sent: Envoy must close it
    try:
        closed = connection.recv(1) == b""
    except ConnectionResetError:
        closed = True
    except TimeoutError:
        closed = False
    assert closed, f"Envoy kept an idle connection open for {WAIT:.0f}s with idle_timeout 1"
    assert envoy.stats()["tcp.sip-l.idle_timeout"] >= 1


# -- hashing by source IP -----------------------------------------------------------------------

# Clients on distinct loopback addresses (Linux routes all of 127/8 to lo).
SOURCES = [f"127.0.0.{n}" for n in range(2, 14)]
REPLICAS = ({**PROXY_LABELS, "replica": "a"}, {**PROXY_LABELS, "replica": "b"})


def udp_from(source_ip: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source_ip, 0))
    return sock


def test_hash_by_source_ip_pins_each_client_to_one_worker_on_every_replica(
    start_envoy, workers, tcp_workers, vs_files, sockets
):
    """Two Envoy replicas, three UDP and three TCP workers, hash_by: source_ip. Every datagram and
    connection from one client IP, whatever its source port, reaches one worker, the same through
    either replica; and the clients spread over the workers (12 addresses: all on one worker by
    chance is 3 in 3^12)."""
    udp_workers = [workers(f"udp-{n}") for n in "abc"]
    tcp_echo = [tcp_workers(f"tcp-{n}") for n in "abc"]
    envoys = [start_envoy(labels) for labels in REPLICAS]
    ports = []
    for replica, labels in zip("ab", REPLICAS, strict=True):
        udp_port, tcp_port = free_udp_port(), free_port()
        ports.append((udp_port, tcp_port))
        doc = vs_doc(
            f"media-{replica}",
            # The same cluster definitions on both replicas: Maglev builds the same table from the same hosts.
            listener_doc(f"rtp-{replica}-l", "udp", udp_port, cluster_doc("rtp-c", udp_workers, hash_by="source_ip")),
            listener_doc(f"sip-{replica}-l", "tcp", tcp_port, cluster_doc("sip-c", tcp_echo, hash_by="source_ip")),
            selector=labels,
        )
        vs_files.write(f"media-{replica}.yaml", doc)
    for envoy, replica in zip(envoys, "ab", strict=True):
        envoy.wait_listener(f"rtp-{replica}-l")
        envoy.wait_hosts("rtp-c", {w.port for w in udp_workers})
        envoy.wait_hosts("sip-c", {w.port for w in tcp_echo})

    udp_seen: dict[str, set[str]] = {}
    tcp_seen: dict[str, set[str]] = {}
    for source in SOURCES:
        for udp_port, tcp_port in ports:
            for attempt in range(2):  # two source ports per client IP and replica: two sessions, two connections
                sock = udp_from(source)
                sockets.append(sock)
                udp_seen.setdefault(source, set()).add(talk(sock, udp_port, f"{source} {attempt}".encode()))
                connection = tcp_connect(tcp_port, source)
                sockets.append(connection)
                tcp_seen.setdefault(source, set()).add(tcp_talk(connection, f"{source} {attempt}".encode()))
    for protocol, seen in (("UDP", udp_seen), ("TCP", tcp_seen)):
        split = {source: sorted(names) for source, names in seen.items() if len(names) != 1}
        assert split == {}, f"{protocol}: a client IP reached several workers (or none): {split}"
        used = {next(iter(names)) for names in seen.values()}
        assert len(used) > 1, f"{protocol}: every client IP went to {used}: not hashed by source"
