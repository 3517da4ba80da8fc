"""Benchmark: churn — ADS streams and VirtualServices that come and go must leave nothing behind.

    .venv/bin/python bench/churn.py [STREAM_CYCLES [VS_CYCLES]]     (default 10,000 and 1,000)

`xds-operator serve --dir` runs as a subprocess, so the resident memory measured (from
/proc/<pid>/status) is the server's alone. Then, from this process:

- stream cycles: ADS streams open CONCURRENCY at a time, on as few HTTP/2 connections as the
  server's streams-per-connection limit allows; one
  in four speaks delta ADS, the others state of the world. Each sends its node (a node id of
  its own; every other one with a label of its own too, so its proxy group is created and
  dropped with it), asks for clusters and listeners, ACKs both answers, and goes away in one
  of three ways: cancelled, half-closed (the server ends the call), or still open when its
  connection closes.
- VirtualService cycles: BATCH files, each with a VirtualService of a new name, are written,
  a watching proxy receives all their listeners, the files are deleted, and it sees them go.

Warm-up cycles come first: the server's RSS grows over the first few thousand stream cycles
(malloc arenas of gRPC's threads, the last 256 encoded responses kept by snapshot.py) and is
then flat, give or take a few MB (RSS is sampled every 2,000 cycles to show it). `before` is
measured after the warm-up, `after` once the server has settled. The server's /debug/runtime
counters (asyncio tasks, open streams, connections, cache groups, watches, snapshots,
VirtualServices) must be back to `before`, its RSS within 10 %, and a new proxy must then get
exactly the resources of the VirtualServices left on disk.

A third case, in this process (the cache and a state-of-the-world stream, nothing else): one
VirtualService among 10,000 edited 300 times, each new version encoded for the stream as a
push does; RSS before and after the edits (superseded versions must not stay in memory).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from harness import Ports, one_endpoint_vs, serve_command, stop, tail

from xds_operator.api import parse_virtual_service
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.server import MAX_STREAMS_PER_CONNECTION
from xds_operator.xds.snapshot import CLUSTER, LISTENER, Snapshot
from xds_operator.xds.stream import SotwStream

CONCURRENCY = 250  # streams open at once
# Streams per HTTP/2 connection: the server refuses more than MAX_STREAMS_PER_CONNECTION at once, and
# counts a cancelled stream until it has seen it go (a closing stream may overlap the next).
PER_CONNECTION = MAX_STREAMS_PER_CONNECTION // 2
BATCH = 100  # VirtualService files written (then deleted) at once
KEPT = 5  # VirtualServices that stay on disk throughout: what every proxy gets
LABELS = {"app": "churn"}
RSS_RATIO_LIMIT = 1.10
WARMUP_STREAMS = 2_000  # where RSS stops growing (see above)
WARMUP_VS = BATCH
SAMPLE_EVERY = 2_000  # stream cycles between RSS samples
TIMEOUT = 60.0  # any single wait


def virtual_service(name: str, port: int) -> dict[str, Any]:
    return one_endpoint_vs(
        name, port, selector=LABELS, namespace="churn", host="127.0.0.1", endpoint_port=9, endpoint="worker"
    )


def write(path: Path, documents: Iterable[dict[str, Any]]) -> None:
    """Atomically, as an editor or a ConfigMap update would."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump_all(list(documents), sort_keys=False))
    temporary.replace(path)


def names(response: discovery_pb2.DiscoveryResponse) -> set[str]:
    message: Any = listener_pb2.Listener() if response.type_url == LISTENER else cluster_pb2.Cluster()
    found = set()
    for packed in response.resources:
        packed.Unpack(message)
        found.add(message.name)
    return found


