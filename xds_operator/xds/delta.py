"""Incremental (delta) ADS framing: send only the resources that changed, and name the removed ones.

The stream remembers, per type, the version of every resource the proxy holds (`known`: a
resource's version is its content hash). A response carries the wanted resources whose
version differs and, in `removed_resources`, what the proxy holds but should not. That
bookkeeping is optimistic: what was sent counts as held, so a NACKed resource is not sent
again at once. But the resources Envoy names in its NACK (it applies the others) go again with
the next response of their type, as state of the world resends every resource: so a later ACK
means they were accepted, and another NACK names them again. A reconnecting
proxy lists what it holds in `initial_resource_versions` and is sent only the difference.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from envoy.service.discovery.v3 import discovery_pb2

from xds_operator.admin.logs import clip
from xds_operator.xds.snapshot import NAMED_TYPES, SHORT_NAMES, Resource, Selection, Snapshot
from xds_operator.xds.stream import (
    MAX_SHOWN_TYPE_URL,
    ProxyStream,
    StreamObserver,
    TypeState,
    nack_text,
    resource_names_in,
)

log = logging.getLogger(__name__)

WILDCARD = "*"


class DeltaStream(ProxyStream[discovery_pb2.DeltaDiscoveryRequest]):
    variant = "delta"

    def __init__(self, node_id: str, observer: StreamObserver | None = None):
        super().__init__(node_id, observer)
        self._absent_reported: dict[str, set[str]] = {}  # named types: subscribed names already reported absent
        self._resend: dict[str, set[str]] = {}  # per type: names a NACK rejected, to go with its next response

    def on_request(
        self, request: discovery_pb2.DeltaDiscoveryRequest, snapshot: Snapshot | None, since: float | None = None
    ) -> list[bytes]:
        """Handle a request; return the serialized DeltaDiscoveryResponses to send."""
        type_url = request.type_url
        state = self._type_state(type_url)
        if state is None:
            return []
        first = not state.subscribed
        if first:
            state.subscribed = True
            held = request.initial_resource_versions
            state.known = {name: held[name] for name in self.bound_names(type_url, held, snapshot)}
            state.names = frozenset() if type_url in NAMED_TYPES else None  # CDS and LDS: always wildcard
        elif request.response_nonce and request.response_nonce == state.nonce:
            error = nack_text(request)
            self._acknowledge(type_url, state, error, state.acked_version)
            if error is not None:
                self._resend[type_url] = {name for name in resource_names_in(error) if name in state.known}
        elif request.response_nonce:
            nonce = clip(request.response_nonce, MAX_SHOWN_TYPE_URL)
            log.debug("proxy %s: stale %s nonce %s", self.shown, SHORT_NAMES[type_url], nonce)
        # Subscription changes count even with a stale nonce (the protocol says so).
        if type_url in NAMED_TYPES:
            self._update_names(state, request, first, snapshot)
        return self.on_snapshot(snapshot, since)

    def _update_names(
        self, state: TypeState, request: discovery_pb2.DeltaDiscoveryRequest, first: bool, snapshot: Snapshot | None
    ) -> None:
        subscribe = set(request.resource_names_subscribe) - {WILDCARD}
        unsubscribe = set(request.resource_names_unsubscribe)
        if not subscribe and not unsubscribe:
            return  # an ACK: nothing to look at
        # Subscriptions only grow while a proxy asks for more: bounded by what it can have been sent.
        names = self.bound_names(request.type_url, (*(state.names or ()), *(subscribe - unsubscribe)), snapshot)
        names -= unsubscribe
        reported = self._absent_reported.setdefault(request.type_url, set())
        reported &= names
        for name in subscribe:
            reported.discard(name)
            if not first or name not in request.initial_resource_versions:
                state.known.pop(name, None)  # a (re)subscribed name must be sent even if held
        for name in unsubscribe:
            state.known.pop(name, None)
            reported.discard(name)
        if names != state.names or subscribe:
            state.basis = None  # `known` no longer matches a snapshot's selection: compare in full once
        state.names = names

    def _respond(
        self, type_url: str, state: TypeState, wanted: Selection, snapshot: Snapshot
    ) -> tuple[bytes, str] | None:
        touched = snapshot.changed_since(state.basis, type_url) if state.basis is not None else None
        if touched is None:
            changed, removed = self._compare_all(type_url, state, wanted)
        else:
            changed, removed = self._compare(state, snapshot.resources.get(type_url, {}), touched)
        first_answer = state.sent_version is None and not state.known
        state.basis = snapshot  # after this, `known` is exactly what `wanted` holds
        if not changed and not removed and not first_answer:
            if state.sent_version is None:  # a reconnect holding exactly what is wanted: it runs this version
                state.sent_version = state.acked_version = wanted.version
            return None
        changed.extend(self._rejected_again(type_url, state, snapshot, changed))
        for resource in changed:
            state.known[resource.name] = resource.digest
        for name in removed:
            state.known.pop(name, None)
        state.sent_version = wanted.version
        # Serialized here, once (gRPC passes bytes through): the push's size costs nothing more.
        response = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=wanted.version,
            type_url=type_url,
            nonce=self._next_nonce(state),
            resources=[discovery_pb2.Resource(name=r.name, version=r.digest, resource=r.packed) for r in changed],
            removed_resources=removed,
        ).SerializeToString()
        return response, f"{len(changed)} changed, {len(removed)} removed"

    def _rejected_again(
        self, type_url: str, state: TypeState, snapshot: Snapshot, changed: list[Resource]
    ) -> list[Resource]:
        """The resources the last NACK named that are still wanted unchanged: they go with this response."""
        names = self._resend.pop(type_url, set()) - {resource.name for resource in changed}
        present: Mapping[str, Resource] = snapshot.resources.get(type_url, {})
        return [
            present[name]
            for name in sorted(names)
            if name in present
            and (state.names is None or name in state.names)
            and state.known.get(name) == present[name].digest
        ]

    @staticmethod
    def _compare(
        state: TypeState, of_type: Mapping[str, Resource], touched: set[str]
    ) -> tuple[list[Resource], list[str]]:
        """What differs among the names changed since `state.basis` (whose resources `known` equals)."""
        changed: list[Resource] = []
        removed: list[str] = []
        for name in sorted(touched):
            resource = of_type.get(name)
            if resource is not None and (state.names is None or name in state.names):
                if state.known.get(name) != resource.digest:
                    changed.append(resource)
            elif name in state.known:
                removed.append(name)
        return changed, removed

    def _compare_all(self, type_url: str, state: TypeState, wanted: Selection) -> tuple[list[Resource], list[str]]:
        """What differs between everything the proxy holds and everything it wants (on the first
        response, after a subscription change, or when the snapshots are not related by patches)."""
        changed = [r for r in wanted.resources if state.known.get(r.name) != r.digest]
        present = {r.name for r in wanted.resources}
        removed = sorted(name for name in state.known if name not in present)
        if state.names is not None:  # named subscriptions: tell once which names do not exist
            reported = self._absent_reported.setdefault(type_url, set())
            absent = state.names - present - state.known.keys() - reported
            reported |= absent
            removed = sorted({*removed, *absent})
        return changed, removed
