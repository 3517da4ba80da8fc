"""The aggregated xDS (ADS) gRPC service on grpc.aio: state-of-the-world and incremental (delta).

Each stream pairs a ProxyStream (the protocol state machine: SotwStream or DeltaStream) with
a Watch on the cache. Both variants run the same handler; only the stream's framing differs.
Requests and snapshot changes are handled in arrival order on the one event loop.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from xds_operator.admin.logs import clip
from xds_operator.admin.views import ProxyView
from xds_operator.api import Key
from xds_operator.net import split_host_port
from xds_operator.xds.cache import SnapshotCache, Watch
from xds_operator.xds.delta import DeltaStream
from xds_operator.xds.snapshot import Snapshot
from xds_operator.xds.stream import ProxyStream, SotwStream, StreamObserver
from xds_operator.xds.transport import DEFAULT_POLICY, ConnectionPolicy, ServerTls

if TYPE_CHECKING:  # hds.py builds on this module
    from xds_operator.xds.hds import HealthDiscoveryService

log = logging.getLogger(__name__)

# Finds a proxy's labels from its node; None while its identity is not known yet.
Identify = Callable[[base_pb2.Node], Mapping[str, str] | None]

MAX_RESPONSES_IN_FLIGHT = 64  # across all streams
MAX_SHOWN_GROUP = 1_000  # characters of a group's name (its labels) in logs and /debug/proxies
# Requests read from one stream and not handled yet. Beyond this the stream is not read, so gRPC's
# flow control holds back a client that sends faster than its requests are handled (or its
# responses are read): memory per stream stays bounded, whatever the client sends.
MAX_QUEUED_REQUESTS = 16
# Streams one connection may have open at once. Envoy opens one ADS stream per connection (two with both
# variants); gRPC refuses (REFUSED_STREAM) streams beyond this, which a client queues until one ends.
MAX_STREAMS_PER_CONNECTION = 100
# New streams gRPC holds for the event loop to pick up: beyond the first number those waiting over 30 s are
# refused, beyond the second every new one (RESOURCE_EXHAUSTED; Envoy reconnects with backoff).
MAX_PENDING_STREAMS, MAX_PENDING_STREAMS_HARD = 1_000, 3_000
SLOT_WAIT_SECONDS = 1.0  # proxies that stop reading must not stall the others for longer
DRAIN_DETAILS = "xds-operator is shutting down; reconnect"


def group_name(labels: Mapping[str, str] | None) -> str:
    """A proxy group's name: its labels as sorted key=value pairs."""
    if labels is None:
        return "(identity unknown)"
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items())) or "(no labels)"


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


class _Signal(enum.Enum):
    """What a stream's handler is told besides its requests."""

    SNAPSHOT_CHANGED = enum.auto()
    CLOSED = enum.auto()
    DRAIN = enum.auto()  # the server is shutting down: end the stream so the proxy reconnects elsewhere


class _Request(Protocol):
    """What the server reads of a request of either variant (DiscoveryRequest, DeltaDiscoveryRequest)."""

    @property
    def node(self) -> base_pb2.Node: ...


Request = TypeVar("Request", bound=_Request)


@dataclass(eq=False)
class Connection:
    """One connected proxy: who it is, its protocol state, and its interest in the cache."""

    node: base_pb2.Node
    stream: ProxyStream[Any]  # either variant
    watch: Watch
    applied: Snapshot | None = None  # the latest snapshot the proxy ACKed in full
    # The VirtualServices its NACK names, for (its error text, its snapshot): looked up once per NACK.
    attributed: tuple[str | None, Snapshot | None, frozenset[Key]] = (None, None, frozenset())


@dataclass(frozen=True)
class ProxyProgress:
    """How far one proxy is: the snapshot it should run, the one it runs, what it rejected."""

    node_id: str
    labels: Mapping[str, str] | None
    current: Snapshot | None
    applied: Snapshot | None
    rejection: str | None
    # The VirtualServices owning a listener or cluster Envoy's NACK names. When not empty, `applied`
    # is `current` if the proxy answered all of it (it runs everything else: Envoy applies the rest).
    rejected: frozenset[Key] = frozenset()


