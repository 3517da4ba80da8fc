"""Benchmark: how fast one edit reaches thousands of proxies (fan-out over state-of-the-world ADS).

    .venv/bin/python bench/fanout.py [--smoke] [--chart fanout.png]
    .venv/bin/python bench/fanout.py --proxies 2000 --groups 50 [--virtual-services 1000]   # one configuration

The control plane runs in its own process (`xds-operator serve --dir`), the load generator
(bench/loadgen.py) in another: N ADS streams acting like Envoy, one proxy each, with labels
{app: ingress, zone: z<i % G>}. 90% of the VirtualServices select {app: ingress} (every
proxy); the rest (at least one per group, so that every group's content differs) select one
zone each. Each VirtualService has one UDP listener, a cluster with a hash key, a TCP health
check and three address endpoints (bench/snapshot_build.py's), ten per file.

Once every stream holds its first CDS and LDS, the load generator moves one common
VirtualService's listener to another port (an atomic os.replace of its file, t0 taken just
before) and records, per stream, when it has ACKed the new LDS version. Reported per
configuration: p50/p99/max of those latencies, the server's CPU time for the push
(utime + stime from /proc, before the edit vs after the last ACK, each once the server is
idle), its peak RSS (VmHWM), the time until every stream first synced, and the load
generator's own CPU time (both processes share the machine's cores).
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml
from harness import CLOCK_TICK, Ports, cpu_seconds, memory_mb, serve_command, stop, tail
from snapshot_build import virtual_service

ROOT = Path(__file__).resolve().parents[1]
LOADGEN = Path(__file__).with_name("loadgen.py")
TARGETS = {"p99_seconds": 2.0, "server_peak_rss_mb": 300}
PER_FILE = 10  # VirtualServices per file: loading many small documents from few files is fast
EDITED = 0  # the index of the VirtualService the edit changes: a common one, selected by every group
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass(frozen=True)
class Config:
    proxies: int
    groups: int
    virtual_services: int = 1000  # nominal: 90% common; the zonal share grows to one per group if needed
    per_channel: int = 100  # streams per gRPC channel (HTTP/2 connection)
    ready_timeout: float = 120.0  # server start until /readyz answers 200
    sync_timeout: float = 300.0  # until every stream ACKed its first CDS and LDS
    push_timeout: float = 120.0  # from the edit until every stream ACKed the new LDS
    log_level: str = "warning"  # the server's; "info" logs a line per push (per proxy and type)

    @property
    def name(self) -> str:
        return f"{self.proxies} proxies, {self.groups} group{'s' if self.groups != 1 else ''}"

    @property
    def common(self) -> int:
        return self.virtual_services * 9 // 10

    @property
    def zonal(self) -> int:
        return max(self.virtual_services - self.common, self.groups)

    @property
    def total(self) -> int:
        return self.common + self.zonal


FULL = [Config(2000, 50), Config(2000, 1), Config(2000, 2000)]
SMOKE = [
    Config(20, 4, 20, per_channel=10, ready_timeout=30, sync_timeout=30, push_timeout=30),
    Config(20, 20, 20, per_channel=10, ready_timeout=30, sync_timeout=30, push_timeout=30),
]


def document(index: int, config: Config, port: int | None = None) -> dict:
    """VirtualService `index`: common ones select every proxy, zonal ones the proxies of one zone."""
    doc = virtual_service(index)
    if index >= config.common:
        doc["spec"]["selector"] = {"app": "ingress", "zone": f"z{(index - config.common) % config.groups}"}
    if port is not None:
        doc["spec"]["listeners"][0]["udp"]["port"] = port
    return doc


def write_files(config: Config, served: Path, staged: Path) -> tuple[Path, Path]:
    """The VirtualService files, and the edited version of the edited one's file (staged, same file system)."""
    for start in range(0, config.total, PER_FILE):
        documents = [document(index, config) for index in range(start, min(start + PER_FILE, config.total))]
        (served / file_name(start)).write_text(yaml.dump_all(documents, Dumper=DUMPER, sort_keys=False))
    start = EDITED - EDITED % PER_FILE
    new_port = 1024 + config.total  # snapshot_build gives VirtualService i port 1024 + i: this one is free
    documents = [
        document(index, config, port=new_port if index == EDITED else None)
        for index in range(start, min(start + PER_FILE, config.total))
    ]
    (staged / file_name(start)).write_text(yaml.dump_all(documents, Dumper=DUMPER, sort_keys=False))
    return staged / file_name(start), served / file_name(start)


def file_name(start: int) -> str:
    return f"vs-{start // PER_FILE:04d}.yaml"


