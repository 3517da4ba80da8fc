"""Free ports for tests that hand a port to another process (which binds it later).

A port is found by binding port 0, then released for the process to take. Two things could still
take it meanwhile, and each is ruled out:
- this process: a port is never handed out twice in a session;
- another pytest-xdist worker running the same kind of test: each worker keeps only its own ports:
  (port // 2) % workers == its index, so no two workers ever hand out the same port. (Halved: Linux
  gives bind() to port 0 even ports first, keeping odd ones for connect().)
"""

from __future__ import annotations

import os
import socket

_handed_out: set[tuple[int, int]] = set()


def worker_share() -> tuple[int, int]:
    """(this worker's index, number of workers): (0, 1) outside pytest-xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    return index % max(count, 1), max(count, 1)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing is bound to now, this worker's own, never handed out before in this session."""
    index, count = worker_share()
    for _ in range(100 * count):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind(("0.0.0.0", 0))
            port = sock.getsockname()[1]
        if (port // 2) % count == index and (kind, port) not in _handed_out:
            _handed_out.add((kind, port))
            return port
    raise RuntimeError("no free port found")


def free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


def free_tcp_ports(count: int) -> list[int]:
    return [free_port() for _ in range(count)]
