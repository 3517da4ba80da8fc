"""Benchmark: cold start — N VirtualServices on disk → the first complete response on an ADS stream.

    .venv/bin/python bench/cold_start.py [N]

N VirtualServices (as in snapshot_build.py; 100 per file) are written to a directory; then
the clock starts, `xds-operator serve --dir` is launched, and a client connects as soon as
the port accepts, asks for clusters and listeners, and stops the clock when both complete
responses (N clusters, N listeners) have arrived. Process start-up and imports are included.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from harness import Ports, serve_command
from snapshot_build import LABELS, virtual_service

from xds_operator.xds.snapshot import CLUSTER, LISTENER

PER_FILE = 100
TIMEOUT = 120.0


def write_directory(directory: Path, count: int) -> None:
    for start in range(0, count, PER_FILE):
        documents = [virtual_service(index) for index in range(start, min(count, start + PER_FILE))]
        (directory / f"vs-{start:06d}.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False))


def wait_for_port(port: int, deadline: float) -> None:
    """Poll with plain TCP connects (gRPC's own reconnect backoff would add up to seconds)."""
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)


async def first_complete_response(port: int, count: int, deadline: float) -> dict[str, int]:
    """Connect as soon as the server accepts; once CDS and LDS each came back with `count` resources, return
    how many each had (an incomplete first response is an error: the figure would time the wrong thing)."""
    options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
    wait_for_port(port, deadline)
    while True:
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
                await asyncio.wait_for(channel.channel_ready(), max(0.1, deadline - time.monotonic()))
                call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
                node = base_pb2.Node(id="cold-start")
                node.metadata.update({"labels": LABELS})
                await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=node))
                await call.write(discovery_pb2.DiscoveryRequest(type_url=LISTENER))
                sizes: dict[str, int] = {}
                while len(sizes) < 2:
                    response = await asyncio.wait_for(call.read(), max(0.1, deadline - time.monotonic()))
                    sizes[response.type_url] = len(response.resources)
                call.cancel()
                if sizes != {CLUSTER: count, LISTENER: count}:  # a real check: `python -O` strips asserts
                    raise RuntimeError(
                        f"cold start: the first responses carried {sizes.get(CLUSTER)} clusters and "
                        f"{sizes.get(LISTENER)} listeners, expected {count} of each"
                    )
                return {"clusters": sizes[CLUSTER], "listeners": sizes[LISTENER]}
        except (grpc.aio.AioRpcError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.01)


def measure(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="xds-cold-start-") as temporary:
        directory = Path(temporary)
        write_directory(directory, count)
        ports = Ports()
        port, admin_port = ports.take(), ports.take()
        command = serve_command(directory, port, admin_port, os.environ.get("COLD_START_LOG_LEVEL", "warning"))
        log = directory / "server.log"
        started = time.monotonic()
        with open(log, "wb") as output:
            server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ})
        try:
            received = asyncio.run(first_complete_response(port, count, started + TIMEOUT))
            seconds = time.monotonic() - started
        except BaseException:
            server.kill()
            print(log.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            server.terminate()
            server.wait(10)
            if os.environ.get("COLD_START_LOG_LEVEL"):
                print(log.read_text()[-3000:], file=sys.stderr)
    return {
        "scenario": "cold start",
        "name": f"{count:,} VirtualServices on disk → first complete response",
        "parameters": {"virtual_services": count, "files": -(-count // PER_FILE)},
        "figures": {"seconds": seconds},
        "first_response": received,  # resources in the first CDS and LDS responses
        "ratios": {"vs_target": seconds / 2.0},
        "targets": {"seconds": 2.0},
    }


def run(smoke: bool = False) -> list[dict[str, Any]]:
    return [measure(100 if smoke else 10_000)]


if __name__ == "__main__":
    result = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
    print(f"{result['name']}: {result['figures']['seconds']:.2f} s")