class Server:
    """The control plane under test, and its /debug/runtime counters."""

    def __init__(self, directory: Path | None, log_path: Path, source_args: Sequence[str] = ()):
        """Directory mode on `directory`; or, with directory None, `serve` with source_args (Kubernetes mode)."""
        ports = Ports()
        self.xds_port, self.admin_port = ports.take(), ports.take()
        self.log_path = log_path
        command = serve_command(directory or Path("."), self.xds_port, self.admin_port)
        if directory is None:
            at = command.index("--dir")
            command[at : at + 2] = source_args
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait(lambda: self.get("/readyz") == "ready\n", "the server to serve xDS (/readyz)")

    def get(self, path: str) -> Any:
        """An admin page (JSON decoded), or None if the server does not answer it with 200 (yet)."""
        if self.process.poll() is not None:
            raise RuntimeError(f"xds-operator exited with {self.process.returncode}:\n{tail(self.log_path)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as response:
                body = response.read().decode()
        except OSError:
            return None
        return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def runtime(self) -> dict[str, int] | None:
        return self.get("/debug/runtime")

    def rss(self) -> int:
        """VmRSS of the server process, from /proc, in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def settled(self, expected: dict[str, int]) -> dict[str, int]:
        """Wait until the counters (RSS aside) equal `expected`; return them."""
        last: dict[str, int] = {}

        def equal() -> bool:
            nonlocal last
            last = counters(self.runtime() or {})
            return last == expected

        self._wait(equal, f"the server to settle to {expected}", lambda: f"last: {last}")
        return last

    def _wait(self, check: Any, what: str, detail: Any = lambda: "") -> None:
        deadline = time.monotonic() + TIMEOUT
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; {detail()}\n{tail(self.log_path)}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop(self.process)


def counters(runtime: dict[str, int]) -> dict[str, int]:
    return {key: value for key, value in runtime.items() if key != "rss_bytes"}


# ---------------------------------------------------------------- stream cycles


async def one_stream(channel: grpc.aio.Channel, index: int) -> None:
    """Connect, get and ACK clusters and listeners, then disconnect (the way depends on index).

    Every fourth stream speaks incremental (delta) ADS, the others state of the world.
    """
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    delta = index % 4 == 3
    call: Any = stub.DeltaAggregatedResources() if delta else stub.StreamAggregatedResources()
    request: Any = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
    node = base_pb2.Node(id=f"churn-{index}")
    node.metadata.update({"labels": {**LABELS, "pod": f"pod-{index}"} if index % 2 else LABELS})
    await call.write(request(type_url=CLUSTER, node=node))
    await call.write(request(type_url=LISTENER))
    answers: dict[str, Any] = {}
    while len(answers) < 2:
        response = await call.read()
        answers[response.type_url] = response
    if len(answers[CLUSTER].resources) != KEPT or len(answers[LISTENER].resources) != KEPT:
        raise AssertionError(f"stream {index}: {len(answers[LISTENER].resources)} listeners, expected {KEPT}")
    for response in answers.values():
        if delta:
            await call.write(request(type_url=response.type_url, response_nonce=response.nonce))
        else:
            await call.write(
                request(type_url=response.type_url, version_info=response.version_info, response_nonce=response.nonce)
            )
    way = index % 3
    if way == 0:
        call.cancel()
    elif way == 1:
        await call.done_writing()
        if await call.read() is not grpc.aio.EOF:
            raise AssertionError(f"stream {index}: a response after the ACKs")
    # way 2: left open; its connection closes under it


async def stream_cycles(port: int, count: int, first: int = 0) -> None:
    """CONCURRENCY streams at a time, PER_CONNECTION on each HTTP/2 connection."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # otherwise equal channels share one connection
    for start in range(first, first + count, CONCURRENCY):
        batch = range(start, min(first + count, start + CONCURRENCY))
        channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
            for _ in range(0, len(batch), PER_CONNECTION)
        ]
        try:
            # Connected first: the server's SETTINGS (its stream limit) arrive before the streams open.
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), TIMEOUT)
            streams = (one_stream(channels[n // PER_CONNECTION], index) for n, index in enumerate(batch))
            await asyncio.wait_for(asyncio.gather(*streams), TIMEOUT)
        finally:
            for channel in channels:
                await channel.close()


# ---------------------------------------------------------------- VirtualService cycles


class Watcher:
    """One proxy that stays connected and keeps the latest listener names it was sent."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str = "churn-watcher"):
        self.node_id = node_id
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        self.listeners: set[str] | None = None
        self.clusters: set[str] | None = None
        self.changed = asyncio.Event()
        self._reader: asyncio.Task | None = None

    async def start(self) -> None:
        node = base_pb2.Node(id=self.node_id)
        node.metadata.update({"labels": LABELS})
        await self.call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=node))
        await self.call.write(discovery_pb2.DiscoveryRequest(type_url=LISTENER))
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            if response.type_url == LISTENER:
                self.listeners = names(response)
            else:
                self.clusters = names(response)
            await self.call.write(
                discovery_pb2.DiscoveryRequest(
                    type_url=response.type_url, version_info=response.version_info, response_nonce=response.nonce
                )
            )
            self.changed.set()

    async def until(self, listeners: set[str]) -> None:
        async def wait() -> None:
            while self.listeners != listeners or self.clusters != {n[:-2] + "-c" for n in listeners}:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), TIMEOUT)

    async def close(self) -> None:
        self.call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


async def vs_cycles(port: int, directory: Path, count: int, kept: set[str], first: int = 0) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        watcher = Watcher(channel)
        await watcher.start()
        try:
            await watcher.until(kept)
            for start in range(first, first + count, BATCH):
                batch = range(start, min(first + count, start + BATCH))
                for index in batch:  # one file, one VirtualService, a name never used before
                    write(directory / f"cycle-{index}.yaml", [virtual_service(f"cycle-{index}", 20000 + index % 40000)])
                await watcher.until(kept | {f"cycle-{index}-l" for index in batch})
                for index in batch:
                    (directory / f"cycle-{index}.yaml").unlink()
                await watcher.until(kept)
        finally:
            await watcher.close()


async def final_proxy(port: int, node_id: str = "churn-final") -> tuple[set[str], set[str]]:
    """What a new proxy gets now: (listener names, cluster names)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        node = base_pb2.Node(id=node_id)
        node.metadata.update({"labels": LABELS})
        await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=node))
        await call.write(discovery_pb2.DiscoveryRequest(type_url=LISTENER))
        got: dict[str, set[str]] = {}
        while len(got) < 2:
            response = await asyncio.wait_for(call.read(), TIMEOUT)
            got[response.type_url] = names(response)
        call.cancel()
    return got[LISTENER], got[CLUSTER]


# ---------------------------------------------------------------- the scenario


def measure(stream_count: int, vs_count: int, warmup_streams: int, warmup_vs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="churn-") as temporary:
        directory = Path(temporary) / "virtualservices"
        directory.mkdir()
        kept_names = [f"kept-{index}" for index in range(KEPT)]
        write(directory / "kept.yaml", [virtual_service(name, 10000 + i) for i, name in enumerate(kept_names)])
        kept = {f"{name}-l" for name in kept_names}
        server = Server(directory, Path(temporary) / "xds-operator.log")
        try:
            m = asyncio.run(_measure(server, directory, kept, stream_count, vs_count, warmup_streams, warmup_vs))
        finally:
            server.stop()
    return m


async def _measure(
    server: Server,
    directory: Path,
    kept: set[str],
    stream_count: int,
    vs_count: int,
    warmup_streams: int,
    warmup_vs: int,
) -> dict[str, Any]:
    port = server.xds_port
    idle = counters(server.runtime() or {})
    rss_start = server.rss()
    started = time.monotonic()
    await stream_cycles(port, warmup_streams, first=10_000_000)
    await vs_cycles(port, directory, warmup_vs, kept, first=10_000_000)
    before = server.settled(idle)
    rss_before = server.rss()

    timed = time.monotonic()
    samples = []
    for first in range(0, stream_count, SAMPLE_EVERY):
        await stream_cycles(port, min(SAMPLE_EVERY, stream_count - first), first)
        samples.append(server.rss())
    streams_seconds = time.monotonic() - timed
    timed = time.monotonic()
    await vs_cycles(port, directory, vs_count, kept)
    vs_seconds = time.monotonic() - timed
    after = server.settled(before)
    rss_after = server.rss()

    listeners, clusters = await final_proxy(port)
    final = server.settled(before)
    total_seconds = time.monotonic() - started
    return {
        "stream_cycles": stream_count,
        "vs_cycles": vs_count,
        "warmup_stream_cycles": warmup_streams,
        "warmup_vs_cycles": warmup_vs,
        "streams_seconds": streams_seconds,
        "vs_seconds": vs_seconds,
        "total_seconds": total_seconds,
        "rss_start": rss_start,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "rss_ratio": rss_after / rss_before,
        "rss_samples": samples,
        "before": before,
        "after": after,
        "final": final,
        "final_listeners": sorted(listeners),
        "final_clusters": sorted(clusters),
        "expected_listeners": sorted(kept),
        "expected_clusters": sorted(name[:-2] + "-c" for name in kept),
    }


def own_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def acknowledge(stream: SotwStream, snapshot: Snapshot | None) -> None:
    """ACK every response the stream awaits an answer for, as Envoy does."""
    for type_url, state in stream.types.items():
        if state.awaiting:
            ack = discovery_pb2.DiscoveryRequest(
                type_url=type_url, version_info=state.sent_version or "", response_nonce=state.nonce
            )
            stream.on_request(ack, snapshot)


def edit_retention(count: int, edits: int) -> dict[str, Any]:
    """RSS of this process before and after `edits` edits of one VirtualService among `count`, each pushed."""
    from snapshot_build import LABELS as BUILD_LABELS
    from snapshot_build import virtual_service as numbered

    cache = SnapshotCache()
    for index in range(count):
        cache.upsert(parse_virtual_service(numbered(index)))
    cache.commit()
    watch = cache.watch(BUILD_LABELS, lambda: None)
    stream = SotwStream("churn-edits")
    node = base_pb2.Node(id="churn-edits")
    stream.on_request(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=node), watch.snapshot)
    stream.on_request(discovery_pb2.DiscoveryRequest(type_url=LISTENER), watch.snapshot)
    acknowledge(stream, watch.snapshot)
    gc.collect()
    before = own_rss()
    pushed = 0
    for edit in range(edits):
        cache.upsert(parse_virtual_service(numbered(count // 2, endpoint_port=6000 + edit)))
        cache.commit()
        pushed += len(stream.on_snapshot(watch.snapshot))  # encodes the new CDS response
        acknowledge(stream, watch.snapshot)  # pushes are paced by ACKs: the next edit is sent after this
    gc.collect()
    return {"count": count, "edits": edits, "pushed": pushed, "rss_before": before, "rss_after": own_rss()}


def run(smoke: bool = False) -> list[dict[str, Any]]:
    streams, virtual_services = (300, 30) if smoke else (10_000, 1_000)
    warmup = (CONCURRENCY, BATCH) if smoke else (WARMUP_STREAMS, WARMUP_VS)
    m = measure(streams, virtual_services, *warmup)
    e = edit_retention(*((200, 20) if smoke else (10_000, 300)))
    exact = m["final_listeners"] == m["expected_listeners"] and m["final_clusters"] == m["expected_clusters"]
    leaked = {key: m["after"][key] - m["before"][key] for key in m["before"] if m["after"][key] != m["before"][key]}
    return [
        {
            "scenario": "churn",
            "name": f"{streams:,} ADS stream and {virtual_services:,} VirtualService create/delete cycles",
            "parameters": {
                "stream_cycles": streams,
                "vs_cycles": virtual_services,
                "concurrent_streams": CONCURRENCY,
                "vs_batch": BATCH,
                "warmup": f"{warmup[0]} streams, {warmup[1]} VirtualServices",
            },
            "figures": {
                "streams_per_s": round(streams / m["streams_seconds"]),
                "vs_cycles_per_s": round(virtual_services / m["vs_seconds"]),
                "rss_start_mb": round(m["rss_start"] / 2**20, 1),
                "rss_before_mb": round(m["rss_before"] / 2**20, 1),
                "rss_after_mb": round(m["rss_after"] / 2**20, 1),
                "leaked_counters": len(leaked),
                "final_state_exact": int(exact),
            },
            "ratios": {"rss_after_vs_before": round(m["rss_ratio"], 3)},
            "targets": {"rss_after_vs_before": RSS_RATIO_LIMIT, "leaked_counters": 0},
            "counters": {"before": m["before"], "after": m["after"]},
            "samples": {"rss_mb_every_2000_streams": [round(rss / 2**20, 1) for rss in m["rss_samples"]]},
        },
        {
            "scenario": "churn",
            "name": f"{e['edits']} edits of one VirtualService among {e['count']:,}, each pushed (in process)",
            "parameters": {"virtual_services": e["count"], "edits": e["edits"]},
            "figures": {
                "rss_before_mb": round(e["rss_before"] / 2**20, 1),
                "rss_after_mb": round(e["rss_after"] / 2**20, 1),
                "pushes": e["pushed"],
            },
            "ratios": {"rss_after_vs_before": round(e["rss_after"] / e["rss_before"], 3)},
            "targets": {"rss_after_vs_before": RSS_RATIO_LIMIT},
        },
    ]


def main(argv: list[str]) -> int:
    streams = int(argv[0]) if argv else 10_000
    virtual_services = int(argv[1]) if len(argv) > 1 else 1_000
    m = measure(streams, virtual_services, WARMUP_STREAMS, WARMUP_VS)
    print(
        f"{streams:,} stream cycles in {m['streams_seconds']:.1f} s, {virtual_services:,} VirtualService cycles "
        f"in {m['vs_seconds']:.1f} s (total {m['total_seconds']:.1f} s)\n"
        f"RSS start {m['rss_start'] / 2**20:.1f} MB, before {m['rss_before'] / 2**20:.1f} MB (after warm-up), "
        f"after {m['rss_after'] / 2**20:.1f} MB: ratio {m['rss_ratio']:.3f}\n"
        f"RSS every {SAMPLE_EVERY:,} stream cycles (MB): {[round(rss / 2**20, 1) for rss in m['rss_samples']]}\n"
        f"counters before {m['before']}\n         after  {m['after']}\n"
        f"final proxy: listeners {m['final_listeners']}, clusters {m['final_clusters']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
