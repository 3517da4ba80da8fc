"""What the benchmarks that run processes share: the control plane's command line, free ports,
a one-endpoint VirtualService, log tails, and stopping a process."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LOG_TAIL = 12_000  # characters of a log shown with a failure


def serve_command(directory: Path, xds_port: int, admin_port: int, log_level: str = "warning") -> list[str]:
    """`xds-operator serve` on a directory, xDS on 127.0.0.1:xds_port, admin on admin_port."""
    return [
        sys.executable,
        "-m",
        "xds_operator.cli",
        "--log-level",
        log_level,
        "serve",
        "--dir",
        str(directory),
        "--xds-address",
        "127.0.0.1",
        "--xds-port",
        str(xds_port),
        "--admin-port",
        str(admin_port),
    ]


def one_endpoint_vs(
    name: str, port: int, *, selector: Mapping[str, str], namespace: str, host: str, endpoint_port: int, endpoint: str
) -> dict[str, Any]:
    """A VirtualService: one UDP listener `<name>-l` on `port` → strictdns cluster `<name>-c` → one endpoint."""
    cluster = {
        "name": f"{name}-c",
        "service_discovery": "strictdns",
        "endpoints": [{"name": endpoint, "host": {"address": host}, "port": endpoint_port}],
    }
    return {
        "apiVersion": "servicemesh.l7mp.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": dict(selector),
            "listeners": [{"name": f"{name}-l", "udp": {"port": port, "cluster": cluster}}],
        },
    }


class Ports:
    """Free ports, never the same one twice in a run (UDP listener ports must be free on 0.0.0.0)."""

    def __init__(self) -> None:
        self._handed_out: set[tuple[int, int]] = set()

    def take(self, kind: int = socket.SOCK_STREAM) -> int:
        for _ in range(1000):
            with socket.socket(socket.AF_INET, kind) as sock:
                sock.bind(("0.0.0.0", 0))
                port = sock.getsockname()[1]
            if (kind, port) not in self._handed_out:
                self._handed_out.add((kind, port))
                return port
        raise RuntimeError("no free port found")

    def udp(self) -> int:
        return self.take(socket.SOCK_DGRAM)


def tail(path: Path, limit: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"({path}: {error.strerror})"
    return text if len(text) <= limit else f"... ({len(text) - limit} characters left out)\n" + text[-limit:]


def stop(process: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 5 s; close the pipes we hold to it."""
    if process is None:
        return
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):  # a broken pipe to a process that is gone
                pipe.close()
