"""The end-to-end harness without its fixtures (those are in tests/e2e/conftest.py): free ports, bounded
waits, datagrams and TCP exchanges through Envoy, the control plane and Envoy as subprocesses
(`ControlPlane`, `Envoy`), and VirtualService files for the echo workers."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.support.ports import free_port
from tests.support.ports import free_udp_port as free_udp_port  # re-exported: the e2e tests' free ports
from xds_operator.demo.echo import EchoWorker, TcpEchoWorker

ENVOY = Path(sys.executable).parent / "envoy"  # never `import envoy`: xds-protos owns that package too


POLL = 0.05  # seconds between polls


WAIT = 30.0  # default bound of every wait: generous, a loaded 2-core machine; only a failing test waits it out


LOG_TAIL = 12_000  # characters of each log shown with a failure


LOGS = pytest.StashKey[list[tuple[str, Path]]]()


def tail(path: Path, limit: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"({path}: {error.strerror})"
    return text if len(text) <= limit else f"... ({len(text) - limit} characters left out)\n" + text[-limit:]


def register_log(request: pytest.FixtureRequest, title: str, path: Path) -> None:
    request.node.stash.setdefault(LOGS, []).append((title, path))


def wait_until(check: Callable[[], object], what: str, timeout: float = WAIT, interval: float = POLL) -> object:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


# Source ports used in this test. Envoy's UDP proxy keeps a session per 4-tuple (to the host it
# picked first) until it is idle for the listener's idle_timeout (120 s by default): a datagram from
# a reused source port would join an old session instead of being balanced anew, and the kernel
# does hand out recently used ports.
_used_sources: set[int] = set()


def forget_source_ports() -> None:
    """A new test, a new Envoy: its sessions are its own (tests/e2e/conftest.py calls this before each test)."""
    _used_sources.clear()


def fresh_socket() -> socket.socket:
    """A UDP socket bound to a 127.0.0.1 source port not used before in this test."""
    for _ in range(100):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        if port not in _used_sources:
            _used_sources.add(port)
            return sock
        sock.close()
    raise RuntimeError("no unused source port found")


def exchange(port: int, payload: bytes, *, timeout: float = 0.5) -> tuple[bytes | None, int]:
    """Send one datagram to 127.0.0.1:port from a new source port; return (answer or None, source port)."""
    with fresh_socket() as sock:
        sock.settimeout(timeout)
        source = sock.getsockname()[1]
        try:
            sock.sendto(payload, ("127.0.0.1", port))
            return sock.recvfrom(65535)[0], source
        except (TimeoutError, ConnectionRefusedError):
            return None, source


def answered_by(answer: bytes | None) -> str | None:
    """The echo worker's name in an answer (`<name>: <payload>`)."""
    return answer.split(b": ", 1)[0].decode() if answer else None


def send_until_answer(
    port: int,
    payload: bytes = b"ping",
    *,
    accept: Callable[[str], bool] = lambda name: True,
    timeout: float = WAIT,
    attempt_timeout: float = 0.2,
) -> str:
    """Send datagrams (each from a new source port) until an accepted worker answers; return its name."""
    deadline = time.monotonic() + timeout
    seen: list[str | None] = []
    while time.monotonic() < deadline:
        answer, _ = exchange(port, payload, timeout=attempt_timeout)
        name = answered_by(answer)
        if answer is not None and not answer.endswith(b": " + payload):
            pytest.fail(f"port {port}: unexpected answer {answer!r} to {payload!r}")
        if name is not None and accept(name):
            return name
        seen.append(name)
        if name is not None:
            time.sleep(POLL)
    pytest.fail(f"port {port}: no accepted answer within {timeout:.1f}s; answers seen: {seen[-10:]}")


def answers(port: int, n: int, *, timeout: float = 2.0) -> list[str | None]:
    """Who answers each of n datagrams, each from a new source port (None: no answer within `timeout`:
    a loaded machine may take more than a second to pass a datagram through Envoy and back)."""
    return [answered_by(exchange(port, f"probe-{i}".encode(), timeout=timeout)[0]) for i in range(n)]


def wait_all_answered_by(port: int, name: str, *, n: int = 10, timeout: float = WAIT) -> None:
    """Wait until n datagrams in a row (new source ports) are all answered by worker `name`.

    Envoy's admin API shows a health change before the load balancers use it: health-driven
    host updates are merged over `common_lb_config.update_merge_window` (1 s by default) and
    then reach each worker thread. A switch of upstream is complete once a whole batch agrees.
    """
    last: list[str | None] = []

    def agreed() -> bool:
        nonlocal last
        last = answers(port, n, timeout=0.5)
        return set(last) == {name}

    try:
        wait_until(agreed, f"all of {n} datagrams to port {port} answered by {name}", timeout, interval=0.1)
    except pytest.fail.Exception as error:
        pytest.fail(f"{error.msg}; last batch: {last}")