class AggregatedDiscoveryService:
    """The ADS service's two RPCs (registered by _ads_handler) and what the rest of the control plane asks of it."""

    def __init__(
        self,
        cache: SnapshotCache,
        identify: Identify = labels_from_metadata,
        on_progress: Callable[[], None] = lambda: None,
        observer: StreamObserver | None = None,
        health: HealthDiscoveryService | None = None,
    ):
        self._cache = cache
        # Served beside ADS on the same port: the proxies' endpoint health (HDS), shown with each proxy.
        self.health = health
        self._identify = identify
        self._on_progress = on_progress  # called when a proxy connects, leaves, ACKs or NACKs
        self._observer = observer or StreamObserver()  # told of every push, ACK and NACK (metrics)
        self._connections: dict[int, Connection] = {}
        self._inboxes: dict[int, _Inbox[Any]] = {}  # every open stream, identified or not
        self._draining = False
        self._next_stream_id = 0
        self._sending = asyncio.Semaphore(MAX_RESPONSES_IN_FLIGHT)

    def proxies(self) -> list[ProxyView]:
        """Per connected stream: node id, labels, group, and per type version and ACK/NACK state."""
        return [
            {
                "node_id": c.stream.shown,
                "variant": c.stream.variant,
                "labels": c.watch.labels,
                "group": clip(group_name(c.watch.labels), MAX_SHOWN_GROUP),
                "types": c.stream.type_report(),
                "health": self.health.view(c.stream.node_id) if self.health is not None else None,
            }
            for c in self._connections.values()
        ]

    def connections(self) -> list[Connection]:
        """Streams whose proxy has sent its first request, oldest first (a reconnecting proxy may have two)."""
        return list(self._connections.values())

    def counts(self) -> dict[str, int]:
        """Open streams, identified connections, requests read and not handled yet, and the cache's sizes:
        churn must bring them back."""
        return {
            "streams": len(self._inboxes),
            "connections": len(self._connections),
            "queued_requests": sum(inbox.requests for inbox in self._inboxes.values()),
            **self._cache.counts(),
        }

    def drain(self) -> int:
        """Shutting down: end every open stream (and any that opens from now on); return how many."""
        self._draining = True
        for inbox in self._inboxes.values():
            inbox.items.put_nowait(_Signal.DRAIN)
        if self.health is not None:  # health report streams end too (not counted: they are not xDS streams)
            self.health.drain()
        return len(self._inboxes)

    def progress(self) -> list[ProxyProgress]:
        """Per connected proxy, what status needs: the snapshot it should run, the one it runs, its NACK."""
        return [self._progress_of(c) for c in self._connections.values()]

    def _progress_of(self, connection: Connection) -> ProxyProgress:
        stream, snapshot, applied = connection.stream, connection.watch.snapshot, connection.applied
        rejection = stream.rejection()
        if rejection is None:
            return ProxyProgress(stream.node_id, connection.watch.labels, snapshot, applied, None)
        text, seen, rejected = connection.attributed
        if (text, seen) != (rejection, snapshot):
            rejected = self._cache.owners_of(connection.watch.labels, stream.rejected_names())
            connection.attributed = (rejection, snapshot, rejected)
        if rejected and snapshot is not None and stream.has_applied(snapshot, but_rejected=True):
            applied = snapshot
        return ProxyProgress(stream.node_id, connection.watch.labels, snapshot, applied, rejection, rejected)

    def reidentify(self, node_ids: Iterable[str]) -> None:
        """The identity source learned something about these nodes: move their proxies to their labels' group."""
        wanted = set(node_ids)
        if self.health is not None:
            self.health.reidentify(wanted)
        for connection in self._connections.values():
            if connection.node.id in wanted:
                labels = self._identify(connection.node)
                if labels != connection.watch.labels:
                    group = clip(group_name(labels), MAX_SHOWN_GROUP)
                    log.info(
                        "proxy %s labels: %s",
                        connection.stream.shown,
                        group,
                        extra={"node_id": connection.stream.shown, "group": group},
                    )
                    self._cache.relabel(connection.watch, labels)

    async def StreamAggregatedResources(  # noqa: N802 (gRPC name)
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[discovery_pb2.DiscoveryRequest, bytes],
    ) -> AsyncIterator[bytes]:
        """State-of-the-world ADS (responses pre-serialized: see SotwStream)."""
        async for response in self._serve(request_iterator, context, SotwStream):
            yield response

    async def DeltaAggregatedResources(  # noqa: N802 (gRPC name)
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[discovery_pb2.DeltaDiscoveryRequest, bytes],
    ) -> AsyncIterator[bytes]:
        """Incremental (delta) ADS: the same snapshots, framed as per-resource changes (pre-serialized)."""
        async for response in self._serve(request_iterator, context, DeltaStream):
            yield response

    async def _serve(
        self,
        request_iterator: AsyncIterator[Request],
        context: grpc.aio.ServicerContext[Request, bytes],
        make_stream: type[ProxyStream[Request]],
    ) -> AsyncIterator[bytes]:
        """One stream of either variant: requests and snapshot changes, handled in arrival order."""
        inbox: _Inbox[Request] = _Inbox()
        pending_change = False

        def on_change() -> None:
            nonlocal pending_change
            if not pending_change:  # coalesce: the handler reads the latest snapshot anyway
                pending_change = True
                inbox.items.put_nowait(_Signal.SNAPSHOT_CHANGED)

        reader = asyncio.create_task(inbox.read(request_iterator))
        connection: Connection | None = None
        stream_id = self._next_stream_id = self._next_stream_id + 1
        self._inboxes[stream_id] = inbox
        if self._draining:
            inbox.items.put_nowait(_Signal.DRAIN)
        try:
            while True:
                item = await inbox.items.get()
                if item is _Signal.CLOSED:
                    return
                if item is _Signal.DRAIN:
                    # UNAVAILABLE: the status gRPC clients (Envoy too) retry, here on another replica.
                    context.set_code(grpc.StatusCode.UNAVAILABLE)
                    context.set_details(DRAIN_DETAILS)
                    return
                if item is _Signal.SNAPSHOT_CHANGED:
                    pending_change = False
                    responses = (
                        connection.stream.on_snapshot(connection.watch.snapshot, connection.watch.since)
                        if connection
                        else []
                    )
                else:
                    inbox.taken()
                    if connection is None:  # Envoy may send its node only in the first request
                        connection = self._connect(stream_id, item.node, context.peer(), make_stream, on_change)
                        pending_change = False  # the first answer covers the snapshot the watch starts with
                    responses = connection.stream.on_request(item, connection.watch.snapshot, connection.watch.since)
                    self._note_progress(connection)
                for response in responses:
                    # Every response in flight holds a copy in gRPC's buffers: a bound keeps a
                    # push to thousands of proxies from holding them all at once. A proxy that
                    # stops reading holds its slot, so the wait for one is bounded too.
                    slot = await self._send_slot()
                    try:
                        yield response
                    finally:
                        if slot:
                            self._sending.release()
        finally:
            reader.cancel()
            del self._inboxes[stream_id]
            if connection is not None:
                self._cache.cancel(connection.watch)
            gone = self._connections.pop(stream_id, None)
            if gone is not None:
                log.info(
                    "proxy %s disconnected",
                    gone.stream.shown,
                    extra={"node_id": gone.stream.shown, "variant": gone.stream.variant},
                )
                self._on_progress()

    def _connect(
        self,
        stream_id: int,
        node: base_pb2.Node,
        peer: str,
        make_stream: type[ProxyStream[Request]],
        on_change: Callable[[], None],
    ) -> Connection:
        """The stream's first request: its proxy's protocol state, and a watch on its group's snapshot."""
        stream = make_stream(node.id or peer, self._observer)
        watch = self._cache.watch(self._identify(node), on_change)
        connection = self._connections[stream_id] = Connection(node, stream, watch)
        _log_connected(stream, watch)
        return connection

    async def _send_slot(self) -> bool:
        """Take one of the in-flight slots; False if none freed up in time (then send anyway)."""
        try:
            await asyncio.wait_for(self._sending.acquire(), SLOT_WAIT_SECONDS)
        except TimeoutError:
            log.debug("all %d send slots busy for %.1fs; sending anyway", MAX_RESPONSES_IN_FLIGHT, SLOT_WAIT_SECONDS)
            return False
        return True

    def _note_progress(self, connection: Connection) -> None:
        """After a request: remember a snapshot the proxy now runs in full; tell the status side."""
        snapshot = connection.watch.snapshot
        if snapshot is not None and snapshot is not connection.applied and connection.stream.has_applied(snapshot):
            connection.applied = snapshot
        self._on_progress()


