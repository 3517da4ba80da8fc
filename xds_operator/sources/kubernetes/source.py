"""The Kubernetes source: VirtualService and Pod watches feed the cache, proxy identities and status.

Reflector threads hand events to the event loop, which owns all state. A burst of events
is coalesced: the first schedules a flush a moment later, and the flush commits the cache
once, so each affected proxy group gets one new snapshot. Status is recomputed (also
coalesced) after flushes, whenever a proxy ACKs or NACKs and when a DNS answer changes, from
state the source already holds (pod index, proxy progress, cached DNS answers), and written by
StatusWriter.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from kubernetes import client

from xds_operator.api import (
    API_GROUP,
    API_VERSION,
    Key,
    ValidationError,
    VirtualService,
    cluster_of,
    key_of,
    parse_virtual_service,
)
from xds_operator.api.schema import PLURAL
from xds_operator.net import address_order, is_ip
from xds_operator.sources.kubernetes.dns import DnsCache
from xds_operator.sources.kubernetes.pods import PodChange, PodIndex, Selector, SelectorIndex
from xds_operator.sources.kubernetes.reflector import Changed, Event, Reflector, Synced
from xds_operator.status.conditions import Observed, StatusWriter, WarningEvent, now_rfc3339, settling, status_of
from xds_operator.status.peers import PeerReport, ProgressReports, changed_entries, encode, merge_one
from xds_operator.status.progress import Progress, ProgressTracker
from xds_operator.status.readiness import ListenerState, listener_states
from xds_operator.translate import Resolved
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.server import AggregatedDiscoveryService

log = logging.getLogger(__name__)

COALESCE_SECONDS = 0.05  # events closer together than this become one snapshot
STATUS_INTERVAL_SECONDS = 0.25  # status is recomputed at most this often
# A new VirtualService's first status is not written while it only says "not on every proxy yet"
# (Pending, NoProxies) for this long: a call's VirtualService is usually Ready by then, and one
# write (Ready) instead of two halves the writes per call. Those present at startup wait longer,
# for the proxies to (re)connect: a restart rewrites nothing that did not change.
FIRST_STATUS_HOLD_SECONDS = 1.0
STARTUP_STATUS_HOLD_SECONDS = 10.0


@dataclass
class VirtualServiceRecord:
    """What the source knows of one VirtualService beyond what the cache holds."""

    generation: int
    uid: str
    rejected: str | None = None  # why the latest generation is invalid
    serving_generation: int | None = None  # the generation in the cache, if any is valid
    vs: VirtualService | None = None  # that generation


class KubernetesSource:
    def __init__(
        self,
        cache: SnapshotCache,
        pods: PodIndex,
        status: StatusWriter | None = None,
        dns: DnsCache | None = None,
        *,
        first_status_hold: float = FIRST_STATUS_HOLD_SECONDS,
        startup_status_hold: float = STARTUP_STATUS_HOLD_SECONDS,
    ):
        self.cache = cache
        self.pods = pods
        self.status = status
        self.dns = dns or DnsCache(self._on_dns)  # whether address endpoints resolve, for Ready
        self.service: AggregatedDiscoveryService | None = None  # bound once the server exists
        self.peers: ProgressReports | None = None  # other replicas' proxies (several replicas only)
        self.records: dict[Key, VirtualServiceRecord] = {}
        self._dirty_endpoints: set[Key] = set()  # VirtualServices whose pod selectors may resolve differently now
        self._by_selector: SelectorIndex[Key] = SelectorIndex()  # VirtualServices by their endpoints' pod selectors
        self._selectors: dict[Key, frozenset[tuple[str, Selector]]] = {}  # and the other way round
        self._dirty_nodes: set[str] = set()
        self._flush_due: asyncio.TimerHandle | None = None
        self._status_due: asyncio.TimerHandle | None = None
        self._closed = False
        self._warned: dict[tuple[Key, str], str] = {}  # (key, reason) → the message last reported
        # The status side, kept up to date per change so that a pass costs the change, not every VirtualService:
        self._changed: set[Key] = set()  # VirtualServices whose status inputs changed since the last pass
        self._progress = ProgressTracker()  # this replica's proxies' progress, per VirtualService on demand
        self._own: dict[Key, Progress] = {}  # as last computed (what this replica reports to the others)
        self._conflicts: dict[Key, str] = {}  # as the last pass saw them
        self._peers_seen: list[PeerReport] = []  # likewise
        self._holds = FirstStatusHolds(first_status_hold, startup_status_hold, self.on_progress)
        self._hosts: dict[Key, frozenset[str]] = {}  # the DNS names a VirtualService's endpoints use
        self._host_users: dict[str, set[Key]] = {}  # and the other way round
        # Listener states of VirtualServices without DNS names, kept while their upstreams are the same objects.
        self._states: dict[Key, tuple[VirtualService, Resolved, tuple[ListenerState, ...]]] = {}
        self._observed: dict[Key, Observed] = {}  # what each status was last computed from
        self._pending_syncs: set[str] = set()
        self._synced = asyncio.Event()
        self.commits = 0  # cache commits, for tests and /debug
        self.errors: Counter[str] = Counter()  # invalid generations seen ("invalid_virtualservice"), for metrics

    # -- wiring ------------------------------------------------------------------------------

    def identify(self, node: base_pb2.Node) -> dict[str, str] | None:
        """A proxy's labels are its pod's (node.id = pod UID or <namespace>/<name>); None until the pod is known."""
        return self.pods.labels_for(node.id)

    def bind(self, service: AggregatedDiscoveryService) -> None:
        self.service = service

    def expect_sync(self, watch: str) -> None:
        """`synced` waits for this watch (a reflector's name) to list once."""
        self._pending_syncs.add(watch)

    async def synced(self) -> None:
        """Wait until every watch has listed once (serving before that would hand proxies a partial config)."""
        if self._pending_syncs:
            await self._synced.wait()

    @property
    def is_synced(self) -> bool:
        return not self._pending_syncs

    @property
    def settled(self) -> bool:
        """No received change is waiting to be applied."""
        return self._flush_due is None

    def _mark_synced(self, watch: str) -> None:
        if watch in self._pending_syncs:
            self._pending_syncs.discard(watch)
            if not self._pending_syncs:
                self._synced.set()

    # -- VirtualServices ---------------------------------------------------------------------

    def on_virtual_services(self, event: Event, namespace: str | None = None, watch: str = "") -> None:
        """An event of the VirtualService watch `watch` (of `namespace`, or of all namespaces if None)."""
        if isinstance(event, Synced):
            present = {self._upsert(obj) for obj in event.objects}
            for key in [k for k in self.records if (namespace is None or k[0] == namespace) and k not in present]:
                self._delete(key)
            self._mark_synced(watch)
        elif event.type == "DELETED":
            self._delete(_key_of(event.object))
        else:
            self._upsert(event.object)
        self._schedule_flush()

    def _upsert(self, obj: Mapping[str, Any]) -> Key:
        key = _key_of(obj)
        metadata = obj.get("metadata") or {}
        generation = int(metadata.get("generation") or 0)
        record = self.records.get(key)
        if record is None or record.uid != metadata.get("uid", ""):
            if record is not None:  # deleted and created again while we were not watching
                self._delete(key)
            record = self.records[key] = VirtualServiceRecord(generation, metadata.get("uid", ""))
            self._holds.start(key, at_startup=not self.is_synced)
        record.generation = generation
        self._changed.add(key)
        if self.status is not None:
            self.status.observed(key, obj.get("status"))
        try:
            vs = parse_virtual_service(obj, origin="kubernetes")
        except ValidationError as error:
            record.rejected = str(error)
            kept = f"; still serving generation {record.serving_generation}" if record.serving_generation else ""
            self._warn(key, record, "Rejected", f"generation {generation} is invalid: {error}{kept}")
        else:
            record.rejected = None
            record.serving_generation = generation
            record.vs = vs
            self._file_selectors(key, vs)
            self.cache.upsert(vs)
        return key

    def _delete(self, key: Key) -> None:
        self.cache.delete(key)
        if self.records.pop(key, None) is not None:
            log.info("VirtualService %s/%s deleted", *key)
        self._warned = {warned: text for warned, text in self._warned.items() if warned[0] != key}
        self._states.pop(key, None)
        self._observed.pop(key, None)
        self._own.pop(key, None)
        self._holds.stop(key)
        self._use_hosts(key, frozenset())
        self._file_selectors(key, None)
        if self.status is not None:
            self.status.forget(key)

    def _file_selectors(self, key: Key, vs: VirtualService | None) -> None:
        """Index the VirtualService by its endpoints' pod selectors: a pod change refreshes only those it matches."""
        namespace = vs.namespace if vs is not None else ""
        selectors = frozenset(
            (namespace, frozenset(endpoint.host.selector.items()))
            for listener in (vs.spec.listeners if vs is not None else ())
            for endpoint in cluster_of(listener).endpoints
            if not endpoint.host.HasField("address")
        )
        before = self._selectors.pop(key, frozenset())
        if selectors:
            self._selectors[key] = selectors
        for namespace, selector in selectors - before:
            self._by_selector.add(namespace, selector, key)
        for namespace, selector in before - selectors:
            if self._by_selector.discard(namespace, selector, key):
                self.pods.forget_selector(namespace, selector)  # its memoized answer would outlive every user

    def _warn(self, key: Key, record: VirtualServiceRecord, reason: str, message: str) -> None:
        """Log and emit a Kubernetes Event, once per distinct message."""
        if self._warned.get((key, reason)) == message:
            return
        self._warned[(key, reason)] = message
        if reason == "Rejected":
            self.errors["invalid_virtualservice"] += 1
        log.warning(
            "VirtualService %s/%s: %s",
            *key,
            message,
            extra={"virtualservice": f"{key[0]}/{key[1]}", "reason": reason, "generation": record.generation},
        )
        if self.status is not None:
            self.status.warn(WarningEvent(key[0], key[1], record.uid, reason, message))

    # -- Pods --------------------------------------------------------------------------------

    def on_pods(self, event: Event, namespace: str | None = None, watch: str = "") -> None:
        """An event of the Pod watch `watch` (of `namespace`, or of all namespaces if None)."""
        changes: Sequence[PodChange | None]
        if isinstance(event, Synced):
            changes = self.pods.replace(event.objects, namespace)
            self._mark_synced(watch)
        elif event.type == "DELETED":
            changes = [self.pods.delete(event.object)]
        else:
            changes = [self.pods.upsert(event.object)]
        for change in changes:
            if change is not None:
                self._dirty_nodes |= change.node_ids
                for labels in change.endpoint_labels:
                    self._dirty_endpoints |= self._by_selector.matching(change.namespace, labels)
        self._schedule_flush()

    # -- coalesced work ----------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_due is None and not self._closed:
            self._flush_due = asyncio.get_running_loop().call_later(COALESCE_SECONDS, self.flush)

    def flush(self) -> None:
        """Apply everything received since the last flush: one commit, then identities, then status."""
        self._flush_due = None
        if self._dirty_endpoints:
            keys, self._dirty_endpoints = self._dirty_endpoints, set()
            self.cache.refresh_endpoints(keys)
            self._changed |= keys  # their ready endpoint counts may have changed
        if self.cache.commit():
            self.commits += 1
        if self._dirty_nodes and self.service is not None:
            nodes, self._dirty_nodes = self._dirty_nodes, set()
            self.service.reidentify(nodes)
        self.on_progress()

    def close(self) -> None:
        """Shutting down: no more flushes or status passes (streams closing during the drain would
        schedule one, and its DNS lookups would start a thread pool the exit then waits for)."""
        self._closed = True
        for due in (self._flush_due, self._status_due):
            if due is not None:
                due.cancel()
        self._flush_due = self._status_due = None
        self._holds.close()
        self.dns.close()

    def on_progress(self) -> None:
        """Something a status depends on changed (a proxy ACKed, NACKed, came or went)."""
        if self.status is not None and self._status_due is None and not self._closed:
            self._status_due = asyncio.get_running_loop().call_later(STATUS_INTERVAL_SECONDS, self.update_status)

    def _on_dns(self, host: str) -> None:
        """A DNS name's answer changed: the VirtualServices using it may turn Ready or not."""
        self._changed |= self._host_users.get(host, set())
        self.on_progress()

    def update_status(self) -> None:
        """Recompute the status of the VirtualServices whose inputs changed; hand the writer those that differ."""
        self._status_due = None
        if self.status is None or not self.is_synced:
            return
        keys = self._take_changes()
        own_changed = self._update_own(keys)
        if self.peers is not None:
            if own_changed:
                self.peers.publish_from(self._report)  # encoded when it is next due, not per pass
            if not self.peers.synced.is_set():
                self._changed |= keys  # a status without the other replicas' proxies could turn Programmed True early
                return
        conflicts = self._conflicts
        now = now_rfc3339()
        addresses: dict[tuple[int, ...], tuple[str, ...]] = {}  # by serving node-id sets (shared between alike)
        for key in keys:
            record = self.records.get(key)
            if record is not None:
                self._recompute(key, record, conflicts.get(key), now, addresses)
        self._holds.arm()

    def _take_changes(self) -> set[Key]:
        """Every VirtualService whose status may differ from the one last computed."""
        keys, self._changed = self._changed, set()
        changed, relabelled = self._progress.update(self.service.progress() if self.service else ())
        keys |= changed
        for labels in relabelled:  # proxies came or went: every count they are part of changes
            keys.update(key for key, record in self.records.items() if record.vs and record.vs.selects(labels))
        conflicts, before = self.cache.conflicts, self._conflicts
        keys.update(key for key in conflicts.keys() | before.keys() if conflicts.get(key) != before.get(key))
        self._conflicts = conflicts
        keys |= self._holds.expired()
        if self.peers is not None:
            keys |= self._peer_changes()
        return keys

    def _update_own(self, keys: set[Key]) -> bool:
        """This replica's proxies' progress for these VirtualServices; whether any was recomputed."""
        for key in keys:
            record = self.records.get(key)
            if record is None or record.vs is None:
                self._own.pop(key, None)
            else:
                self._own[key] = self._progress.progress(record.vs)
        return bool(keys)

    def _peer_changes(self) -> set[Key]:
        """The VirtualServices whose entries in the other replicas' reports changed since the last pass."""
        assert self.peers is not None
        peers, before = self.peers.peers(), self._peers_seen
        self._peers_seen = peers
        if [(p.identity, p.partial) for p in peers] != [(p.identity, p.partial) for p in before]:
            return set(self.records)  # a replica came or went: every count changes
        keys: set[Key] = set()
        for old, new in zip(before, peers, strict=True):
            keys |= changed_entries(old, new)
        return keys

    def _report(self) -> str:
        """This replica's report for the others (O(all): one Lease annotation holds it; see peers.py)."""
        generations = {key: record.serving_generation for key, record in self.records.items()}
        return encode(self._own, generations)

    def _recompute(
        self,
        key: Key,
        record: VirtualServiceRecord,
        conflict: str | None,
        now: str,
        addresses: dict[tuple[int, ...], tuple[str, ...]],
    ) -> None:
        assert self.status is not None
        progress = self._own.get(key)
        if self.peers is not None:
            progress = merge_one(progress, record.serving_generation, key, self._peers_seen)
        serving = progress.serving if progress is not None else []
        shared = tuple(map(id, serving))
        if shared not in addresses:
            addresses[shared] = self._proxy_addresses(serving)
        observed = Observed(
            generation=record.generation,
            rejected=record.rejected,
            serving_generation=record.serving_generation,
            conflict=conflict,
            progress=progress,
            listeners=self._listener_states(key, record.vs),
            addresses=addresses[shared],
        )
        if self._observed.get(key) == observed:
            return  # what was wanted for it last time (written, or queued) still holds
        status = status_of(observed, self.status.written(key), now)
        if self._holds.holding(key, settling(status)):
            return  # recomputed when its hold ends, or sooner if something changes
        self._observed[key] = observed
        if progress is not None and progress.rejections:
            node, error = progress.rejections[0]
            self._warn(key, record, "ProxyRejected", f"proxy {node} rejected its resources: {error}")
        self.status.want(key, status)

    def _listener_states(self, key: Key, vs: VirtualService | None) -> tuple[ListenerState, ...]:
        """Of the generation served (none if no generation is valid)."""
        resolved = self.cache.resolved(key)
        if vs is None or resolved is None:
            return ()
        kept = self._states.get(key)
        if kept is not None and kept[0] is vs and kept[1] is resolved:
            return kept[2]
        states = listener_states(vs, resolved, self.dns.resolves)
        hosts = frozenset(upstream.host for upstreams in resolved for upstream in upstreams if not is_ip(upstream.host))
        self._use_hosts(key, hosts)
        if not hosts:
            self._states[key] = (vs, resolved, states)
        else:  # DNS answers change on their own (then _on_dns marks this VirtualService changed)
            self._states.pop(key, None)
        return states

    def _use_hosts(self, key: Key, hosts: frozenset[str]) -> None:
        """Remember which DNS names a VirtualService uses; the DNS cache forgets those nothing uses any more."""
        before = self._hosts.pop(key, frozenset())
        if hosts:
            self._hosts[key] = hosts
        for host in hosts - before:
            self._host_users.setdefault(host, set()).add(key)
        for host in before - hosts:
            users = self._host_users.get(host, set())
            users.discard(key)
            if not users:
                self._host_users.pop(host, None)
                self.dns.forget(host)

    def _proxy_addresses(self, serving: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
        """The pod IPs of these proxies, in address order."""
        ips = {self.pods.ip_for(node) for nodes in serving for node in nodes}
        ips.discard("")
        return tuple(sorted(ips, key=address_order))


class FirstStatusHolds:
    """Keeps a VirtualService's first status back while it only says "not on every proxy yet".

    A status written as Pending and again as Ready a moment later is two writes where one says it
    all. So until `first` seconds after a VirtualService appeared (`startup` for those present at
    startup, when the proxies still have to connect) a settling status (see status.settling) is held
    back; a status that says anything else, or the hold's end, writes at once. Ready is never
    claimed early: what is held back is only ever a "not Ready yet".
    """

    def __init__(self, first: float, startup: float, wake: Callable[[], None]) -> None:
        self._first, self._startup = first, startup
        self._wake = wake  # asks for a status pass
        self._until: dict[Key, float] = {}  # whose first status is not decided yet → until when it may wait
        self._waiting: list[tuple[float, Key]] = []  # those held back now, earliest deadline first
        self._held: set[Key] = set()
        self._timer: asyncio.TimerHandle | None = None

    def start(self, key: Key, at_startup: bool) -> None:
        self._until[key] = _now() + (self._startup if at_startup else self._first)

    def stop(self, key: Key) -> None:
        self._until.pop(key, None)
        self._held.discard(key)

    def holding(self, key: Key, settling: bool) -> bool:
        """Whether to hold this status back (False ends the key's hold: it is written)."""
        until = self._until.get(key)
        if until is None:
            return False
        if not settling or _now() >= until:
            del self._until[key]
            return False
        if key not in self._held:
            self._held.add(key)
            heapq.heappush(self._waiting, (until, key))
        return True

    def expired(self) -> set[Key]:
        """The held-back VirtualServices whose hold has ended: their status is due."""
        due: set[Key] = set()
        now = _now()
        while self._waiting and self._waiting[0][0] <= now:
            _, key = heapq.heappop(self._waiting)
            if key in self._held:
                self._held.discard(key)
                due.add(key)
        return due

    def arm(self) -> None:
        """Make sure a status pass runs when the earliest hold ends."""
        while self._waiting and self._waiting[0][1] not in self._held:
            heapq.heappop(self._waiting)  # deleted meanwhile
        if not self._waiting:
            return
        deadline = self._waiting[0][0]
        if self._timer is not None and self._timer.when() <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(deadline, self._expired)

    def _expired(self) -> None:
        self._timer = None
        self._wake()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _now() -> float:
    return asyncio.get_running_loop().time()


def _key_of(obj: Mapping[str, Any]) -> Key:
    """The API server only sends named objects; a nameless one would fail validation under this key."""
    return key_of(obj) or ("default", "")


def start_watches(
    source: KubernetesSource, api_client: client.ApiClient, namespaces: Sequence[str], loop: asyncio.AbstractEventLoop
) -> list[Reflector]:
    """One VirtualService and one Pod reflector per namespace (or one each for the whole cluster)."""
    objects = client.CustomObjectsApi(api_client)
    core = client.CoreV1Api(api_client)
    reflectors: list[Reflector] = []
    for namespace in namespaces if namespaces else [None]:
        if namespace is None:
            list_vs = functools.partial(objects.list_cluster_custom_object, API_GROUP, API_VERSION, PLURAL)
            list_pods: Callable[..., Any] = core.list_pod_for_all_namespaces
        else:
            list_vs = functools.partial(
                objects.list_namespaced_custom_object, API_GROUP, API_VERSION, namespace, PLURAL
            )
            list_pods = functools.partial(core.list_namespaced_pod, namespace)
        where = f" in {namespace}" if namespace else ""
        for watch, list_call, handler in (
            (f"virtualservices{where}", list_vs, source.on_virtual_services),
            (f"pods{where}", list_pods, source.on_pods),
        ):
            source.expect_sync(watch)
            sink = _on_loop(loop, functools.partial(handler, namespace=namespace, watch=watch))
            reflectors.append(Reflector(watch, list_call, sink))
    for reflector in reflectors:
        reflector.start()
    return reflectors


def _on_loop(loop: asyncio.AbstractEventLoop, handler: Callable[[Event], None]) -> Callable[[Event], None]:
    """A sink for a reflector thread: runs handler on the event loop, in order."""

    def sink(event: Event) -> None:
        loop.call_soon_threadsafe(handler, event)

    return sink


__all__ = ["Changed", "KubernetesSource", "Synced", "start_watches"]