def tcp_exchange(port: int, payloads: Sequence[bytes], *, timeout: float = 2.0) -> tuple[list[bytes], int]:
    """Send payloads one by one over one new TCP connection to 127.0.0.1:port, each answer read in full.

    Returns (answers, source port); answers stop early if the connection fails or goes quiet.
    """
    got: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            return got, 0
        source = sock.getsockname()[1]
        for payload in payloads:
            sock.sendall(payload)
            answer = b""
            try:
                while not answer.endswith(b": " + payload):  # an echo is `<name>: <payload>`
                    chunk = sock.recv(65536)
                    if not chunk:
                        return got, source  # closed: Envoy found no upstream, or the worker went away
                    answer += chunk
            except OSError:
                return got, source
            got.append(answer)
    return got, source


def tcp_answered_by(port: int, payload: bytes = b"hello", *, timeout: float = 2.0) -> tuple[str | None, int]:
    """Who answers one payload on a new TCP connection (None: no answer), and the connection's source port."""
    got, source = tcp_exchange(port, [payload], timeout=timeout)
    return (answered_by(got[0]) if got else None), source


def tcp_wait_answer(port: int, timeout: float = WAIT) -> str:
    """Connect until a worker answers over the TCP listener (it takes a moment to start accepting)."""
    return str(wait_until(lambda: tcp_answered_by(port, timeout=0.5)[0], f"an answer over TCP port {port}", timeout))


