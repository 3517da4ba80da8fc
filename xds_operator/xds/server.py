"""The aggregated xDS (ADS) gRPC service, state-of-the-world, on grpc.aio.

Each stream pairs a ProxyStream (the protocol state machine) with a Watch on the cache.
Requests and snapshot changes are handled in arrival order on the one event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from .cache import SnapshotCache, Watch
from .stream import ProxyStream

log = logging.getLogger(__name__)

# Finds a proxy's labels from its node; None while its identity is not known yet.
Identify = Callable[[base_pb2.Node], Mapping[str, str] | None]

_SNAPSHOT_CHANGED = object()
_CLOSED = object()


def labels_from_metadata(node: base_pb2.Node) -> dict[str, str]:
    """Directory mode: a proxy's labels are its bootstrap's node.metadata.labels."""
    labels = node.metadata.fields.get("labels")
    if labels is None or not labels.HasField("struct_value"):
        return {}
    return {
        key: value.string_value
        for key, value in labels.struct_value.fields.items()
        if value.WhichOneof("kind") == "string_value"
    }


class AggregatedDiscoveryService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, cache: SnapshotCache, identify: Identify = labels_from_metadata):
        self._cache = cache
        self._identify = identify
        self._streams: dict[int, tuple[ProxyStream, Watch]] = {}
        self._next_stream_id = 0

    def proxies(self) -> list[dict]:
        """Per connected stream: node id, labels, and per type version and ACK/NACK state."""
        return [
            {"node_id": stream.node_id, "labels": watch.labels, "types": stream.status()}
            for stream, watch in self._streams.values()
        ]

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        inbox: asyncio.Queue[object] = asyncio.Queue()
        pending_change = False

        def on_change() -> None:
            nonlocal pending_change
            if not pending_change:  # coalesce: the handler reads the latest snapshot anyway
                pending_change = True
                inbox.put_nowait(_SNAPSHOT_CHANGED)

        reader = asyncio.create_task(_read_into(request_iterator, inbox))
        stream: ProxyStream | None = None
        watch: Watch | None = None
        stream_id = self._next_stream_id = self._next_stream_id + 1
        try:
            while True:
                item = await inbox.get()
                if item is _CLOSED:
                    return
                if item is _SNAPSHOT_CHANGED:
                    pending_change = False
                    responses = stream.on_snapshot(watch.snapshot) if stream and watch else []
                else:
                    assert isinstance(item, discovery_pb2.DiscoveryRequest)
                    if stream is None or watch is None:
                        # Envoy may send its node only in the first request.
                        stream = ProxyStream(item.node.id or context.peer())
                        watch = self._cache.watch(self._identify(item.node), on_change)
                        pending_change = False
                        self._streams[stream_id] = (stream, watch)
                        log.info("proxy %s connected (labels %s)", stream.node_id, watch.labels)
                    responses = stream.on_request(item, watch.snapshot)
                for response in responses:
                    yield response
        finally:
            reader.cancel()
            if watch is not None:
                self._cache.cancel(watch)
            if self._streams.pop(stream_id, None) is not None and stream is not None:
                log.info("proxy %s disconnected", stream.node_id)

    async def DeltaAggregatedResources(self, request_iterator, context):  # noqa: N802 (gRPC name)
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "incremental (delta) xDS is not supported yet; use GRPC (state of the world)"
        )


async def _read_into(requests: AsyncIterator[discovery_pb2.DiscoveryRequest], inbox: asyncio.Queue[object]) -> None:
    try:
        async for request in requests:
            inbox.put_nowait(request)
    except (asyncio.CancelledError, grpc.aio.AioRpcError):
        pass
    finally:
        inbox.put_nowait(_CLOSED)


async def start_server(service: AggregatedDiscoveryService, address: str) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server on address (host:port, port 0 picks one); return it and the bound port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ]
    )
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(service, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the xDS server to {address}")
    await server.start()
    return server, port
