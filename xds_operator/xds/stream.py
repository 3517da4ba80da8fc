"""One state-of-the-world ADS stream as a state machine, free of I/O.

The server feeds it DiscoveryRequests and snapshot changes; it answers with the
DiscoveryResponses to send, following Envoy's xDS protocol: per type a version and a
nonce; a request whose nonce is not the latest is stale and ignored; an ACK carries the
latest nonce; a NACK (error_detail) keeps the last good config, is recorded, and the
rejected version is not sent again; unchanged content is never re-sent, including to an
Envoy that reconnects claiming the version it already has.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

from envoy.service.discovery.v3 import discovery_pb2

from .snapshot import CLUSTER, LISTENER, NAMED_TYPES, PUSH_ORDER, SHORT_NAMES, Snapshot

log = logging.getLogger(__name__)


@dataclass
class TypeState:
    """What one resource type of one stream has reached."""

    subscribed: bool = False
    names: frozenset[str] | None = None  # the names asked for; None for wildcard types
    sent_version: str | None = None  # the version the proxy has or is being sent
    nonce: str = ""  # of the latest response
    acked_version: str | None = None
    nacked_version: str | None = None
    error: str | None = None  # Envoy's text for the latest NACK; cleared by an ACK

    @property
    def state(self) -> str:
        if self.sent_version is None:
            return "waiting"
        if self.error is not None and self.nacked_version == self.sent_version:
            return "NACKed"
        if self.acked_version == self.sent_version:
            return "ACKed"
        return "pending"


class ProxyStream:
    """The protocol state of one ADS stream for one proxy."""

    def __init__(self, node_id: str):
        self.node_id = node_id
        self.types: dict[str, TypeState] = {}
        self._nonces = itertools.count(1)

    def on_request(
        self, request: discovery_pb2.DiscoveryRequest, snapshot: Snapshot | None
    ) -> list[discovery_pb2.DiscoveryResponse]:
        type_url = request.type_url
        if type_url not in PUSH_ORDER:
            log.info("proxy %s asked for unsupported type %s; ignored", self.node_id, type_url)
            return []
        state = self.types.setdefault(type_url, TypeState())
        kind = SHORT_NAMES[type_url]
        if not state.subscribed:
            # First request of this type on this stream (any nonce it carries is from an
            # earlier stream): an Envoy that reconnects says which version it already has,
            # and is sent nothing if that is still current.
            state.sent_version = state.acked_version = request.version_info or None
        elif request.response_nonce != state.nonce:
            log.debug(
                "proxy %s: stale %s nonce %r (latest %s) ignored",
                self.node_id,
                kind,
                request.response_nonce,
                state.nonce,
            )
            return []
        elif request.HasField("error_detail"):
            state.nacked_version, state.error = state.sent_version, request.error_detail.message
            # A NACK's version_info is the version the proxy still runs (its ACK may have crossed a push).
            state.acked_version = request.version_info or None
            log.warning(
                "proxy %s NACKed %s version %s (keeps %s): %s",
                self.node_id,
                kind,
                state.sent_version,
                request.version_info or "nothing",
                state.error,
            )
        else:
            state.acked_version, state.error = request.version_info, None
            log.debug("proxy %s ACKed %s version %s", self.node_id, kind, request.version_info)
        state.subscribed = True
        if type_url in NAMED_TYPES:
            state.names = frozenset(request.resource_names)
        # The snapshot may have changed since the last push (the server handles this request
        # before the change notice): answering only this type could send a listener before the
        # cluster it names. Send everything that differs, in push order.
        return self.on_snapshot(snapshot)

    def on_snapshot(self, snapshot: Snapshot | None) -> list[discovery_pb2.DiscoveryResponse]:
        """The proxy's snapshot changed: send what differs, clusters and endpoints before listeners."""
        responses: list[discovery_pb2.DiscoveryResponse] = []
        for type_url in PUSH_ORDER:
            responses.extend(self._respond(type_url, snapshot))
        return responses

    def _respond(self, type_url: str, snapshot: Snapshot | None) -> list[discovery_pb2.DiscoveryResponse]:
        state = self.types.get(type_url)
        if snapshot is None or state is None or not state.subscribed:
            return []
        selection = snapshot.select(type_url, state.names)
        if selection.version == state.sent_version:
            return []  # unchanged, or the version the proxy rejected: never sent twice
        state.sent_version = selection.version
        state.nonce = str(next(self._nonces))
        log.debug(
            "push %s version %s (%d resources) to proxy %s",
            SHORT_NAMES[type_url],
            selection.version,
            len(selection.resources),
            self.node_id,
        )
        return [
            discovery_pb2.DiscoveryResponse(
                version_info=selection.version,
                type_url=type_url,
                nonce=state.nonce,
                resources=[resource.packed for resource in selection.resources],
            )
        ]

    def has_applied(self, snapshot: Snapshot) -> bool:
        """The proxy ACKed, for every type it subscribed to (clusters and listeners at least), this snapshot."""
        subscribed = {type_url: state for type_url, state in self.types.items() if state.subscribed}
        if CLUSTER not in subscribed or LISTENER not in subscribed:
            return False
        return all(
            state.acked_version == snapshot.select(type_url, state.names).version
            for type_url, state in subscribed.items()
        )

    def rejection(self) -> str | None:
        """Envoy's error text for what it rejected and still does not run, if anything."""
        errors = [f"{SHORT_NAMES[t]}: {state.error}" for t, state in self.types.items() if state.state == "NACKed"]
        return "; ".join(errors) or None

    def status(self) -> dict[str, dict[str, str | None]]:
        return {
            SHORT_NAMES[type_url]: {
                "version": state.sent_version,
                "state": state.state,
                "acked_version": state.acked_version,
                "error": state.error,
            }
            for type_url, state in self.types.items()
        }
