"""Load generator for bench/fanout.py: N Envoy-like state-of-the-world ADS streams in one process.

    python bench/loadgen.py --target HOST:PORT --proxies N --groups G --edit-from STAGED --edit-to FILE

Each stream behaves like Envoy: its first requests are CDS then LDS (wildcard), the node (id
and metadata labels {app: ingress, zone: z<i % G>}) goes on the first request only, and every
response is ACKed with its version_info and nonce. Resources are never parsed: responses are
decoded with a message type that declares only version_info, type_url and nonce.
Streams open at most --connecting (500) at a time until they have synced: a burst of thousands
of new streams at a busy Python server overflows gRPC core's queue of calls the application has
not accepted yet, and it cancels some of them at random.

Protocol with the parent, JSON lines on stdout:
  {"event": "synced", ...}   every stream ACKed its first CDS and LDS; then it waits for a line on stdin
  (stdin "edit")             os.replace(STAGED, FILE), t0 = time.monotonic() just before it
  {"event": "done", ...}     every stream ACKed a new version of each --expect type; latencies from t0
  {"event": "error", ...}    a stream failed or a wait timed out (exit status 1)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import threading
import time

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

TYPE_PREFIX = "type.googleapis.com/"
TYPES = {
    "CDS": TYPE_PREFIX + "envoy.config.cluster.v3.Cluster",
    "LDS": TYPE_PREFIX + "envoy.config.listener.v3.Listener",
}
METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
MAX_MESSAGE = 64 * 1024 * 1024  # an initial CDS of 1,000 clusters is ~0.5 MB; gRPC's default limit is 4 MB


def _thin_response_class() -> type:
    """A message with only DiscoveryResponse's version_info (1), type_url (4) and nonce (5).

    Parsing it skips the resources (field 2) without decoding them: about half the cost of a
    full DiscoveryResponse, and nothing per resource in Python.
    """
    file = descriptor_pb2.FileDescriptorProto(name="bench_thin_response.proto", package="bench", syntax="proto3")
    message = file.message_type.add(name="ThinDiscoveryResponse")
    for name, number in (("version_info", 1), ("type_url", 4), ("nonce", 5)):
        message.field.add(
            name=name,
            number=number,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.ThinDiscoveryResponse"))


ThinResponse = _thin_response_class()


def cpu_seconds() -> float:
    """This process's CPU time so far (all threads, including gRPC's)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Fleet:
    """What all streams have reached: counts and the events the main task waits on."""

    def __init__(self, count: int, expect: tuple[str, ...], connecting: int):
        self.count = count
        # Streams opened but not yet synced, at most: gRPC core cancels new calls at random while more
        # than 1,000 wait for the server application to accept them (grpc.server.max_pending_requests),
        # which a burst of thousands of streams at a busy Python server reaches.
        self.connecting = asyncio.Semaphore(connecting)
        self.expect = expect
        self.synced = 0
        self.all_synced = asyncio.Event()
        self.armed = False  # set just before the edit: from then on, streams look for new versions
        self.updated = 0
        self.all_updated = asyncio.Event()
        self.t0 = 0.0
        self.failure: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def fail(self, message: str) -> None:
        if not self.failure.done():
            self.failure.set_result(message)