# -- processes ---------------------------------------------------------------------------------


def settle(pid: int, timeout: float = 5.0) -> float:
    """Wait until the process is idle (under one clock tick of CPU in 0.1 s, twice); its CPU time then."""
    deadline = time.monotonic() + timeout
    previous, quiet = cpu_seconds(pid), 0
    while quiet < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        current = cpu_seconds(pid)
        quiet = quiet + 1 if current - previous <= 1 / CLOCK_TICK else 0
        previous = current
    return previous


class Run:
    """One configuration: its server and load generator, and what they report."""

    def __init__(self, config: Config, work: Path):
        self.config = config
        self.work = work
        self.server: subprocess.Popen | None = None
        self.loadgen: subprocess.Popen | None = None
        self.server_log = work / "server.stderr"
        self.loadgen_log = work / "loadgen.stderr"
        self.lines: queue.Queue[str | None] = queue.Queue()

    def measure(self) -> dict:
        config = self.config
        served, staged = self.work / "served", self.work / "staged"
        served.mkdir()
        staged.mkdir()
        edit_from, edit_to = write_files(config, served, staged)
        ports = Ports()
        xds_port, admin_port = ports.take(), ports.take()
        try:
            started = time.monotonic()
            self.server = self._start(
                serve_command(served, xds_port, admin_port, config.log_level),
                self.server_log,
            )
            self._wait_ready(admin_port, started + config.ready_timeout)
            load_seconds = time.monotonic() - started
            cpu_ready, rss_ready = cpu_seconds(self.server.pid), memory_mb(self.server.pid, "VmRSS")
            self.loadgen = self._start(
                [
                    sys.executable,
                    str(LOADGEN),
                    f"--target=127.0.0.1:{xds_port}",
                    f"--proxies={config.proxies}",
                    f"--groups={config.groups}",
                    f"--per-channel={config.per_channel}",
                    f"--edit-from={edit_from}",
                    f"--edit-to={edit_to}",
                    "--expect=LDS",
                    f"--sync-timeout={config.sync_timeout}",
                    f"--push-timeout={config.push_timeout}",
                ],
                self.loadgen_log,
                pipes=True,
            )
            threading.Thread(target=self._read_lines, args=(self.loadgen.stdout,), daemon=True).start()
            synced = self._expect("synced", config.sync_timeout + 30)
            cpu_before = settle(self.server.pid)
            rss_synced = memory_mb(self.server.pid, "VmHWM")
            assert self.loadgen.stdin is not None
            self.loadgen.stdin.write("edit\n")
            self.loadgen.stdin.flush()
            done = self._expect("done", config.push_timeout + 30)
            cpu_after = settle(self.server.pid)
            rss = memory_mb(self.server.pid, "VmHWM")
        finally:
            stop(self.loadgen)
            stop(self.server)
        server = {
            "server_cpu_seconds": cpu_after - cpu_before,
            "server_peak_rss_mb": rss,
            "server_load_seconds": load_seconds,
            "server_ready_rss_mb": rss_ready,
            "server_sync_cpu_seconds": cpu_before - cpu_ready,
            "server_sync_peak_rss_mb": rss_synced,
        }
        return result(config, synced, done, server)

    def _start(self, argv: list[str], log: Path, pipes: bool = False) -> subprocess.Popen:
        with log.open("wb") as stderr:
            return subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stderr=stderr,
                text=True,
            )

    def _read_lines(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def _check_server(self) -> None:
        assert self.server is not None
        if self.server.poll() is not None:
            raise RuntimeError(self._server_state())

    def _server_state(self) -> str:
        assert self.server is not None
        time.sleep(0.2)  # a server that is dying closes its streams before it exits
        status = "running" if self.server.poll() is None else f"exited with status {self.server.returncode}"
        return f"the server {status}; its stderr ends:\n{tail(self.server_log)}"

    def _wait_ready(self, admin_port: int, deadline: float) -> None:
        url = f"http://127.0.0.1:{admin_port}/readyz"
        while True:
            self._check_server()
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or 503 while loading
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server was not ready within {self.config.ready_timeout:.0f} s")
            time.sleep(0.05)

    def _expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The load generator's next report, which must be `event`; fails fast if either process dies."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                self._check_server()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no {event!r} from the load generator within {timeout:.0f} s") from None
                continue
            if line is None:
                raise RuntimeError(
                    f"the load generator exited before {event!r}; its stderr ends:\n{tail(self.loadgen_log)}\n"
                    f"{self._server_state()}"
                )
            report = json.loads(line)
            if report["event"] == "error":
                raise RuntimeError(f"load generator: {report['message']}\n{self._server_state()}")
            if report["event"] != event:
                raise RuntimeError(f"expected {event!r} from the load generator, got {report}")
            return report


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest rank."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def result(config: Config, synced: dict, done: dict, server: dict[str, float]) -> dict:
    """The result dict bench/run.py collects; `server`: the server-side figures, measured from /proc."""
    samples = [float(latency) for latency in done["latencies"]]
    ordered = sorted(samples)
    p99 = percentile(ordered, 0.99)
    return {
        "scenario": "fan-out",
        "name": config.name,
        "parameters": {
            "proxies": config.proxies,
            "groups": config.groups,
            "virtual_services": config.total,
            "common_virtual_services": config.common,
            "zonal_virtual_services": config.zonal,
            "distinct_group_contents": config.groups,
            "virtual_services_per_file": PER_FILE,
            "channels": synced["channels"],
            "edit": "the listener port of one VirtualService every proxy selects (new LDS version, same CDS)",
        },
        "figures": {
            "p50_seconds": percentile(ordered, 0.5),
            "p99_seconds": p99,
            "max_seconds": ordered[-1],
            "server_cpu_seconds": server["server_cpu_seconds"],
            "server_peak_rss_mb": server["server_peak_rss_mb"],
            "initial_sync_seconds": synced["initial_sync_seconds"],
            "streams": len(samples),
            "server_load_seconds": server["server_load_seconds"],
            "server_ready_rss_mb": server["server_ready_rss_mb"],
            "server_sync_cpu_seconds": server["server_sync_cpu_seconds"],
            "server_sync_peak_rss_mb": server["server_sync_peak_rss_mb"],
            "loadgen_sync_cpu_seconds": synced["cpu_seconds"],
            "loadgen_push_cpu_seconds": done["cpu_seconds"],
        },
        "ratios": {
            "p99_vs_target": p99 / TARGETS["p99_seconds"],
            "rss_vs_target": server["server_peak_rss_mb"] / TARGETS["server_peak_rss_mb"],
            "cpu_per_group_ms": 1000 * server["server_cpu_seconds"] / config.groups,
            "cpu_per_stream_ms": 1000 * server["server_cpu_seconds"] / config.proxies,
        },
        # The issue sets targets for the main configuration; the others show how cost follows groups.
        "targets": dict(TARGETS) if config.groups == MAIN_GROUPS else {},
        "samples": samples,
    }


MAIN_GROUPS = 50


def run_one(config: Config) -> dict:
    with tempfile.TemporaryDirectory(prefix="fanout-") as work:
        return Run(config, Path(work)).measure()


def run(smoke: bool = False) -> list[dict]:
    """Every configuration (tiny ones with smoke=True), one result dict each."""
    return [run_one(config) for config in (SMOKE if smoke else FULL)]


def print_table(results: list[dict]) -> None:
    header = (
        f"{'configuration':<28}{'streams':>8}{'p50 s':>8}{'p99 s':>8}{'max s':>8}"
        f"{'srv CPU s':>10}{'RSS MB':>8}{'sync s':>8}{'gen CPU s':>10}"
    )
    print(header)
    for row in results:
        f = row["figures"]
        print(
            f"{row['name']:<28}{f['streams']:>8}{f['p50_seconds']:>8.3f}{f['p99_seconds']:>8.3f}"
            f"{f['max_seconds']:>8.3f}{f['server_cpu_seconds']:>10.2f}{f['server_peak_rss_mb']:>8.0f}"
            f"{f['initial_sync_seconds']:>8.1f}{f['loadgen_push_cpu_seconds']:>10.2f}"
        )
    print(
        f"targets: p99 <= {TARGETS['p99_seconds']} s, peak RSS <= {TARGETS['server_peak_rss_mb']} MB; "
        "srv CPU = server CPU for the push, gen CPU = the load generator's CPU for the push"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, two configurations")
    parser.add_argument("--proxies", type=int, help="run one configuration of this many proxies instead")
    parser.add_argument("--groups", type=int, default=50, help="with --proxies (default: 50)")
    parser.add_argument("--virtual-services", type=int, default=1000, help="with --proxies (default: 1000)")
    parser.add_argument(
        "--log-level", default="warning", help="with --proxies: the server's log level (info logs every push)"
    )
    parser.add_argument("--chart", type=Path, metavar="PNG", help="also draw the latency CDF (needs the bench extra)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.proxies:
        results = [run_one(Config(args.proxies, args.groups, args.virtual_services, log_level=args.log_level))]
    else:
        results = run(smoke=args.smoke)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.chart:
        from chart import fanout_chart

        fanout_chart(results, args.chart)
        print(f"chart: {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