def assert_silent(port: int, *, attempts: int = 3, timeout: float = 0.3) -> None:
    """Nothing answers on this port."""
    got = [exchange(port, b"anyone?", timeout=timeout)[0] for _ in range(attempts)]
    assert got == [None] * attempts, f"port {port} still answers: {got}"


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError):
        return 0, ""  # (HTTPException: another process, say a gRPC server, took the port we picked)


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@dataclass
class ControlPlane:
    directory: Path | None  # the watched directory; None in Kubernetes mode
    xds_port: int
    admin_port: int
    log_path: Path
    command: list[str]
    process: subprocess.Popen | None = None

    @property
    def xds_address(self) -> str:
        return f"127.0.0.1:{self.xds_port}"

    def spawn(self) -> subprocess.Popen:
        """Start the process (again, after a restart: same ports, same log file, appended)."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        return self.process

    def wait_ready(self, timeout: float = WAIT) -> None:
        process = self.process
        assert process is not None

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"xds-operator serve exited with {process.returncode}:\n{tail(self.log_path)}")
            return self.get("/readyz")[0] == 200

        wait_until(ready, "xds-operator /readyz to return 200", timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{self.admin_port}{path}")


@dataclass
class Envoy:
    node_id: str
    labels: Mapping[str, str]
    bootstrap_path: Path
    log_path: Path
    admin_path: Path
    process: subprocess.Popen
    admin: str = ""  # host:port, known once Envoy wrote its admin address file

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> str:
        status, body = http_get(f"http://{self.admin}{path}")
        if status != 200:
            raise AssertionError(f"Envoy admin {path}: HTTP {status} {body[:300]}")
        return body

    def listeners(self) -> dict[str, int]:
        """Envoy's active listeners: name → port."""
        statuses = json.loads(self.get("/listeners?format=json")).get("listener_statuses", [])
        return {
            status["name"]: status.get("local_address", {}).get("socket_address", {}).get("port_value", 0)
            for status in statuses
        }

    def wait_listener(self, name: str, port: int | None = None, timeout: float = WAIT) -> None:
        def present() -> bool:
            listeners = self.listeners()
            return name in listeners and (port is None or listeners[name] == port)

        wait_until(present, f"listener {name!r}{'' if port is None else f' on port {port}'} in Envoy", timeout)

    def wait_listener_absent(self, name: str, timeout: float = WAIT) -> None:
        wait_until(lambda: name not in self.listeners(), f"listener {name!r} to leave Envoy", timeout)

    def cluster_hosts(self, cluster: str) -> set[int]:
        """Ports of the hosts Envoy has for a cluster (from /clusters)."""
        ports = set()
        for line in self.get("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) >= 3 and parts[0] == cluster and parts[2] == "cx_active":
                ports.add(int(parts[1].rsplit(":", 1)[1]))
        return ports

    def healthy_hosts(self, cluster: str) -> set[int]:
        """Ports of the hosts Envoy counts as healthy for a cluster."""
        ports = set()
        for line in self.get("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == cluster and parts[2] == "health_flags" and parts[3] == "healthy":
                ports.add(int(parts[1].rsplit(":", 1)[1]))
        return ports

    def wait_healthy(self, cluster: str, ports: set[int], timeout: float = WAIT) -> None:
        wait_until(
            lambda: self.healthy_hosts(cluster) == ports,
            f"cluster {cluster!r} healthy hosts == {sorted(ports)}",
            timeout,
        )

    def wait_hosts(self, cluster: str, ports: set[int], timeout: float = WAIT) -> None:
        wait_until(
            lambda: self.cluster_hosts(cluster) == ports, f"cluster {cluster!r} hosts == {sorted(ports)}", timeout
        )

    def stats(self) -> dict[str, int]:
        """Envoy's counters and gauges (name → value)."""
        values = {}
        for line in self.get("/stats").splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                values[name] = int(value)
        return values

    def config_dump(self) -> dict:
        return json.loads(self.get("/config_dump"))

    def stop(self) -> None:
        stop_process(self.process)


def launch_control_plane(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    source_args: Sequence[str],
    directory: Path | None = None,
    global_args: Sequence[str] = (),
    *,
    xds_port: int | None = None,
    name: str = "xds-operator",
) -> Iterator[ControlPlane]:
    """`xds-operator [global_args] serve` with the given source arguments, until /readyz answers 200;
    stopped afterwards.

    `xds_port` reuses a port (a replica taking over from a stopped one); `name` tells several apart in logs.
    """
    xds_port, admin_port = xds_port or free_port(), free_port()
    log_path = tmp_path / f"{name}.log"
    register_log(request, f"{name} stderr", log_path)
    command = [
        sys.executable,
        "-m",
        "xds_operator.cli",
        *global_args,
        "serve",
        *source_args,
        "--xds-address",
        "127.0.0.1",
        "--xds-port",
        str(xds_port),
        "--admin-port",
        str(admin_port),
    ]
    log_path.write_bytes(b"")
    plane = ControlPlane(directory, xds_port, admin_port, log_path, command)
    plane.spawn()
    try:
        plane.wait_ready()
        yield plane
    finally:
        if plane.process is not None:
            stop_process(plane.process)


PROXY_LABELS = {"app": "e2e-ingress", "tier": "edge"}


@dataclass
class VsFiles:
    directory: Path
    written: list[Path] = field(default_factory=list)

    def write(self, filename: str, content: dict | Sequence[dict] | str) -> Path:
        """Write a file atomically (temporary name with another suffix, then os.replace)."""
        if isinstance(content, str):
            text = content
        elif isinstance(content, dict):
            text = yaml.safe_dump(content, sort_keys=False)
        else:
            text = yaml.safe_dump_all(list(content), sort_keys=False)
        target = self.directory / filename
        temporary = self.directory / f".{filename}.tmp"
        temporary.write_text(text)
        os.replace(temporary, target)
        self.written.append(target)
        return target

    def delete(self, filename: str) -> None:
        (self.directory / filename).unlink()


def endpoint(worker: EchoWorker | TcpEchoWorker, *, health: bool = True) -> dict:
    """A VirtualService endpoint pointing at an echo worker by address (a TCP worker is checked on its port)."""
    entry: dict = {"name": worker.name, "host": {"address": "127.0.0.1"}, "port": worker.port}
    if health and isinstance(worker, EchoWorker):
        entry["health_check_port"] = worker.health_port
    return entry


def virtual_service(
    name: str,
    port: int,
    endpoints: Sequence[dict],
    *,
    selector: Mapping[str, str] | None = None,
    discovery: str = "strictdns",
    hash_key: str | None = None,
    health_check_ms: int | None = None,
    namespace: str = "default",
    protocol: str = "udp",
) -> dict:
    """A VirtualService with one listener `<name>-l` (`protocol`: udp or tcp) and its cluster `<name>-c`."""
    cluster: dict = {"name": f"{name}-c", "service_discovery": discovery}
    if hash_key is not None:
        cluster["hash_key"] = hash_key
    if health_check_ms is not None:
        cluster["health_check"] = {"protocol": "TCP", "interval": health_check_ms}
    cluster["endpoints"] = list(endpoints)
    return {
        "apiVersion": "servicemesh.l7mp.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": dict(selector if selector is not None else {"app": PROXY_LABELS["app"]}),
            "listeners": [{"name": f"{name}-l", protocol: {"port": port, "cluster": cluster}}],
        },
    }