def _log_connected(stream: ProxyStream[Any], watch: Watch) -> None:
    group = clip(group_name(watch.labels), MAX_SHOWN_GROUP)  # directory mode: labels are the client's text
    fields = {"node_id": stream.shown, "variant": stream.variant, "group": group}
    variant = f"{stream.variant} ADS"
    if watch.labels is None:
        log.info("proxy %s connected (%s); waiting until its pod is known", stream.shown, variant, extra=fields)
    else:
        log.info("proxy %s connected (%s, labels %s)", stream.shown, variant, group, extra=fields)


class _Inbox(Generic[Request]):
    """One stream's requests and snapshot-change notices, in arrival order, for its handler.

    At most MAX_QUEUED_REQUESTS requests wait here: beyond that the stream is not read, so gRPC's
    flow control holds the client back instead of the server's memory growing with what it sends.
    """

    def __init__(self) -> None:
        self.items: asyncio.Queue[Request | _Signal] = asyncio.Queue()
        self.requests = 0  # read and not yet taken by the handler
        self._room = asyncio.Semaphore(MAX_QUEUED_REQUESTS)

    async def read(self, requests: AsyncIterator[Request]) -> None:
        """Hand the stream's requests to its handler; wait (reading nothing) while the bound is reached."""
        try:
            await self._room.acquire()
            async for request in requests:
                self.requests += 1
                self.items.put_nowait(request)
                await self._room.acquire()
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            self.items.put_nowait(_Signal.CLOSED)

    def taken(self) -> None:
        """The handler took a request: make room for the next one."""
        self.requests -= 1
        self._room.release()


