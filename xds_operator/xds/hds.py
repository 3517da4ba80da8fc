"""The Health Discovery Service (`envoy.service.health.v3.HealthDiscoveryService/StreamHealthCheck`), served on
the ADS server's port: each proxy is asked to check the endpoints of the health-checked clusters it is sent,
and reports their health (the protocol state is xds/health.py).

A stream's proxy is found from the node of its first message, like an ADS stream's, and watches its
group's snapshot in the cache. Requests are taken raw: a report identical to the previous one is never
decoded. What the streams learned is read by /debug/proxies, `xds-operator status`, the metrics and, in
Kubernetes mode, the status reconciler (`on_health` names the clusters whose health changed).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.health.v3 import hds_pb2
from google.protobuf.message import DecodeError

from xds_operator.admin.logs import clip
from xds_operator.admin.views import HealthView
from xds_operator.xds.cache import SnapshotCache, Watch
from xds_operator.xds.health import MAX_REPORT_BYTES, HealthStream
from xds_operator.xds.server import Identify, labels_from_metadata
from xds_operator.xds.stream import MAX_SHOWN_NODE_ID

log = logging.getLogger(__name__)

SERVICE = "envoy.service.health.v3.HealthDiscoveryService"
MAX_QUEUED_REPORTS = 4  # read and not handled yet: beyond, gRPC's flow control holds the client back


class _Signal(enum.Enum):
    SNAPSHOT_CHANGED = enum.auto()
    CLOSED = enum.auto()
    DRAIN = enum.auto()


@dataclass(eq=False)
class HealthConnection:
    node: base_pb2.Node
    node_id: str  # the whole id (its identity), as ADS connections are matched
    stream: HealthStream
    watch: Watch


class HealthDiscoveryService:
    """Every open HDS stream, and what their proxies reported."""

    def __init__(
        self,
        cache: SnapshotCache,
        identify: Identify = labels_from_metadata,
        on_health: Callable[[set[str]], None] = lambda clusters: None,
        limited: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self._cache = cache
        self._identify = identify
        self._on_health = on_health  # clusters whose health (on some proxy) changed
        self._limited = limited  # a client hit a bound (metrics)
        self._connections: dict[int, HealthConnection] = {}
        self._checkers: dict[str, set[int]] = {}  # cluster name → the streams asked to check it
        self._by_node: dict[str, list[int]] = {}  # node id → its open streams, oldest first
        self._queues: dict[int, asyncio.Queue[bytes | _Signal]] = {}
        self._next_id = 0
        self._draining = False

    # -- what the rest of the control plane reads ----------------------------------------------------------

    def view(self, node_id: str) -> HealthView | None:
        """The newest HDS stream of this node, if it has one."""
        streams = self._by_node.get(node_id)
        return self._connections[streams[-1]].stream.view() if streams else None

    def cluster_counts(self, cluster: str) -> list[tuple[str, tuple[int, int]]]:
        """Per reporting proxy (newest stream per node): (passing, checked) endpoints of this cluster."""
        streams = sorted(self._checkers.get(cluster, ()))  # stream ids grow: the newest per node last
        newest = {c.node_id: c for c in (self._connections[i] for i in streams if i in self._connections)}
        counted = []
        for connection in newest.values():
            counts = connection.stream.counts(cluster)
            if counts is not None:
                counted.append((connection.stream.node_id, counts))
        return counted

    def failing_on(self, cluster: str, node_id: str) -> list[str]:
        """The failing endpoints of a cluster on one proxy (node id as shown), as `ip:port` (check port)."""
        for stream_id in sorted(self._checkers.get(cluster, ()), reverse=True):  # the newest stream first
            connection = self._connections[stream_id]
            if connection.stream.node_id == node_id:
                return [
                    f"{e['endpoint']}"
                    + (f" (health check port {e['health_check_port']})" if e["health_check_port"] else "")
                    for e in connection.stream.failing(cluster)
                ]
        return []

    def unhealthy_endpoints(self) -> int:
        """Endpoints counted as failing, summed over proxies (the metric)."""
        return sum(c.stream.failing_count() for c in self._connections.values())

    def reidentify(self, node_ids: Iterable[str]) -> None:
        """The identity source learned something about these nodes: move their watches to their labels' group."""
        wanted = set(node_ids)
        for connection in self._connections.values():
            if connection.node_id in wanted:
                labels = self._identify(connection.node)
                if labels != connection.watch.labels:
                    self._cache.relabel(connection.watch, labels)

    def drain(self) -> int:
        self._draining = True
        for queue in self._queues.values():
            queue.put_nowait(_Signal.DRAIN)
        return len(self._queues)

    # -- the RPC -------------------------------------------------------------------------------------------

    async def StreamHealthCheck(  # noqa: N802 (gRPC name)
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes | _Signal] = asyncio.Queue()
        room = asyncio.Semaphore(MAX_QUEUED_REPORTS)
        pending_change = False

        def on_change() -> None:
            nonlocal pending_change
            if not pending_change:
                pending_change = True
                queue.put_nowait(_Signal.SNAPSHOT_CHANGED)

        async def read() -> None:
            try:
                await room.acquire()
                async for raw in request_iterator:
                    queue.put_nowait(raw)
                    await room.acquire()
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                pass
            finally:
                queue.put_nowait(_Signal.CLOSED)

        stream_id = self._next_id = self._next_id + 1
        self._queues[stream_id] = queue
        if self._draining:
            queue.put_nowait(_Signal.DRAIN)
        reader = asyncio.create_task(read())
        connection: HealthConnection | None = None
        try:
            while True:
                item = await queue.get()
                if item is _Signal.CLOSED:
                    return
                if item is _Signal.DRAIN:
                    context.set_code(grpc.StatusCode.UNAVAILABLE)
                    context.set_details("xds-operator is shutting down; reconnect")
                    return
                specifier = None
                if item is _Signal.SNAPSHOT_CHANGED:
                    pending_change = False
                    if connection is not None:
                        specifier = self.snapshot_changed(stream_id)
                else:
                    room.release()
                    if connection is None:
                        connection = self._connect(stream_id, item, context, on_change)
                        if connection is None:
                            return
                        pending_change = False  # the first specifier covers the snapshot the watch starts with
                        specifier = self.snapshot_changed(stream_id)
                    else:
                        self.reported(stream_id, item)
                if specifier is not None:
                    yield specifier
        finally:
            reader.cancel()
            del self._queues[stream_id]
            self.close(stream_id)

    # -- one stream's events, free of I/O (the RPC above calls them; so does bench/hds.py) ------------------

    def open(self, stream_id: int, node: base_pb2.Node, on_change: Callable[[], None]) -> HealthConnection:
        """A stream's proxy introduced itself: its state, and a watch on its group's snapshot."""
        node_id = node.id
        stream = HealthStream(clip(node_id, MAX_SHOWN_NODE_ID), self._limited)
        watch = self._cache.watch(self._identify(node), on_change)
        connection = self._connections[stream_id] = HealthConnection(node, node_id, stream, watch)
        self._by_node.setdefault(node_id, []).append(stream_id)
        return connection

    def snapshot_changed(self, stream_id: int) -> bytes | None:
        """The stream's snapshot changed: the specifier to send, if it differs from the last one."""
        connection = self._connections[stream_id]
        specifier, changed = connection.stream.on_snapshot(connection.watch.snapshot)
        if changed:
            self._index(stream_id, connection.stream.targets, changed)
            self._on_health(changed)
        return specifier

    def reported(self, stream_id: int, raw: bytes) -> None:
        """A report arrived on the stream (as received)."""
        changed = self._connections[stream_id].stream.on_report(raw)
        if changed:
            self._on_health(changed)

    def close(self, stream_id: int) -> None:
        """The stream ended: its proxy's reports no longer count."""
        gone = self._connections.pop(stream_id, None)
        if gone is not None:
            streams = self._by_node[gone.node_id]
            streams.remove(stream_id)
            if not streams:
                del self._by_node[gone.node_id]
            self._cache.cancel(gone.watch)
            self._index(stream_id, {}, set(gone.stream.targets))
            if gone.stream.health:
                self._on_health(set(gone.stream.health))

    def _index(self, stream_id: int, targets: Mapping[str, object], names: Iterable[str]) -> None:
        """Keep `_checkers` up to date for these clusters of one stream."""
        for name in names:
            if name in targets:
                self._checkers.setdefault(name, set()).add(stream_id)
            else:
                checkers = self._checkers.get(name)
                if checkers is not None:
                    checkers.discard(stream_id)
                    if not checkers:
                        del self._checkers[name]

    def _connect(
        self, stream_id: int, raw: bytes, context: grpc.aio.ServicerContext[bytes, bytes], on_change: Callable[[], None]
    ) -> HealthConnection | None:
        """The stream's first message: a HealthCheckRequest naming its node."""
        try:
            first = hds_pb2.HealthCheckRequestOrEndpointHealthResponse.FromString(raw[:MAX_REPORT_BYTES])
        except DecodeError:
            first = hds_pb2.HealthCheckRequestOrEndpointHealthResponse()
        if not first.HasField("health_check_request") or len(raw) > MAX_REPORT_BYTES:
            self._limited("health_bad_report")
            context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            context.set_details("the first message must be a HealthCheckRequest with the proxy's node")
            return None
        node = first.health_check_request.node
        if not node.id:
            node.id = context.peer()
        connection = self.open(stream_id, node, on_change)
        shown = connection.stream.node_id
        log.debug("proxy %s opened a health report stream", shown, extra={"node_id": shown})
        return connection


def hds_handler(service: HealthDiscoveryService) -> grpc.GenericRpcHandler:
    """StreamHealthCheck with raw requests (decoded by the stream, only when they changed) and pre-encoded responses."""
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "StreamHealthCheck": grpc.stream_stream_rpc_method_handler(
                service.StreamHealthCheck,
                request_deserializer=_raw,
                response_serializer=_raw,
            )
        },
    )


def _raw(data: bytes) -> bytes:
    return data
