"""Envoy's floor for bench/calls.py: the smallest delta ADS server that can feed Envoy the calls.

    .venv/bin/python bench/calls_floor.py --spec SPEC.json --port PORT --events EVENTS.jsonl

Every call's Cluster and Listener are translated (with xds-operator's own translation, so Envoy
gets exactly what the control plane would send) and encoded once at startup, before the clock
of any call starts. Then the process prints `ready` and reads commands on stdin, one a line:
`+N` (call N starts: its cluster, then its listener) and `-N` (call N ends: both removed).
Per change there is no parsing and no cache: a response is the concatenation of pre-encoded
bytes. Pushes are paced by ACKs like a good server: at most one unanswered response per type;
what changes meanwhile is folded and sent when Envoy answers. A new listener is never sent
before its cluster, and a cluster is removed only once its listener's removal went out.

Each ACK or NACK is written to EVENTS as a JSON line {"type", "sent", "answered", "started",
"ended", "error"} (CLOCK_MONOTONIC seconds, comparable with the bench process's time.monotonic()),
so the bench can tell how long Envoy takes from ACKing a listener to answering on it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from calls import call_document
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from xds_operator.api import parse_virtual_service
from xds_operator.translate import translate_virtual_service
from xds_operator.xds.snapshot import length_delimited  # a protobuf field of wire type 2: a repeated entry

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
ADD, REMOVE = True, False


# ---------------------------------------------------------------- encoding, once per call


# DeltaDiscoveryResponse's field numbers
RESOURCES, TYPE_URL, NONCE, REMOVED_RESOURCES = 2, 4, 5, 6


@dataclass(frozen=True)
class Encoded:
    """A call's resources as DeltaDiscoveryResponse fields: `resources` entries and `removed_resources` entries."""

    added: dict[str, bytes]  # type URL → its Resource entry
    removed: dict[str, bytes]  # type URL → its name entry


def encode_call(document: dict) -> Encoded:
    translated = translate_virtual_service(parse_virtual_service(document))
    (cluster,), (listener,) = translated.clusters, translated.listeners
    added, removed = {}, {}
    for type_url, message in ((CDS, cluster), (LDS, listener)):
        packed = any_pb2.Any(type_url=type_url, value=message.SerializeToString())
        resource = discovery_pb2.Resource(name=message.name, version="1", resource=packed)
        added[type_url] = length_delimited(RESOURCES, resource.SerializeToString())
        removed[type_url] = length_delimited(REMOVED_RESOURCES, message.name.encode())
    return Encoded(added, removed)


# ---------------------------------------------------------------- one stream


@dataclass
class TypeState:
    type_url: str
    subscribed: bool = False
    nonce: str | None = None  # of the response Envoy has not answered yet
    sent_at: float = 0.0
    in_flight: dict[int, bool] = field(default_factory=dict)  # what that response carries
    pending: dict[int, bool] = field(default_factory=dict)  # call → ADD or REMOVE, folded


SHARED = -1  # in the pending maps: the one cluster every call shares (any call's encoding of it)