def _bind_failure(address: str) -> str:
    """Why gRPC could not bind address (it logs the reason but does not return it): the OS's answer to a plain bind."""
    host, port = split_host_port(address, allow_port_zero=True)
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as error:
        return error.strerror or str(error)
    return "the port is in use or the address is not this host's"


def _pass_through(response: bytes) -> bytes:
    """Both stream variants hand over serialized responses (serialized once, their size counted as they are made)."""
    return response


def _ads_handler(service: AggregatedDiscoveryService) -> grpc.GenericRpcHandler:
    """The ADS service's two RPCs, with a serializer that passes pre-serialized responses through."""
    return grpc.method_handlers_generic_handler(
        "envoy.service.discovery.v3.AggregatedDiscoveryService",
        {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                service.StreamAggregatedResources,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=_pass_through,
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                service.DeltaAggregatedResources,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=_pass_through,
            ),
        },
    )


async def start_server(
    service: AggregatedDiscoveryService,
    address: str,
    *,
    tls: ServerTls | None = None,
    policy: ConnectionPolicy = DEFAULT_POLICY,
) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server on address (host:port, port 0 picks one); return it and the bound port.

    With tls, only TLS clients are served (and with tls.client_ca only those with a certificate it signed).
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            # gRPC sets SO_REUSEPORT by default: a second server on a taken port would then bind and
            # share it silently. Without it a taken port fails to bind, and `serve` stops.
            ("grpc.so_reuseport", 0),
            # A connection opening (and at once resetting) streams by the thousand must not make the server
            # hold thousands of calls: their memory stayed after the attack (68 → 1,035 MB).
            ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
            # Calls accepted and not yet picked up by the event loop (gRPC's defaults, explicit): beyond
            # them a new stream gets RESOURCE_EXHAUSTED at once and Envoy retries with its backoff. They
            # were raised to 20,000 / 40,000, which let a stream flood hold ~1 GB.
            ("grpc.server.max_pending_requests", MAX_PENDING_STREAMS),
            ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_STREAMS_HARD),
            *policy.grpc_options(),
        ]
    )
    server.add_generic_rpc_handlers((_ads_handler(service),))
    if service.health is not None:
        from xds_operator.xds.hds import hds_handler  # (imported here: hds.py imports this module)

        server.add_generic_rpc_handlers((hds_handler(service.health),))
    try:
        port = server.add_insecure_port(address) if tls is None else server.add_secure_port(address, tls.credentials())
    except RuntimeError:  # how grpcio reports a failed bind (older versions returned port 0)
        port = 0
    if port == 0:
        raise OSError(f"cannot bind the xDS server to {address}: {_bind_failure(address)}")
    await server.start()
    return server, port
