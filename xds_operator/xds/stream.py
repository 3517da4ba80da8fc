"""One ADS stream as a state machine, free of I/O: what a proxy needs now, and how far it is.

The server feeds a stream the proxy's requests and its snapshot changes; the stream answers
with the responses to send, following Envoy's xDS protocol: per type a nonce; an ACK
carries the latest nonce; a NACK (error_detail) keeps the last good config, is recorded, and
the rejected content is not sent again; unchanged content is never re-sent, including to an
Envoy that reconnects already holding it; clusters and endpoints go before listeners.

`ProxyStream` holds what both protocol variants share: the subscriptions, what the proxy
wants from a snapshot (`wanted`), ACK/NACK bookkeeping and push order. `SotwStream` frames
that as state-of-the-world responses; `DeltaStream` (delta.py) as incremental ones.
"""

from __future__ import annotations

import itertools
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from envoy.service.discovery.v3 import discovery_pb2

from xds_operator.admin.logs import clip, shorten
from xds_operator.admin.views import StreamState, TypeStatus
from xds_operator.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    NAMED_TYPES,
    PUSH_ORDER,
    SHORT_NAMES,
    Resource,
    Selection,
    Snapshot,
    version_of,
)

log = logging.getLogger(__name__)

# What a client controls is cut before it is logged, shown or kept (see README, "What one xDS client can cost").
MAX_SHOWN_NODE_ID = 320  # characters: longer than any Kubernetes namespace/pod-name
MAX_SHOWN_TYPE_URL = 200
MAX_LOGGED_ERROR = 1_000  # a NACK's text in the log
MAX_KEPT_ERROR = 8_192  # a NACK's text kept for /debug/proxies and status
MAX_REPORTED_TYPES = 8  # distinct unsupported types logged per stream
# Named subscriptions (EDS): a proxy can only use the names of clusters it was sent. A stream keeps at most
# the number of such resources in its snapshot plus this margin (clusters it still holds from an earlier
# snapshot), and no name longer than a cluster name can be: a declared one (200 characters), or a UDP
# listener's private copy, <cluster>@<listener> (translate.envoy_cluster_name).
NAME_MARGIN = 1_024
MAX_NAME_LENGTH = 200 + 1 + 200

# What may be a listener or cluster name in Envoy's error text (names match this pattern: see api; "@"
# joins a private cluster copy's two names, so it is blamed alone and not the cluster it copies).
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._@-]*[A-Za-z0-9])?")
# How much of a NACK's text is searched for names: Envoy lists the rejected resources first.
NAMES_SEARCHED = 64 * 1024
NOTHING = version_of(())  # the version of an empty selection
# The kind of claim (see cache.Translated.claims) a type's resources are named by.
CLAIM_KIND = {LISTENER: "listener", CLUSTER: "cluster", ENDPOINT: "cluster"}
# The request message of a protocol variant: DiscoveryRequest (state of the world) or DeltaDiscoveryRequest.
Request = TypeVar("Request")


@dataclass
class TypeState:
    """What one resource type of one stream has reached."""

    subscribed: bool = False
    names: frozenset[str] | None = None  # the names asked for; None for wildcard types
    sent_version: str | None = None  # the version of what the proxy has or is being sent
    nonce: str = ""  # of the latest response
    acked_version: str | None = None
    nacked_version: str | None = None
    error: str | None = None  # Envoy's text for the latest NACK; cleared by an ACK
    known: dict[str, str] = field(default_factory=dict)  # delta only: resource name → version the proxy has
    # Delta only: the snapshot whose resources of this type `known` equals (with `names` unchanged since),
    # so the next response needs to look only at what changed since it; None: compare in full.
    basis: Snapshot | None = None
    awaiting: bool = False  # a response was sent and the proxy has not answered it (ACK or NACK) yet
    pushed_since: float | None = None  # when the snapshot of the response awaiting an answer reached the proxy
    # The selection `names` give of a snapshot, kept here rather than in the snapshot: a client's name
    # sets must not outlive its stream (or its next request).
    selection: tuple[Snapshot, frozenset[str] | None, Selection] | None = None

    @property
    def state(self) -> StreamState:
        if self.sent_version is None:
            return "waiting"
        if self.error is not None and self.nacked_version == self.sent_version:
            return "NACKed"
        if self.acked_version == self.sent_version:
            return "ACKed"
        return "pending"


