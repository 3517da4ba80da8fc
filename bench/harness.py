"""What the benchmarks that run processes share: the control plane's command line, free ports,
a one-endpoint VirtualService, log tails, a process's CPU time and memory, and stopping a process."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

from tests.support.ports import HIGH, claim  # noqa: E402  (one record of handed-out ports per process)

LOG_TAIL = 12_000  # characters of a log shown with a failure
CLOCK_TICK = os.sysconf("SC_CLK_TCK")  # /proc/<pid>/stat counts CPU time in these


def serve_command(directory: Path, xds_port: int, admin_port: int, log_level: str = "warning") -> list[str]:
    """`xds-operator serve` on a directory, xDS on 127.0.0.1:xds_port, admin on admin_port."""
    return _serve(["--dir", str(directory)], xds_port, admin_port, log_level)


def kube_serve_command(kubeconfig: Path, xds_port: int, admin_port: int, log_level: str = "warning") -> list[str]:
    """`xds-operator serve` in Kubernetes mode against the API server of a kubeconfig."""
    return _serve(["--kubeconfig", str(kubeconfig)], xds_port, admin_port, log_level)


def _serve(source_args: list[str], xds_port: int, admin_port: int, log_level: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "xds_operator.cli",
        "--log-level",
        log_level,
        "serve",
        *source_args,
        "--xds-address",
        "127.0.0.1",
        "--xds-port",
        str(xds_port),
        "--admin-port",
        str(admin_port),
    ]


def one_endpoint_vs(
    name: str,
    port: int,
    *,
    selector: Mapping[str, str],
    namespace: str,
    host: str | Mapping[str, str],
    endpoint_port: int,
    endpoint: str,
    discovery: str = "strictdns",
    hash_key: str | None = None,
    cluster: str | None = None,
) -> dict[str, Any]:
    """A VirtualService: one UDP listener `<name>-l` on `port` → cluster `<name>-c` (or `cluster`) → one
    endpoint, `host` an address or (a mapping) a pod selector."""
    where = {"address": host} if isinstance(host, str) else {"selector": dict(host)}
    spec: dict[str, Any] = {"name": cluster or f"{name}-c", "service_discovery": discovery}
    if hash_key is not None:
        spec["hash_key"] = hash_key
    spec["endpoints"] = [{"name": endpoint, "host": where, "port": endpoint_port}]
    return {
        "apiVersion": "servicemesh.l7mp.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": dict(selector),
            "listeners": [{"name": f"{name}-l", "udp": {"port": port, "cluster": spec}}],
        },
    }


class Ports:
    """Free ports for servers started later (UDP listener ports must be free on 0.0.0.0), never the same one
    twice in a run: from below the kernel's ephemeral range, so that no connection made meanwhile (by any
    process) and no server binding port 0 can take one before its server binds it; from a random start,
    so that two runs at once rarely meet."""

    def __init__(self, low: int = 10_000, high: int | None = None) -> None:
        self._low = low
        self._high = high if high is not None else HIGH
        self._next = random.randrange(low, self._high)

    def take(self, kind: int = socket.SOCK_STREAM) -> int:
        span = self._high - self._low
        for _ in range(span):
            port, self._next = self._next, self._low + (self._next + 1 - self._low) % span
            if claim(kind, port):
                return port
        raise RuntimeError(f"no free port left in [{self._low}, {self._high})")

    def udp(self) -> int:
        return self.take(socket.SOCK_DGRAM)


class PortRange:
    """Free UDP ports from [low, high), in order from a random start (wrapping around), never the same one
    twice in a run.

    For many listeners at once: ports below the kernel's ephemeral range, so that no socket
    connected meanwhile (Envoy's upstream sessions, our probes) can be given a port we picked. The
    random start keeps two runs at once (test workers, other checkouts on one machine) apart: Envoy's UDP
    listeners set SO_REUSEPORT, so two Envoys on one port would silently share its datagrams.
    """

    def __init__(self, low: int = 20_000, high: int | None = None) -> None:
        self._low = low
        self._high = high if high is not None else HIGH
        self._offset = random.randrange(max(1, self._high - low))
        self._taken = 0

    def udp(self) -> int:
        span = self._high - self._low
        while self._taken < span:
            port = self._low + (self._offset + self._taken) % span
            self._taken += 1
            if claim(socket.SOCK_DGRAM, port):
                return port
        raise RuntimeError(f"no free UDP port left in [{self._low}, {self._high})")


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit (inherited by the processes it starts) towards `wanted`.

    The soft limit goes up to the hard one; the hard one only where allowed (root). Returns the soft limit now.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # not privileged: keep the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        wanted = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK  # fields 14 and 15 of stat(5)


def memory_mb(pid: int, field: str) -> float:
    """A memory figure of /proc/<pid>/status in MB: VmHWM (peak RSS so far) or VmRSS (now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


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
