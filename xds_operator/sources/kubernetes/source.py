"""The Kubernetes source: VirtualService and Pod watches feed the cache; the status reconciler hears of every change.

Reflector threads hand events to the event loop, which owns all state. A burst of events
is coalesced: the first schedules a flush a moment later, and the flush commits the cache
once, so each affected proxy group gets one new snapshot, moves proxies whose pod changed to
their new labels' group, and asks the status reconciler (status/reconciler.py) for a pass.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

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
from xds_operator.sources.kubernetes.pods import PodChange, PodIndex, Selector, SelectorIndex
from xds_operator.sources.kubernetes.records import VirtualServiceRecord
from xds_operator.sources.kubernetes.reflector import Changed, Event, Reflector, Synced
from xds_operator.status.reconciler import StatusReconciler
from xds_operator.xds.cache import SnapshotCache

log = logging.getLogger(__name__)

COALESCE_SECONDS = 0.05  # events closer together than this become one snapshot


class KubernetesSource:
    """Event intake: VirtualService and Pod events → the cache, the pod index and the status reconciler."""

    def __init__(
        self,
        cache: SnapshotCache,
        pods: PodIndex,
        reconciler: StatusReconciler,
        reidentify: Callable[[Iterable[str]], None],
    ) -> None:
        """`reidentify`: the ADS server's; moves the proxies of these node ids to their (new) labels' group."""
        self.cache = cache
        self.pods = pods
        self._reconciler = reconciler
        self._reidentify = reidentify
        self.records: dict[Key, VirtualServiceRecord] = {}
        self._dirty_endpoints: set[Key] = set()  # VirtualServices whose pod selectors may resolve differently now
        self._by_selector: SelectorIndex[Key] = SelectorIndex()  # VirtualServices by their endpoints' pod selectors
        self._selectors: dict[Key, frozenset[tuple[str, Selector]]] = {}  # and the other way round
        self._dirty_nodes: set[str] = set()
        self._flush_due: asyncio.TimerHandle | None = None
        self._closed = False
        self._pending_syncs: set[str] = set()
        self._synced = asyncio.Event()
        self.errors: Counter[str] = Counter()  # invalid generations seen ("invalid_virtualservice"), for metrics

    # -- watches ------------------------------------------------------------------------------

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
        self._pending_syncs.discard(watch)
        if not self._pending_syncs and not self._synced.is_set():
            self._synced.set()
            self._reconciler.start()  # statuses from now on: before, they could come from a partial list

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
            self._reconciler.added(key, record, at_startup=not self.is_synced)
        record.generation = generation
        self._reconciler.changed([key])
        self._reconciler.carried(key, obj.get("status"))
        try:
            vs = parse_virtual_service(obj, origin="kubernetes")
        except ValidationError as error:
            record.rejected = str(error)
            kept = f"; still serving generation {record.serving_generation}" if record.serving_generation else ""
            if self._reconciler.warn(key, record, "Rejected", f"generation {generation} is invalid: {error}{kept}"):
                self.errors["invalid_virtualservice"] += 1
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
        self._reconciler.removed(key)
        self._file_selectors(key, None)

    def _file_selectors(self, key: Key, vs: VirtualService | None) -> None:
        """Index the VirtualService by its endpoints' pod selectors: a pod change refreshes only those it matches."""
        selectors: frozenset[tuple[str, Selector]] = frozenset()
        if vs is not None:
            selectors = frozenset(
                (vs.namespace, frozenset(endpoint.host.selector.items()))
                for listener in vs.spec.listeners
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
        """Apply everything received since the last flush: one commit, then identities, then a status pass."""
        self._flush_due = None
        if self._dirty_endpoints:
            keys, self._dirty_endpoints = self._dirty_endpoints, set()
            self.cache.refresh_endpoints(keys)
            self._reconciler.changed(keys)  # their ready endpoint counts may have changed
        self.cache.commit()
        if self._dirty_nodes:
            nodes, self._dirty_nodes = self._dirty_nodes, set()
            self._reidentify(nodes)
        self._reconciler.request_pass()

    def close(self) -> None:
        """Shutting down: no more flushes (the status reconciler stops with its task)."""
        self._closed = True
        if self._flush_due is not None:
            self._flush_due.cancel()
            self._flush_due = None


def _key_of(obj: Mapping[str, Any]) -> Key:
    """The API server only sends named objects; a nameless one would fail validation under this key."""
    return key_of(obj) or ("default", "")


def watches(
    source: KubernetesSource, api_client: client.ApiClient, namespaces: Sequence[str], loop: asyncio.AbstractEventLoop
) -> list[Reflector]:
    """One VirtualService and one Pod reflector per namespace (or one each for the whole cluster), not started."""
    objects = client.CustomObjectsApi(api_client)
    core = client.CoreV1Api(api_client)
    reflectors: list[Reflector] = []
    scopes: Sequence[str | None] = namespaces or [None]  # None: every namespace
    for namespace in scopes:
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
    return reflectors


def _on_loop(loop: asyncio.AbstractEventLoop, handler: Callable[[Event], None]) -> Callable[[Event], None]:
    """A sink for a reflector thread: runs handler on the event loop, in order."""

    def sink(event: Event) -> None:
        loop.call_soon_threadsafe(handler, event)

    return sink


__all__ = ["Changed", "KubernetesSource", "Synced", "watches"]
