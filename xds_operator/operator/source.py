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
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from kubernetes import client

from ..api import API_GROUP, API_VERSION, Key, ValidationError, VirtualService, key_of, parse_virtual_service
from ..api.schema import PLURAL
from ..net import address_order, is_ip
from ..translate import Resolved
from ..xds.cache import SnapshotCache
from ..xds.progress import Progress, summarize
from ..xds.server import AggregatedDiscoveryService
from .dns import DnsCache
from .peers import ProgressReports, encode, merge
from .pods import PodChange, PodIndex
from .readiness import ListenerState, listener_states
from .reflector import Changed, Event, Reflector, Synced
from .status import Observed, StatusWriter, WarningEvent, now_rfc3339, status_of

log = logging.getLogger(__name__)

COALESCE_SECONDS = 0.05  # events closer together than this become one snapshot
STATUS_INTERVAL_SECONDS = 0.25  # status is recomputed at most this often


@dataclass
class VirtualServiceRecord:
    """What the source knows of one VirtualService beyond what the cache holds."""

    generation: int
    uid: str
    rejected: str | None = None  # why the latest generation is invalid
    serving_generation: int | None = None  # the generation in the cache, if any is valid


class KubernetesSource:
    def __init__(
        self, cache: SnapshotCache, pods: PodIndex, status: StatusWriter | None = None, dns: DnsCache | None = None
    ):
        self.cache = cache
        self.pods = pods
        self.status = status
        self.dns = dns or DnsCache(self.on_progress)  # whether address endpoints resolve, for Ready
        self.service: AggregatedDiscoveryService | None = None  # bound once the server exists
        self.peers: ProgressReports | None = None  # other replicas' proxies (several replicas only)
        self.records: dict[Key, VirtualServiceRecord] = {}
        self._dirty_namespaces: set[str] = set()
        self._dirty_nodes: set[str] = set()
        self._flush_due: asyncio.TimerHandle | None = None
        self._status_due: asyncio.TimerHandle | None = None
        self._closed = False
        self._warned: dict[tuple[Key, str], str] = {}  # (key, reason) → the message last reported
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
        record.generation = generation
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
            self.cache.upsert(vs)
        return key

    def _delete(self, key: Key) -> None:
        self.cache.delete(key)
        if self.records.pop(key, None) is not None:
            log.info("VirtualService %s/%s deleted", *key)
        self._warned = {warned: text for warned, text in self._warned.items() if warned[0] != key}
        self._states.pop(key, None)
        self._observed.pop(key, None)
        if self.status is not None:
            self.status.forget(key)

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
                if change.endpoints_changed:
                    self._dirty_namespaces.add(change.namespace)
        self._schedule_flush()

    # -- coalesced work ----------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_due is None and not self._closed:
            self._flush_due = asyncio.get_running_loop().call_later(COALESCE_SECONDS, self.flush)

    def flush(self) -> None:
        """Apply everything received since the last flush: one commit, then identities, then status."""
        self._flush_due = None
        if self._dirty_namespaces:
            namespaces, self._dirty_namespaces = self._dirty_namespaces, set()
            self.cache.refresh_endpoints([key for key in self.records if key[0] in namespaces])
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
        self.dns.close()

    def on_progress(self) -> None:
        """Something a status depends on changed (a proxy ACKed, NACKed, came or went)."""
        if self.status is not None and self._status_due is None and not self._closed:
            self._status_due = asyncio.get_running_loop().call_later(STATUS_INTERVAL_SECONDS, self.update_status)

    def update_status(self) -> None:
        """Recompute every VirtualService's status; hand the writer those whose inputs changed."""
        self._status_due = None
        if self.status is None or not self.is_synced:
            return
        services = self.cache.virtual_services()
        progress = self._progress(services)
        if progress is None:
            return
        conflicts = self.cache.conflicts
        now = now_rfc3339()
        addresses: dict[tuple[int, ...], tuple[str, ...]] = {}  # by serving node-id sets (shared between alike)
        for key, record in self.records.items():
            key_progress = progress.get(key)
            serving = key_progress.serving if key_progress is not None else []
            shared = tuple(map(id, serving))
            if shared not in addresses:
                addresses[shared] = self._proxy_addresses(serving)
            observed = Observed(
                generation=record.generation,
                rejected=record.rejected,
                serving_generation=record.serving_generation,
                conflict=conflicts.get(key),
                progress=key_progress,
                listeners=self._listener_states(key, services.get(key)),
                addresses=addresses[shared],
            )
            if self._observed.get(key) == observed:
                continue  # what was wanted for it last time (written, or queued) still holds
            self._observed[key] = observed
            if key_progress is not None and key_progress.rejections:
                node, error = key_progress.rejections[0]
                self._warn(key, record, "ProxyRejected", f"proxy {node} rejected its resources: {error}")
            self.status.want(key, status_of(observed, self.status.written(key), now))
        self.dns.retain_asked()  # every DNS name in use was asked above (their states are never kept)

    def _progress(self, services: Mapping[Key, VirtualService]) -> dict[Key, Progress] | None:
        """This replica's proxies' progress plus, with several replicas, the others' (None: not known yet)."""
        progress = summarize(self.service.progress() if self.service else (), services)
        if self.peers is None:
            return progress
        generations = {key: record.serving_generation for key, record in self.records.items()}
        self.peers.publish(encode(progress, generations))  # every replica publishes; the leader merges
        if not self.peers.synced.is_set():
            return None  # a status without the other replicas' proxies could turn Programmed True too early
        return merge(progress, generations, self.peers.peers())

    def _listener_states(self, key: Key, vs: VirtualService | None) -> tuple[ListenerState, ...]:
        """Of the generation served (none if no generation is valid)."""
        resolved = self.cache.resolved(key)
        if vs is None or resolved is None:
            return ()
        kept = self._states.get(key)
        if kept is not None and kept[0] is vs and kept[1] is resolved:
            return kept[2]
        states = listener_states(vs, resolved, self.dns.resolves)
        if all(is_ip(upstream.host) for upstreams in resolved for upstream in upstreams):
            self._states[key] = (vs, resolved, states)
        else:  # DNS answers change on their own: asked again every time (which also keeps them refreshed)
            self._states.pop(key, None)
        return states

    def _proxy_addresses(self, serving: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
        """The pod IPs of these proxies, in address order."""
        ips = {self.pods.ip_for(node) for nodes in serving for node in nodes}
        ips.discard("")
        return tuple(sorted(ips, key=address_order))


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
    for namespace in namespaces or [None]:
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