class StreamObserver:
    """What a stream reports as it goes, for metrics: every push, ACK and NACK. The default ignores them."""

    def pushed(self, stream: ProxyStream[Any], type_url: str, size: int) -> None:
        pass

    def acked(self, stream: ProxyStream[Any], type_url: str, since: float) -> None:
        """An ACK of a pushed version; `since`: the monotonic time its snapshot reached the proxy's watch."""

    def nacked(self, stream: ProxyStream[Any], type_url: str) -> None:
        pass

    def limited(self, stream: ProxyStream[Any], limit: str) -> None:
        """A client hit one of the limits on what it may send (`limit`: which, e.g. "resource_names")."""


class ProxyStream(ABC, Generic[Request]):
    """The protocol state of one ADS stream for one proxy (shared by both variants)."""

    variant = ""

    def __init__(self, node_id: str, observer: StreamObserver | None = None):
        self.node_id = node_id  # as the proxy sent it: its identity
        self.shown = clip(node_id, MAX_SHOWN_NODE_ID)  # as logged and shown
        self.types: dict[str, TypeState] = {}
        self.observer = observer or StreamObserver()
        self._nonces = itertools.count(1)
        self._unsupported: set[str] = set()  # unsupported types already logged (at most MAX_REPORTED_TYPES)
        self._reported_limits: set[str] = set()  # limits already logged: once per stream each
        if len(node_id) > MAX_SHOWN_NODE_ID:
            self.limit_hit("node_id", f"its node id has {len(node_id)} characters; logged and shown cut")

    @abstractmethod
    def on_request(self, request: Request, snapshot: Snapshot | None, since: float | None = None) -> list[bytes]:
        """Handle a request of the proxy's (`snapshot`: its current one); return the serialized responses to send."""

    def on_snapshot(self, snapshot: Snapshot | None, since: float | None = None) -> list[bytes]:
        """The proxy's snapshot changed (at monotonic time `since`): send what differs, clusters and
        endpoints before listeners. Responses are serialized: their size is known without a second pass.

        Paced by the proxy: at most one unanswered response per type. A type whose previous response
        is still unanswered waits, and the changes meanwhile fold into the one response sent when the
        proxy answers (go-control-plane and Istio pace the same way). While an earlier type in push
        order waits with newer content, the later ones wait too: a listener must not reach the proxy
        before the cluster it names.
        """
        if snapshot is None:
            return []  # identity unknown (or gone): the proxy keeps what it has
        responses = []
        pushed: list[tuple[str, str, str]] = []  # (type, version, what changed): one log line per push
        held = False
        for type_url in PUSH_ORDER:
            state = self.types.get(type_url)
            if state is None or not state.subscribed:
                continue
            wanted = self.wanted(type_url, snapshot)
            if state.awaiting or held:
                held = held or wanted.version != state.sent_version
                continue
            push = self._respond(type_url, state, wanted, snapshot)
            if push is not None:
                response, detail = push
                responses.append(response)
                if self._taken_unanswered(type_url, state):
                    state.acked_version = state.sent_version
                else:
                    state.awaiting = True
                    state.pushed_since = since
                self.observer.pushed(self, type_url, len(response))
                pushed.append((SHORT_NAMES[type_url], state.sent_version or "", detail))
        if pushed and log.isEnabledFor(logging.INFO):
            text = ", ".join(f"{kind} {version} ({detail})" for kind, version, detail in pushed)
            versions = {kind: version for kind, version, _ in pushed}
            log.info("push to proxy %s: %s", self.shown, text, extra={"node_id": self.shown, "versions": versions})
        return responses

    def wanted(self, type_url: str, snapshot: Snapshot) -> Selection:
        """What the proxy should hold of a type now: every resource, or the ones it named."""
        state = self.types[type_url]
        cached = state.selection
        if cached is not None and cached[0] is snapshot and cached[1] is state.names:
            return cached[2]
        selection = snapshot.select(type_url, state.names)
        state.selection = (snapshot, state.names, selection)
        return selection

    def bound_names(self, type_url: str, names: Iterable[str], snapshot: Snapshot | None) -> frozenset[str]:
        """The names (of a named type) a stream keeps: at most those of the type's resources in its
        snapshot plus NAME_MARGIN, names of existing resources first, none longer than a resource name can be.

        Costs the names given, once; what is kept is bounded by what the proxy could have been sent.
        """
        of_type: Mapping[str, Resource] = snapshot.resources.get(type_url, {}) if snapshot is not None else {}
        limit = len(of_type) + NAME_MARGIN
        given = dict.fromkeys(names)  # ordered: earlier subscriptions are kept first
        candidates = [name for name in given if len(name) <= MAX_NAME_LENGTH]
        if len(candidates) > limit:
            existing = [name for name in candidates if name in of_type]
            others = [name for name in candidates if name not in of_type][: limit - len(existing)]
            candidates = existing + others
        if len(candidates) < len(given):
            self.limit_hit(
                "resource_names",
                f"it asked for {len(given)} {SHORT_NAMES[type_url]} names, more than the {limit} it can use "
                f"(or names over {MAX_NAME_LENGTH} characters); {len(given) - len(candidates)} ignored",
            )
        return frozenset(candidates)

    def limit_hit(self, limit: str, what: str) -> None:
        """The client hit a limit: counted every time, logged once per stream and limit."""
        self.observer.limited(self, limit)
        if limit not in self._reported_limits:
            self._reported_limits.add(limit)
            log.warning(
                "proxy %s: %s (logged once per stream)", self.shown, what, extra={"node_id": self.shown, "limit": limit}
            )

    @abstractmethod
    def _respond(
        self, type_url: str, state: TypeState, wanted: Selection, snapshot: Snapshot
    ) -> tuple[bytes, str] | None:
        """The response that brings the proxy to `wanted` (of `snapshot`) and what it carries (for the
        log), or None if the proxy needs nothing."""

    def _taken_unanswered(self, type_url: str, state: TypeState) -> bool:
        """Whether the proxy takes the response just sent without answering it."""
        return False

    def _next_nonce(self, state: TypeState) -> str:
        state.nonce = str(next(self._nonces))
        return state.nonce

    def _acknowledge(self, type_url: str, state: TypeState, error: str | None, running: str | None) -> None:
        """An ACK or NACK of the latest response. `running`: the version the proxy keeps after a NACK."""
        kind = SHORT_NAMES[type_url]
        fields = {"node_id": self.shown, "type": kind, "version": state.sent_version}
        since, state.pushed_since = state.pushed_since, None
        state.awaiting = False
        if error is None:
            state.acked_version, state.error = state.sent_version, None
            log.debug("proxy %s ACKed %s version %s", self.shown, kind, state.sent_version, extra=fields)
            if since is not None:
                self.observer.acked(self, type_url, since)
            return
        state.nacked_version, state.error = state.sent_version, shorten(error, MAX_KEPT_ERROR)
        state.acked_version = running
        self.observer.nacked(self, type_url)
        logged = clip(error, MAX_LOGGED_ERROR)
        log.warning(
            "proxy %s NACKed %s version %s (keeps %s): %s",
            self.shown,
            kind,
            state.sent_version,
            running or "its previous resources",
            logged,
            extra={**fields, "kept_version": running, "error": logged},
        )

    def _type_state(self, type_url: str) -> TypeState | None:
        """The state of a requested type, created on first use; None (logged) for a type this server does not serve."""
        if type_url not in PUSH_ORDER:
            self._unsupported_type(type_url)
            return None
        return self.types.setdefault(type_url, TypeState())

    def _unsupported_type(self, type_url: str) -> None:
        """Log a request for a type this server does not serve once per type and stream, for a few types."""
        self.observer.limited(self, "unsupported_type")
        if type_url in self._unsupported or len(self._unsupported) > MAX_REPORTED_TYPES:
            return
        self._unsupported.add(type_url)
        if len(self._unsupported) > MAX_REPORTED_TYPES:  # full: say so once, keep no more
            log.info("proxy %s asked for more unsupported types; not logged", self.shown)
            return
        log.info(
            "proxy %s asked for unsupported type %s; ignored (logged once per stream)",
            self.shown,
            clip(type_url, MAX_SHOWN_TYPE_URL),
        )

    def has_applied(self, snapshot: Snapshot, but_rejected: bool = False) -> bool:
        """The proxy ACKed, for every type it subscribed to (clusters and listeners at least), this snapshot.

        With `but_rejected`, a type may instead have NACKed exactly this snapshot's version: Envoy
        applies every resource of a response except the ones its error names, so the proxy then runs
        all of the snapshot but those (see rejected_names).
        """
        subscribed = {type_url: state for type_url, state in self.types.items() if state.subscribed}
        if CLUSTER not in subscribed or LISTENER not in subscribed:
            return False
        for type_url, state in subscribed.items():
            version = self.wanted(type_url, snapshot).version
            nacked = but_rejected and state.state == "NACKed" and state.nacked_version == version
            if state.acked_version != version and not nacked:
                return False
        return True

    def rejected_names(self) -> frozenset[tuple[str, str]]:
        """What Envoy's NACK texts may name, as claims: ("listener", name) for LDS, ("cluster", name) for
        CDS and EDS. Envoy lists what it rejected ("Error adding/updating listener(s) call-7-l: cannot
        bind ..."); words that are no resource's name are found by nobody's claim."""
        return frozenset(
            (CLAIM_KIND[type_url], name)
            for type_url, state in self.types.items()
            if state.state == "NACKed" and state.error
            for name in resource_names_in(state.error)
        )

    def rejection(self) -> str | None:
        """Envoy's error text for what it rejected and still does not run, if anything."""
        errors = [f"{SHORT_NAMES[t]}: {state.error}" for t, state in self.types.items() if state.state == "NACKed"]
        return "; ".join(errors) or None

    def type_report(self) -> dict[str, TypeStatus]:
        """Per resource type, for /debug/proxies: version sent, ACK/NACK state, version ACKed, the NACK's text."""
        return {
            SHORT_NAMES[type_url]: {
                "version": state.sent_version,
                "state": state.state,
                "acked_version": state.acked_version,
                "error": state.error,
            }
            for type_url, state in self.types.items()
        }


