"""The snapshot cache: VirtualServices in, one snapshot per proxy group out.

Sources call upsert/delete/refresh_endpoints and then commit(); commit rebuilds only the
groups a change touches and notifies their watches. Proxies whose labels are equal share a
group; groups that select the same VirtualServices share one Snapshot object. Each
VirtualService is translated and serialized once and reused while its content and its
resolved endpoints stay the same.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import immutables

from xds_operator.api import Key, VirtualService, port_of, protocol_of
from xds_operator.translate import (
    Resolved,
    SelectorResolver,
    no_pods,
    resolve_virtual_service,
    translate_virtual_service,
)
from xds_operator.xds import lineage
from xds_operator.xds.snapshot import (
    CLUSTER,
    EMPTY,
    ENDPOINT,
    LISTENER,
    MAX_RESPONSE_BYTES,
    MODULUS,
    SHORT_NAMES,
    Contents,
    Resource,
    Snapshot,
    weight_of,
)

log = logging.getLogger(__name__)

LabelSet = frozenset[tuple[str, str]]
Claim = tuple[str, object]


class Patch(enum.Enum):
    """How patching a group's snapshot for a change went."""

    CHANGED = "changed"
    UNCHANGED = "unchanged"  # the change does not reach this group's snapshot
    NEEDS_REBUILD = "needs rebuild"  # nothing patched: conflicts must be decided again, in a full rebuild


@dataclass(frozen=True, eq=False)
class Translated:
    """A VirtualService with its Envoy resources, serialized once."""

    vs: VirtualService
    resources: tuple[Resource, ...]
    addresses: Resolved  # the resolved upstreams per cluster, to notice endpoint changes
    token: str  # changes whenever any of the resources does
    # What it takes on a proxy, ("listener", name), ("cluster", name), ("UDP port" or "TCP port", number)
    # (a UDP and a TCP listener may share a port number), each with what another VirtualService must
    # hold to share it: listeners and ports are its own (its key); a cluster is shared by every
    # VirtualService that declares it alike (its content hash), so calls to one worker can share
    # its cluster, and Envoy does not add and remove a cluster per call.
    claims: Mapping[Claim, str]

    def shared(self, resource: Resource) -> bool:
        """Whether a resource is a cluster (or its endpoints): present once for all who declare it alike."""
        return resource.type_url != LISTENER

    @cached_property
    def weight(self) -> int:
        """A 128-bit hash of (key, token): a group's signature is the sum over its members."""
        return weight_of(f"{self.vs.namespace}/{self.vs.name}\0{self.token}".encode())

    @cached_property
    def sizes(self) -> dict[str, int]:
        """Per type, what its resources add to a proxy's response (their wire_size)."""
        sizes: dict[str, int] = {}
        for resource in self.resources:
            sizes[resource.type_url] = sizes.get(resource.type_url, 0) + resource.wire_size
        return sizes

    def age(self) -> tuple[bool, int, str, str]:
        """Conflict order: the oldest creationTimestamp wins, one without a timestamp loses to any with one,
        then namespace/name order. It depends on nothing but the objects: the same winner after a restart."""
        created = self.vs.created
        return (created is None, created or 0, self.vs.namespace, self.vs.name)


def translate(vs: VirtualService, resolve_selector: SelectorResolver) -> Translated:
    resolved = resolve_virtual_service(vs, resolve_selector)
    envoy = translate_virtual_service(vs, resolved=resolved)
    listeners = [
        (listener.name, (f"{protocol_of(listener)} port", port_of(listener))) for listener in vs.spec.listeners
    ]
    eds = {a.cluster_name: Resource.of(a.cluster_name, a) for a in envoy.load_assignments}
    own = f"{vs.namespace}/{vs.name}"
    resources: list[Resource] = []
    claims: dict[Claim, str] = {}
    for (listener_name, port_claim), listener, cluster in zip(listeners, envoy.listeners, envoy.clusters, strict=True):
        cluster_name = cluster.name  # the declared one, or a listener's private copy (translate.envoy_cluster_name)
        resources.append(Resource.of(listener_name, listener, requires=[(CLUSTER, cluster_name)]))
        cluster_resource = Resource.of(
            cluster_name, cluster, requires=[(ENDPOINT, cluster_name)] if cluster_name in eds else ()
        )
        resources.append(cluster_resource)
        endpoints = eds.get(cluster_name)
        claims[("cluster", cluster_name)] = cluster_resource.digest + (endpoints.digest if endpoints else "")
        claims[("listener", listener_name)] = claims[port_claim] = own
    resources.extend(eds.values())
    token = hashlib.blake2b(
        "".join(r.type_url + r.name + r.digest for r in resources).encode(), digest_size=8
    ).hexdigest()
    return Translated(vs, tuple(resources), resolved, token, claims)