class Proxy:
    """One ADS stream acting as one Envoy."""

    def __init__(self, index: int, groups: int, fleet: Fleet):
        self.index = index
        self.fleet = fleet
        self.node = base_pb2.Node(id=f"proxy-{index}", cluster="bench")
        self.node.metadata.update({"labels": {"app": "ingress", "zone": f"z{index % groups}"}})
        self.acked: dict[str, str] = {}  # type URL → version ACKed
        self.baseline: dict[str, str] = {}  # the versions held when the edit was made
        self.synced = False
        self.latency: float | None = None  # seconds from t0 until every expected type was ACKed anew
        self.call: grpc.aio.StreamStreamCall | None = None
        self.holds_slot = False

    async def run(self, open_stream: grpc.aio.StreamStreamMultiCallable) -> None:
        """Open the stream once a connecting slot is free; hold the slot until the first CDS and LDS are ACKed."""
        fleet = self.fleet
        await fleet.connecting.acquire()
        self.holds_slot = True
        try:
            self.call = call = open_stream()
            for position, type_name in enumerate(("CDS", "LDS")):
                request = discovery_pb2.DiscoveryRequest(type_url=TYPES[type_name])
                if position == 0:  # Envoy sends its node on the first request of a stream only
                    request.node.CopyFrom(self.node)
                await call.write(request)
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    fleet.fail(f"proxy-{self.index}: the server ended the stream")
                    return
                await call.write(
                    discovery_pb2.DiscoveryRequest(
                        type_url=response.type_url, version_info=response.version_info, response_nonce=response.nonce
                    )
                )
                self._acked(response.type_url, response.version_info, time.monotonic())
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as error:
            fleet.fail(f"proxy-{self.index}: {error.code().name}: {error.details()}")
        except Exception as error:  # noqa: BLE001 (reported to the parent, which fails the run)
            fleet.fail(f"proxy-{self.index}: {type(error).__name__}: {error}")
        finally:
            self._release_slot()

    def _release_slot(self) -> None:
        if self.holds_slot:
            self.holds_slot = False
            self.fleet.connecting.release()

    def _acked(self, type_url: str, version: str, now: float) -> None:
        self.acked[type_url] = version
        fleet = self.fleet
        if not self.synced and all(TYPES[name] in self.acked for name in ("CDS", "LDS")):
            self.synced = True
            self._release_slot()
            fleet.synced += 1
            if fleet.synced == fleet.count:
                fleet.all_synced.set()
        if (
            fleet.armed
            and self.latency is None
            and all(self.acked.get(TYPES[name]) != self.baseline.get(TYPES[name]) for name in fleet.expect)
        ):
            self.latency = now - fleet.t0
            fleet.updated += 1
            if fleet.updated == fleet.count:
                fleet.all_updated.set()


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def wait_for(event: asyncio.Event, fleet: Fleet, timeout: float, what: str) -> None:
    """Until `event`, a stream failure (raised) or the timeout (raised)."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter, fleet.failure}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if fleet.failure.done():
        raise RuntimeError(fleet.failure.result())
    if waiter not in done:
        raise TimeoutError(f"{what}: not reached within {timeout:.0f} s")


async def read_line() -> str:
    """One line from stdin, read in a daemon thread (an executor thread would keep a timed-out run alive)."""
    loop = asyncio.get_running_loop()
    line: asyncio.Future[str] = loop.create_future()

    def read() -> None:
        text = sys.stdin.readline()
        with contextlib.suppress(RuntimeError):  # the loop is closed already: nobody waits any more
            loop.call_soon_threadsafe(lambda: line.done() or line.set_result(text))

    threading.Thread(target=read, daemon=True).start()
    return await line


async def main(args: argparse.Namespace) -> None:
    fleet = Fleet(args.proxies, tuple(args.expect), args.connecting)
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.use_local_subchannel_pool", 1),  # otherwise equal channels share one HTTP/2 connection
    ]
    channel_count = -(-args.proxies // args.per_channel)
    channels = [grpc.aio.insecure_channel(args.target, options=options) for _ in range(channel_count)]
    proxies = [Proxy(index, args.groups, fleet) for index in range(args.proxies)]
    tasks: list[asyncio.Task] = []
    try:
        started, cpu_started = time.monotonic(), cpu_seconds()
        for proxy in proxies:
            open_stream = channels[proxy.index // args.per_channel].stream_stream(
                METHOD,
                request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                response_deserializer=ThinResponse.FromString,
            )
            tasks.append(asyncio.create_task(proxy.run(open_stream)))
        await wait_for(fleet.all_synced, fleet, args.sync_timeout, f"initial sync ({fleet.synced} streams synced)")
        emit(
            "synced",
            streams=fleet.synced,
            channels=channel_count,
            initial_sync_seconds=time.monotonic() - started,
            cpu_seconds=cpu_seconds() - cpu_started,
        )

        line = await asyncio.wait_for(read_line(), args.push_timeout)
        if line.strip() != "edit":
            raise RuntimeError(f"expected 'edit' on stdin, got {line!r}")
        for proxy in proxies:
            proxy.baseline = dict(proxy.acked)
        fleet.armed = True
        cpu_started = cpu_seconds()
        fleet.t0 = time.monotonic()
        os.replace(args.edit_from, args.edit_to)
        await wait_for(fleet.all_updated, fleet, args.push_timeout, f"push ({fleet.updated} streams updated)")
        emit(
            "done",
            streams=fleet.updated,
            latencies=[proxy.latency for proxy in proxies],
            cpu_seconds=cpu_seconds() - cpu_started,
        )
    finally:
        for proxy in proxies:
            if proxy.call is not None:
                proxy.call.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.wait_for(asyncio.gather(*(c.close(None) for c in channels), return_exceptions=True), 5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="the control plane's xDS address, HOST:PORT")
    parser.add_argument("--proxies", type=int, required=True, help="how many streams (one proxy each)")
    parser.add_argument("--groups", type=int, required=True, help="proxy i gets zone z<i %% groups>")
    parser.add_argument("--per-channel", type=int, default=100, help="streams per channel (HTTP/2 connection)")
    parser.add_argument(
        "--connecting", type=int, default=500, help="streams opened but not yet synced, at most (default: 500)"
    )
    parser.add_argument("--edit-from", required=True, help="the edited file, staged on the same file system")
    parser.add_argument("--edit-to", required=True, help="the served file it replaces")
    parser.add_argument(
        "--expect", nargs="+", choices=sorted(TYPES), default=["LDS"], help="types the edit changes (default: LDS)"
    )
    parser.add_argument("--sync-timeout", type=float, default=300.0, help="seconds for the initial sync")
    parser.add_argument("--push-timeout", type=float, default=120.0, help="seconds for the edit to reach every stream")
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        asyncio.run(main(parse_args()))
    except Exception as error:  # noqa: BLE001 (any failure: tell the parent why)
        emit("error", message=f"{type(error).__name__}: {error}")
        sys.exit(1)
