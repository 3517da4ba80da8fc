"""Free ports for tests that hand a port to another process (which binds it later).

A port handed out is free when picked (a test bind succeeds), then released for the other process to
take. Three things could take it meanwhile, and each is ruled out:
- an outgoing connection of any process: ports come from below the kernel's ephemeral range, which
  connect() never uses (a port that bind() to port 0 gives is from that range: a gRPC client, Envoy or
  the kubernetes client on another worker could connect from it before our server binds it);
- this process: a port is never handed out twice in a session;
- another pytest-xdist worker: each worker keeps only its own ports, (port // 2) % workers == its index.
Each process starts at a random place in the range, so that two test runs at once (other checkouts on one
machine) rarely meet.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

LOW = 10_000  # the range's start; it ends where the kernel's ephemeral range begins


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


HIGH = _ephemeral_low()
_handed_out: set[tuple[int, int]] = set()
_next = random.randrange(LOW, HIGH)


def worker_share() -> tuple[int, int]:
    """(this worker's index, number of workers): (0, 1) outside pytest-xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    return index % count, count


def _bindable(kind: int, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def claim(kind: int, port: int) -> bool:
    """Hand out `port` if nothing is bound to it now, it is this worker's own and it was never handed out in
    this process (also by bench/harness.py, which picks its ports here for the smoke tests)."""
    index, count = worker_share()
    if (port // 2) % count != index or (kind, port) in _handed_out or not _bindable(kind, port):
        return False
    _handed_out.add((kind, port))
    return True


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing is bound to now, this worker's own, never handed out before in this session."""
    global _next
    for _ in range(HIGH - LOW):
        port = _next
        _next = LOW + (_next + 1 - LOW) % (HIGH - LOW)
        if claim(kind, port):
            return port
    raise RuntimeError(f"no free port left in [{LOW}, {HIGH})")


def free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


def free_tcp_ports(count: int) -> list[int]:
    return [free_port() for _ in range(count)]