class SotwStream(ProxyStream[discovery_pb2.DiscoveryRequest]):
    """State of the world: every response holds all the resources of its type the proxy wants."""

    variant = "sotw"

    def on_request(
        self, request: discovery_pb2.DiscoveryRequest, snapshot: Snapshot | None, since: float | None = None
    ) -> list[bytes]:
        """Handle a request; return the serialized DiscoveryResponses to send."""
        type_url = request.type_url
        state = self._type_state(type_url)
        if state is None:
            return []
        if not state.subscribed:
            # First request of this type on this stream (any nonce it carries is from an
            # earlier stream): an Envoy that reconnects says which version it already has,
            # and is sent nothing if that is still current.
            state.sent_version = state.acked_version = request.version_info or None
        elif request.response_nonce != state.nonce:
            if self._unsubscribed_all(type_url, state, request):
                return self.on_snapshot(snapshot, since)
            log.debug(
                "proxy %s: stale %s nonce %s ignored",
                self.shown,
                SHORT_NAMES[type_url],
                clip(request.response_nonce, MAX_SHOWN_TYPE_URL),
            )
            return []
        else:
            error = nack_text(request)
            # A NACK's version_info is the version the proxy still runs (its ACK may have crossed a push).
            self._acknowledge(type_url, state, error, request.version_info or None)
        state.subscribed = True
        if type_url in NAMED_TYPES:
            state.names = self.bound_names(type_url, request.resource_names, snapshot)
        # The snapshot may have changed since the last push (the server handles this request
        # before the change notice): answering only this type could send a listener before the
        # cluster it names. Send everything that differs, in push order.
        return self.on_snapshot(snapshot, since)

    def _unsubscribed_all(self, type_url: str, state: TypeState, request: discovery_pb2.DiscoveryRequest) -> bool:
        """A request naming nothing of a named type, with a stale nonce: Envoy dropped its last EDS cluster and
        unsubscribed before it read the (empty) EDS response that crossed its request. It takes that response
        without answering (it watches no name), so it runs it: the subscription change counts, and so does
        the response if it was empty."""
        if type_url not in NAMED_TYPES or request.resource_names or not state.names:
            return False
        state.names = frozenset()
        if state.awaiting and state.sent_version == NOTHING:
            self._acknowledge(type_url, state, None, None)
        return True

    def _taken_unanswered(self, type_url: str, state: TypeState) -> bool:
        """Envoy takes a response for a named type whose names it all unsubscribed without answering it
        (its gRPC mux: "No watches and no resources ... we'll accept this update")."""
        return type_url in NAMED_TYPES and state.names == frozenset()

    def _respond(
        self, type_url: str, state: TypeState, wanted: Selection, snapshot: Snapshot
    ) -> tuple[bytes, str] | None:
        if wanted.version == state.sent_version:
            return None  # unchanged, or the version the proxy rejected: never sent twice
        state.sent_version = wanted.version
        state.nonce = wanted.nonce
        return wanted.sotw_response, f"{len(wanted.resources)} resources"


def resource_names_in(error: str) -> set[str]:
    """The words of Envoy's error text that may be resource names (the ones it rejected among them)."""
    return set(_NAME.findall(error[:NAMES_SEARCHED]))


def nack_text(request: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest) -> str | None:
    """Envoy's reason for rejecting the response a request answers; None for an ACK."""
    return request.error_detail.message if request.HasField("error_detail") else None