class Watch:
    """One ADS stream's interest in a group's snapshot. `notify` is called when it changes."""

    def __init__(self, labels: Mapping[str, str] | None, notify: Callable[[], None]):
        self.labels = dict(labels) if labels is not None else None
        self.snapshot: Snapshot | None = None  # None: the proxy's identity is not known yet
        self.since = time.monotonic()  # when `snapshot` was set: where change-to-ACK latency starts
        self._notify = notify

    def _set(self, snapshot: Snapshot | None) -> None:
        if snapshot is not self.snapshot:
            self.snapshot = snapshot
            self.since = time.monotonic()
            self._notify()


Signature = tuple[int, int]  # (sum of member weights mod 2**128, member count): equal content, equal signature


@dataclass(eq=False)
class Group:
    """Proxies with equal labels, the VirtualServices they get, and their snapshot."""

    labels: dict[str, str]
    watches: set[Watch] = field(default_factory=set)
    members: dict[Key, Translated] = field(default_factory=dict)  # in the snapshot
    # Listener/cluster name or port → what its holders declared (see Translated.claims) and one holder;
    # `sharers` lists every holder of the claims held by more than one (clusters declared alike). Kept
    # apart so that the usual claim, held by one, costs no set (a group's rebuild makes thousands).
    owners: dict[Claim, tuple[str, Key]] = field(default_factory=dict)
    sharers: dict[Claim, set[Key]] = field(default_factory=dict)
    conflicts: dict[Key, str] = field(default_factory=dict)  # left out here, and why
    signature: Signature | None = None  # None until first built
    snapshot: Snapshot = EMPTY


