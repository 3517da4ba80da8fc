"""The snapshot cache: VirtualServices in, one snapshot per proxy group out.

Sources call upsert/delete/refresh_endpoints and then commit(); commit rebuilds only the
groups a change touches and notifies their watches. Proxies whose labels are equal share a
group; groups that select the same VirtualServices share one Snapshot object. Each
VirtualService is translated and serialized once and reused while its content and its
resolved endpoints stay the same.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from ..api import VirtualService
from ..translate import SelectorResolver, no_pods, resolve_endpoints, translate_virtual_service
from .snapshot import CLUSTER, EMPTY, ENDPOINT, LISTENER, Resource, Snapshot

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
LabelSet = frozenset[tuple[str, str]]


@dataclass(frozen=True, eq=False)
class Translated:
    """A VirtualService with its Envoy resources, serialized once."""

    vs: VirtualService
    resources: tuple[Resource, ...]
    addresses: tuple  # the resolved upstreams per cluster, to notice endpoint changes
    token: str  # changes whenever any of the resources does

    @cached_property  # read on every rebuild of every group that selects it
    def claims(self) -> frozenset[tuple[str, object]]:
        """What this VirtualService takes on a proxy: listener names, cluster names, ports."""
        claimed: set[tuple[str, object]] = set()
        for listener in self.vs.spec.listeners:
            claimed.add(("listener", listener.name))
            claimed.add(("cluster", listener.udp.cluster.name))
            claimed.add(("port", listener.udp.port))
        return frozenset(claimed)

    def age(self) -> tuple[str, str, str]:
        """Conflict order: the oldest wins, then namespace/name order."""
        return (self.vs.created, self.vs.namespace, self.vs.name)


def translate(vs: VirtualService, resolve_selector: SelectorResolver) -> Translated:
    envoy = translate_virtual_service(vs, resolve_selector)
    resources: list[Resource] = []
    for listener, cluster in zip(envoy.listeners, envoy.clusters, strict=True):
        resources.append(Resource.of(listener.name, listener, requires=[(CLUSTER, cluster.name)]))
    eds_names = {assignment.cluster_name for assignment in envoy.load_assignments}
    for cluster in envoy.clusters:
        requires = [(ENDPOINT, cluster.name)] if cluster.name in eds_names else []
        resources.append(Resource.of(cluster.name, cluster, requires=requires))
    for assignment in envoy.load_assignments:
        resources.append(Resource.of(assignment.cluster_name, assignment))
    token = hashlib.sha256("".join(r.type_url + r.name + r.digest for r in resources).encode()).hexdigest()[:16]
    return Translated(vs, tuple(resources), _addresses(vs, resolve_selector), token)


def _addresses(vs: VirtualService, resolve_selector: SelectorResolver) -> tuple:
    return tuple(
        tuple(resolve_endpoints(vs.namespace, listener.udp.cluster, resolve_selector)) for listener in vs.spec.listeners
    )


class Watch:
    """One ADS stream's interest in a group's snapshot. `notify` is called when it changes."""

    def __init__(self, labels: Mapping[str, str] | None, notify: Callable[[], None]):
        self.labels = dict(labels) if labels is not None else None
        self.snapshot: Snapshot | None = None  # None: the proxy's identity is not known yet
        self._notify = notify

    def _set(self, snapshot: Snapshot | None) -> None:
        if snapshot is not self.snapshot:
            self.snapshot = snapshot
            self._notify()


@dataclass(eq=False)
class Group:
    labels: dict[str, str]
    watches: set[Watch] = field(default_factory=set)
    selection: tuple | None = None  # ((key, token), ...) of the VirtualServices in its snapshot
    snapshot: Snapshot = EMPTY
    conflicts: dict[Key, str] = field(default_factory=dict)  # left out here, and why


class SnapshotCache:
    def __init__(self, resolve_selector: SelectorResolver = no_pods):
        self._resolve_selector = resolve_selector
        self._services: dict[Key, Translated] = {}
        self._groups: dict[LabelSet, Group] = {}
        self._dirty: set[Key] = set()
        self._by_selection: dict[tuple, Snapshot] = {}  # groups selecting the same content share one
        self._reported: dict[Key, str] = {}  # conflicts already logged
        self.translations = 0  # how many VirtualServices were (re)translated, for benchmarks and tests

    # -- input -------------------------------------------------------------------------------

    def upsert(self, vs: VirtualService) -> None:
        current = self._services.get(vs.key)
        if current is not None and current.vs.same_content(vs) and current.vs.created == vs.created:
            return
        self._services[vs.key] = self._translate(vs)
        self._dirty.add(vs.key)

    def delete(self, key: Key) -> None:
        if self._services.pop(key, None) is not None:
            self._dirty.add(key)

    def refresh_endpoints(self, keys: Iterable[Key] | None = None) -> None:
        """Re-resolve pod selectors; retranslate those whose upstream addresses changed."""
        for key in list(self._services) if keys is None else keys:
            current = self._services.get(key)
            if current is not None and _addresses(current.vs, self._resolve_selector) != current.addresses:
                self._services[key] = self._translate(current.vs)
                self._dirty.add(key)

    def virtual_services(self) -> dict[Key, VirtualService]:
        return {key: translated.vs for key, translated in self._services.items()}

    @property
    def conflicts(self) -> dict[Key, str]:
        """VirtualServices left out of at least one group because an older one claims the same thing."""
        found: dict[Key, str] = {}
        for group in self._groups.values():
            found.update(group.conflicts)
        return found

    def _translate(self, vs: VirtualService) -> Translated:
        self.translations += 1
        return translate(vs, self._resolve_selector)

    # -- output ------------------------------------------------------------------------------

    def commit(self) -> int:
        """Rebuild the groups touched since the last commit and notify their watches.

        Returns how many groups got a new snapshot.
        """
        dirty, self._dirty = self._dirty, set()
        if not dirty:
            return 0
        changed = 0
        for group in self._groups.values():
            touched = (
                any(key in dirty for key, _ in group.selection or ())
                or any(key in dirty for key in group.conflicts)  # a left-out one changed or went away
                or any(key in self._services and self._services[key].vs.selects(group.labels) for key in dirty)
            )
            if touched and self._rebuild(group):
                changed += 1
        self._by_selection = {g.selection: g.snapshot for g in self._groups.values() if g.selection is not None}
        self._report_conflicts()
        return changed

    def watch(self, labels: Mapping[str, str] | None, notify: Callable[[], None]) -> Watch:
        """Register interest; the returned watch holds the current snapshot (None if labels are None)."""
        watch = Watch(labels, notify)
        if labels is not None:
            self._join(watch, dict(labels))
        return watch

    def relabel(self, watch: Watch, labels: Mapping[str, str] | None) -> None:
        """The proxy's labels became known or changed: move it to its new group."""
        self.cancel(watch)
        watch.labels = dict(labels) if labels is not None else None
        if labels is None:
            watch._set(None)
        else:
            self._join(watch, dict(labels))

    def cancel(self, watch: Watch) -> None:
        if watch.labels is None:
            return
        label_set = frozenset(watch.labels.items())
        group = self._groups.get(label_set)
        if group is not None:
            group.watches.discard(watch)
            if not group.watches:
                del self._groups[label_set]

    def group_count(self) -> int:
        return len(self._groups)

    def snapshot_for(self, labels: Mapping[str, str]) -> Snapshot:
        """The snapshot a proxy with these labels would get (builds it if no proxy has them yet)."""
        group = self._groups.get(frozenset(labels.items()))
        if group is None:
            group = Group(dict(labels))
            self._rebuild(group)
        return group.snapshot

    def _join(self, watch: Watch, labels: dict[str, str]) -> None:
        label_set = frozenset(labels.items())
        group = self._groups.get(label_set)
        if group is None:
            group = self._groups[label_set] = Group(labels)
            self._rebuild(group)
        group.watches.add(watch)
        watch._set(group.snapshot)
        self._report_conflicts()

    def _rebuild(self, group: Group) -> bool:
        selected = sorted((t for t in self._services.values() if t.vs.selects(group.labels)), key=Translated.age)
        included = self._leave_out_conflicts(group, selected)
        selection = tuple((t.vs.key, t.token) for t in included)
        if selection == group.selection:
            return False
        snapshot = self._by_selection.get(selection)
        if snapshot is None:
            by_type: dict[str, list[Resource]] = {CLUSTER: [], ENDPOINT: [], LISTENER: []}
            for translated in included:
                for resource in translated.resources:
                    by_type[resource.type_url].append(resource)
            snapshot = self._by_selection[selection] = Snapshot.build(by_type, contents=selection)
        group.selection, group.snapshot = selection, snapshot
        for watch in group.watches:
            watch._set(snapshot)
        return True

    def _leave_out_conflicts(self, group: Group, selected: list[Translated]) -> list[Translated]:
        """Keep, oldest first, the VirtualServices whose listener names, cluster names and ports are free."""
        claimed: dict[tuple[str, object], Translated] = {}
        included: list[Translated] = []
        conflicts: dict[Key, str] = {}
        for translated in selected:
            clashes = sorted((claim for claim in translated.claims if claim in claimed), key=str)
            if not clashes:
                included.append(translated)
                claimed.update((claim, translated) for claim in translated.claims)
                continue
            kind, value = clashes[0]
            conflicts[translated.vs.key] = (
                f"{kind} {value} is already used by the older VirtualService {claimed[clashes[0]].vs}"
            )
        group.conflicts = conflicts
        return included

    def _report_conflicts(self) -> None:
        """Log each conflict once when it appears and once when it is gone, not once per group."""
        current = self.conflicts
        for key, message in current.items():
            if self._reported.get(key) != message:
                log.warning("VirtualService %s/%s conflicts: %s; it is left out", *key, message)
        for key in self._reported.keys() - current.keys():
            if key in self._services:
                log.info("VirtualService %s/%s no longer conflicts", *key)
        self._reported = current