class FloorStream:
    def __init__(self, calls: list[Encoded], live: set[int], events: IO[str], shared: bool = False):
        self.calls = calls
        self.live = live
        self.events = events
        self.shared = shared  # the calls share one cluster: it is sent once and never removed
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.types = {CDS: TypeState(CDS), LDS: TypeState(LDS)}
        self.nonces = itertools.count(1)

    def change(self, call: int, action: bool) -> None:
        for state in self.types.values():
            if not (self.shared and state.type_url == CDS):
                state.pending[call] = action
        self.flush()

    def cluster_of(self, call: int) -> int:
        return SHARED if self.shared else call

    def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        state = self.types.get(request.type_url)
        if state is None:
            return  # nothing but clusters and listeners here
        if not request.response_nonce:  # the type's first request (wildcard): everything live
            state.subscribed = True
            shared_cluster = self.shared and state.type_url == CDS
            state.pending = {SHARED: ADD} if shared_cluster else dict.fromkeys(self.live, ADD)
        elif request.response_nonce == state.nonce:
            self.answered(state, request.error_detail.message if request.HasField("error_detail") else None)
        else:
            return  # a stale nonce: ignored, as the protocol says
        self.flush()

    def answered(self, state: TypeState, error: str | None) -> None:
        event = {
            "type": "LDS" if state.type_url == LDS else "CDS",
            "sent": state.sent_at,
            "answered": time.monotonic(),
            "started": [call for call, action in state.in_flight.items() if action is ADD],
            "ended": [call for call, action in state.in_flight.items() if action is REMOVE],
            "error": error,
        }
        self.events.write(json.dumps(event) + "\n")
        state.nonce, state.in_flight = None, {}

    def flush(self) -> None:
        """Send CDS, then LDS, each if it is not waiting for an answer and has something sendable."""
        for type_url in (CDS, LDS, CDS):  # the second CDS: removals the LDS response just unblocked
            self.send(self.types[type_url])

    def blocked(self, state: TypeState, call: int, action: bool) -> bool:
        if state.type_url == LDS and action is ADD:
            return self.types[CDS].pending.get(self.cluster_of(call)) is ADD  # its cluster is not sent yet
        if state.type_url == CDS and action is REMOVE:
            return self.types[LDS].pending.get(call) is REMOVE  # its listener is not removed yet
        return False

    def send(self, state: TypeState) -> None:
        if not state.subscribed or state.nonce is not None or not state.pending:
            return
        ready = {call: action for call, action in state.pending.items() if not self.blocked(state, call, action)}
        if not ready:
            return
        for call in ready:
            del state.pending[call]
        nonce = str(next(self.nonces))
        parts = [length_delimited(TYPE_URL, state.type_url.encode()), length_delimited(NONCE, nonce.encode())]
        for call, action in ready.items():
            encoded = self.calls[call].added if action is ADD else self.calls[call].removed
            parts.append(encoded[state.type_url])
        state.nonce, state.sent_at, state.in_flight = nonce, time.monotonic(), ready
        self.outbox.put_nowait(b"".join(parts))


# ---------------------------------------------------------------- the server


class Floor:
    def __init__(self, calls: list[Encoded], live: set[int], events: IO[str], shared: bool = False):
        self.calls = calls
        self.live = live
        self.shared = shared
        self.events = events
        self.streams: set[FloorStream] = set()

    def command(self, line: str) -> None:
        call = int(line[1:])
        action = ADD if line[0] == "+" else REMOVE
        (self.live.add if action is ADD else self.live.discard)(call)
        for stream in self.streams:
            stream.change(call, action)

    async def delta(
        self, requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest], context
    ) -> AsyncIterator[bytes]:
        stream = FloorStream(self.calls, self.live, self.events, self.shared)
        self.streams.add(stream)

        async def read() -> None:
            async for request in requests:
                stream.on_request(request)

        reader = asyncio.create_task(read())
        try:
            while not reader.done():
                sending = asyncio.create_task(stream.outbox.get())
                await asyncio.wait({sending, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not sending.done():
                    sending.cancel()
                    break
                yield sending.result()
        finally:
            self.streams.discard(stream)
            reader.cancel()


async def serve(floor: Floor, port: int) -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "envoy.service.discovery.v3.AggregatedDiscoveryService",
        {
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                floor.delta,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=lambda response: response,  # already encoded
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await read_commands(floor)
    await server.stop(grace=None)


async def read_commands(floor: Floor) -> None:
    """Apply stdin's commands as they come; end when stdin closes."""
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        floor.command(line.decode().strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The smallest delta ADS server, fed call changes on stdin.")
    parser.add_argument("--spec", type=Path, required=True, help='{"worker": [host, port], "ports": [...], "live": N}')
    parser.add_argument("--port", type=int, required=True, help="the gRPC port on 127.0.0.1")
    parser.add_argument("--events", type=Path, required=True, help="where ACKs and NACKs are written (JSON lines)")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    host, worker_port = spec["worker"]
    shared = spec.get("shared", False)
    calls = [
        encode_call(call_document(index, port, host, worker_port, shared)) for index, port in enumerate(spec["ports"])
    ]
    with open(args.events, "w", buffering=1) as events:
        asyncio.run(serve(Floor(calls, set(range(spec["live"])), events, shared), args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