class SnapshotCache:
    def __init__(
        self,
        resolve_selector: SelectorResolver = no_pods,
        on_commit: Callable[[float], None] = lambda seconds: None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ):
        self._resolve_selector = resolve_selector
        self._max_response_bytes = max_response_bytes  # per type and proxy: beyond it, the newest are left out
        self._on_commit = on_commit  # told how long each commit that had changes took (metrics)
        self._services: dict[Key, Translated] = {}
        self._groups: dict[LabelSet, Group] = {}
        self._dirty: set[Key] = set()
        self._by_signature: dict[Signature, Snapshot] = {}  # groups selecting the same content share one
        self._reported: dict[Key, str] = {}  # conflicts already logged
        self.translations = 0  # how many VirtualServices were (re)translated, for benchmarks and tests
        self.serialized = 0  # how many resources were serialized, likewise

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
            if current is not None and resolve_virtual_service(current.vs, self._resolve_selector) != current.addresses:
                self._services[key] = self._translate(current.vs)
                self._dirty.add(key)

    def virtual_services(self) -> dict[Key, VirtualService]:
        return {key: translated.vs for key, translated in self._services.items()}

    def resolved(self, key: Key) -> Resolved | None:
        """The upstreams its snapshots were built with, per listener (None if it is not in the cache)."""
        translated = self._services.get(key)
        return translated.addresses if translated is not None else None

    @property
    def conflicts(self) -> dict[Key, str]:
        """VirtualServices left out of at least one group because an older one claims the same thing."""
        found: dict[Key, str] = {}
        for group in self._groups.values():
            found.update(group.conflicts)
        return found

    def _translate(self, vs: VirtualService) -> Translated:
        translated = translate(vs, self._resolve_selector)
        self.translations += 1
        self.serialized += len(translated.resources)
        return translated

    # -- output ------------------------------------------------------------------------------

    def commit(self) -> int:
        """Rebuild the groups touched since the last commit and notify their watches.

        Returns how many groups got a new snapshot.
        """
        dirty, self._dirty = self._dirty, set()
        if not dirty:
            return 0
        started = time.perf_counter()
        changed = 0
        for group in self._groups.values():
            touched = [
                key
                for key in dirty
                if key in group.members
                or key in group.conflicts  # a left-out one changed or went away
                or (key in self._services and self._services[key].vs.selects(group.labels))
            ]
            if touched and self._update(group, touched):
                changed += 1
        self._by_signature = {g.signature: g.snapshot for g in self._groups.values() if g.signature is not None}
        self._report_conflicts()
        self._on_commit(time.perf_counter() - started)
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
                # Its snapshot, unless another group shares it, must not outlive it: proxies that
                # come and go with labels of their own would otherwise pile up snapshots until a commit.
                if group.signature is not None and all(g.signature != group.signature for g in self._groups.values()):
                    self._by_signature.pop(group.signature, None)

    def owners_of(self, labels: Mapping[str, str] | None, claims: Iterable[Claim]) -> frozenset[Key]:
        """The VirtualServices that hold any of these claims in the snapshot of the group with these labels
        (a cluster: every VirtualService that declares it alike)."""
        group = self._groups.get(frozenset(labels.items())) if labels is not None else None
        if group is None:
            return frozenset()
        return frozenset(key for claim in claims for key in holders(group, claim))

    def group_count(self) -> int:
        return len(self._groups)

    def counts(self) -> dict[str, int]:
        """Sizes of what proxies and VirtualServices hold: after churn they return to where they were."""
        return {
            "virtual_services": len(self._services),
            "groups": len(self._groups),
            "watches": sum(len(group.watches) for group in self._groups.values()),
            "snapshots": len(self._by_signature),
        }

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
        if group.conflicts:
            self._report_conflicts()

    def _update(self, group: Group, keys: list[Key]) -> bool:
        """Bring a group up to date after `keys` changed; True if its snapshot changed."""
        patched = Patch.NEEDS_REBUILD if group.conflicts or group.signature is None else self._patch(group, keys)
        if patched is Patch.NEEDS_REBUILD:
            return self._rebuild(group)  # conflicts make order matter: decide them all again
        return patched is Patch.CHANGED

    def _patch(self, group: Group, keys: list[Key]) -> Patch:
        """The common case, in time proportional to the change: swap the changed VirtualServices' resources.

        NEEDS_REBUILD (having changed nothing) when a new claim meets another VirtualService's: then
        conflicts must be decided by age, in a full rebuild.
        """
        incoming = {key: self._services[key] for key in keys if key in self._services}
        incoming = {key: t for key, t in incoming.items() if t.vs.selects(group.labels)}
        changing = set(keys)
        claimed: dict[Claim, str] = {}
        for translated in incoming.values():
            for claim, token in translated.claims.items():
                held = group.owners.get(claim)
                unchanged_holders = held is not None and not holders(group, claim) <= changing
                if (unchanged_holders and held is not None and held[0] != token) or claimed.setdefault(
                    claim, token
                ) != token:
                    return Patch.NEEDS_REBUILD
        outgoing = {key: group.members[key] for key in keys if key in group.members}
        if outgoing.keys() == incoming.keys() and all(incoming[k] is t for k, t in outgoing.items()):
            return Patch.UNCHANGED
        if self._too_big(group.snapshot.sizes, outgoing.values(), incoming.values()):
            return Patch.NEEDS_REBUILD  # something must be left out: by age, in a full rebuild
        total, count = group.signature or (0, 0)
        contents = group.snapshot.contents.mutate()  # a persistent map: no copy of every member
        removed: list[Resource] = []
        added: list[Resource] = []
        for key, translated in outgoing.items():
            del group.members[key]
            _release(group, key, translated)
            removed.extend(r for r in translated.resources if not _still_held(group, translated, r))
            contents.pop(key, None)
            total, count = total - translated.weight, count - 1
        for key, translated in incoming.items():
            group.members[key] = translated
            added.extend(r for r in translated.resources if not _still_held(group, translated, r))
            _hold(group, key, translated)
            contents[key] = translated.token
            total, count = total + translated.weight, count + 1
        signature = (total % MODULUS, count)
        members = contents.finish()
        snapshot = self._shared(signature, members)
        if snapshot is None:
            snapshot = self._by_signature[signature] = group.snapshot.patched(removed, added, members)
            lineage.record(snapshot, group.snapshot, outgoing.keys() | incoming.keys())
        self._install(group, signature, snapshot)
        return Patch.CHANGED

    def _rebuild(self, group: Group) -> bool:
        """Decide the group from scratch: every selected VirtualService, oldest first, left out on conflict."""
        selected = sorted((t for t in self._services.values() if t.vs.selects(group.labels)), key=Translated.age)
        included = self._leave_out_conflicts(group, selected)
        signature = (sum(t.weight for t in included) % MODULUS, len(included))
        group.members = {t.vs.key: t for t in included}
        group.owners, group.sharers = {}, {}
        for translated in included:
            _hold(group, translated.vs.key, translated)
        contents: Contents = immutables.Map({t.vs.key: t.token for t in included})
        if signature == group.signature and contents == group.snapshot.contents:
            return False
        snapshot = self._shared(signature, contents)
        if snapshot is None:
            by_type: dict[str, list[Resource]] = {CLUSTER: [], ENDPOINT: [], LISTENER: []}
            for translated in included:
                for resource in translated.resources:
                    by_type[resource.type_url].append(resource)
            snapshot = self._by_signature[signature] = Snapshot.build(by_type, contents)
            lineage.record(snapshot, group.snapshot, lineage.changed_between(group.snapshot, snapshot))
        self._install(group, signature, snapshot)
        return True

    def _shared(self, signature: Signature, contents: Contents) -> Snapshot | None:
        """The snapshot another group built with the same members, if any: the signature finds it in O(1), and
        only then are the members (keys and tokens) compared, since sums of hashes can be made to collide
        (in Kubernetes mode that would hand one namespace's resources to another's proxies)."""
        snapshot = self._by_signature.get(signature)
        return snapshot if snapshot is not None and snapshot.contents == contents else None

    @staticmethod
    def _install(group: Group, signature: Signature, snapshot: Snapshot) -> None:
        group.signature, group.snapshot = signature, snapshot
        for watch in group.watches:
            watch._set(snapshot)

    def _too_big(
        self, sizes: Mapping[str, int], outgoing: Iterable[Translated], incoming: Iterable[Translated]
    ) -> bool:
        """Whether swapping `outgoing` for `incoming` makes a response of some type larger than the limit."""
        after = dict(sizes)
        for translated, sign in [*((t, -1) for t in outgoing), *((t, 1) for t in incoming)]:
            for type_url, size in translated.sizes.items():
                after[type_url] = after.get(type_url, 0) + sign * size
        return any(size > self._max_response_bytes for size in after.values())

    def _oversized(self, group: Group, sizes: dict[str, int], translated: Translated) -> str | None:
        """Why `translated` cannot join a group whose responses are `sizes` bytes (per type), if it cannot."""
        for type_url, size in translated.sizes.items():
            total = sizes.get(type_url, 0) + size
            if total > self._max_response_bytes:
                labels = ",".join(f"{key}={value}" for key, value in sorted(group.labels.items()))
                return (
                    f"with it the {SHORT_NAMES[type_url]} response to proxies labelled {labels or '(no labels)'} "
                    f"would be {total / 2**20:.2f} MiB, over the {self._max_response_bytes / 2**20:g} MiB "
                    "limit on what one proxy is sent"
                )
        return None

    def _leave_out_conflicts(self, group: Group, selected: list[Translated]) -> list[Translated]:
        """Keep, oldest first, the VirtualServices whose listener names, cluster names and ports are free
        and that keep every response within the size limit (a shared cluster counted per declaration:
        the bound errs on the safe side)."""
        claimed: dict[Claim, tuple[str, Translated]] = {}
        included: list[Translated] = []
        conflicts: dict[Key, str] = {}
        sizes: dict[str, int] = {}
        for translated in selected:
            clashing = [c for c, token in translated.claims.items() if claimed.get(c, (token,))[0] != token]
            if not clashing:
                too_big = self._oversized(group, sizes, translated)
                if too_big is not None:
                    conflicts[translated.vs.key] = too_big
                    continue
                included.append(translated)
                for claim, token in translated.claims.items():
                    claimed.setdefault(claim, (token, translated))
                for type_url, size in translated.sizes.items():
                    sizes[type_url] = sizes.get(type_url, 0) + size
                continue
            kind, value = sorted(clashing, key=str)[0]
            older = claimed[(kind, value)][1].vs
            shared = "with another definition " if kind == "cluster" else ""
            conflicts[translated.vs.key] = f"{kind} {value} is already used {shared}by the older VirtualService {older}"
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


def holders(group: Group, claim: Claim) -> set[Key]:
    """The VirtualServices that hold a claim in a group (none if it is free)."""
    shared = group.sharers.get(claim)
    if shared is not None:
        return shared
    held = group.owners.get(claim)
    return {held[1]} if held is not None else set()


def _hold(group: Group, key: Key, translated: Translated) -> None:
    owners = group.owners
    for claim, token in translated.claims.items():
        held = owners.get(claim)
        if held is None:
            owners[claim] = (token, key)
        elif held[1] != key:
            group.sharers.setdefault(claim, {held[1]}).add(key)


def _release(group: Group, key: Key, translated: Translated) -> None:
    for claim in translated.claims:
        shared = group.sharers.get(claim)
        token, first = group.owners[claim]
        if shared is None:
            del group.owners[claim]
            continue
        shared.discard(key)
        if first == key:  # another holder stands for the claim now
            group.owners[claim] = (token, next(iter(shared)))
        if len(shared) == 1:
            del group.sharers[claim]


def _still_held(group: Group, translated: Translated, resource: Resource) -> bool:
    """Whether a shared resource is (still or already) in the group's snapshot through another holder."""
    return translated.shared(resource) and ("cluster", resource.name) in group.owners
