"""The status reconciler: recomputes VirtualService status from what the control plane observes and hands
the statuses that changed to the writer.

The Kubernetes source tells it which VirtualServices exist and which of them changed; it reads the rest
itself: the proxies' progress (from the ADS server), conflicts and resolved upstreams (from the cache),
pod IPs (from the pod index), DNS answers (its own DnsCache) and, with several replicas, the other
replicas' reports (status/peers.py), to which it also hands this replica's. A pass runs at most every
STATUS_INTERVAL_SECONDS after anything it depends on changed (`due` is set), and recomputes only the
VirtualServices whose inputs changed since the last pass, so its cost follows the change.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from xds_operator.api import Key, VirtualService
from xds_operator.api.timestamps import now_rfc3339
from xds_operator.net import address_order, is_ip
from xds_operator.sources.kubernetes.dns import DnsCache
from xds_operator.sources.kubernetes.pods import PodIndex
from xds_operator.sources.kubernetes.records import VirtualServiceRecord
from xds_operator.status.conditions import Observed, awaiting_health, settling, status_of
from xds_operator.status.peers import PeerReport, ProgressReports, changed_entries, encode, merge_one
from xds_operator.status.progress import Progress, ProgressTracker
from xds_operator.status.readiness import ClusterHealth, ListenerState, listener_states
from xds_operator.status.writer import StatusWriter, WarningEvent
from xds_operator.translate import Resolved, envoy_cluster_name
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.hds import HealthDiscoveryService
from xds_operator.xds.health import summarize
from xds_operator.xds.server import ProxyProgress

log = logging.getLogger(__name__)

STATUS_INTERVAL_SECONDS = 0.25  # status is recomputed at most this often
# A new VirtualService's first status is not written while it only says "not on every proxy yet"
# (Pending, NoProxies) for this long: a call's VirtualService is usually Ready by then, and one
# write (Ready) instead of two halves the writes per call. Those present at startup wait longer,
# for the proxies to (re)connect: a restart rewrites nothing that did not change.
FIRST_STATUS_HOLD_SECONDS = 1.0
STARTUP_STATUS_HOLD_SECONDS = 10.0


class StatusReconciler:
    """Computes each VirtualService's status when its inputs change; the writer writes what differs."""

    def __init__(
        self,
        cache: SnapshotCache,
        pods: PodIndex,
        writer: StatusWriter,
        proxies: Callable[[], Iterable[ProxyProgress]],
        due: asyncio.Event,
        *,
        peers: ProgressReports | None = None,
        health: HealthDiscoveryService | None = None,
        health_changed: set[str] | None = None,
        first_status_hold: float = FIRST_STATUS_HOLD_SECONDS,
        startup_status_hold: float = STARTUP_STATUS_HOLD_SECONDS,
        interval: float = STATUS_INTERVAL_SECONDS,
    ) -> None:
        """`proxies`: every connected proxy's progress (the ADS server's); `due`: set by whatever a status
        depends on (the source, the ADS server, the replica reports, the leader elector) to ask for a pass;
        `peers`: the other replicas' reports (several replicas only); `health`: the proxies' health reports,
        and `health_changed` the Envoy cluster names whose health changed since (emptied by each pass)."""
        self._cache = cache
        self._pods = pods
        self._writer = writer
        self._proxies = proxies
        self._due = due
        self._peers = peers
        self._health = health
        self._health_changed = health_changed if health_changed is not None else set()
        self._cluster_users: dict[str, set[Key]] = {}  # Envoy cluster name → the VirtualServices routing to it
        self._health_memo: dict[str, ClusterHealth | None] = {}  # within one pass
        self._clusters_of: dict[Key, tuple[str, ...]] = {}  # and per VirtualService, per listener
        self._interval = interval
        self._dns = DnsCache(self._on_dns)  # whether address endpoints resolve, for Ready
        self._records: dict[Key, VirtualServiceRecord] = {}  # every VirtualService the source knows
        self._started = False  # every watch has listed once: a status before that could be a partial view
        self._closed = False
        self._warned: dict[tuple[Key, str], str] = {}  # (key, reason) → the message last reported
        # Kept up to date per change so that a pass costs the change, not every VirtualService:
        self._changed: set[Key] = set()  # VirtualServices whose status inputs changed since the last pass
        self._progress = ProgressTracker()  # this replica's proxies' progress, per VirtualService on demand
        self._own: dict[Key, Progress] = {}  # as last computed (what this replica reports to the others)
        self._conflicts: dict[Key, str] = {}  # as the last pass saw them
        self._peers_seen: list[PeerReport] = []  # likewise
        self._holds = FirstStatusHolds(first_status_hold, startup_status_hold, due.set)
        self._hosts: dict[Key, frozenset[str]] = {}  # the DNS names a VirtualService's endpoints use
        self._host_users: dict[str, set[Key]] = {}  # and the other way round
        # Listener states of VirtualServices without DNS names, kept while their upstreams are the same objects.
        self._states: dict[Key, tuple[VirtualService, Resolved, tuple[ListenerState, ...]]] = {}
        self._observed: dict[Key, Observed] = {}  # what each status was last computed from

    # -- what the source tells it ------------------------------------------------------------

    def added(self, key: Key, record: VirtualServiceRecord, at_startup: bool) -> None:
        """A VirtualService appeared (`record` stays the source's: it is read at each pass)."""
        self._records[key] = record
        self._holds.start(key, at_startup)

    def removed(self, key: Key) -> None:
        self._records.pop(key, None)
        self._warned = {warned: text for warned, text in self._warned.items() if warned[0] != key}
        self._states.pop(key, None)
        self._observed.pop(key, None)
        self._own.pop(key, None)
        self._holds.stop(key)
        self._use_hosts(key, frozenset())
        self._use_clusters(key, ())
        self._writer.forget(key)

    def changed(self, keys: Iterable[Key]) -> None:
        """These VirtualServices' inputs changed (a new generation, their endpoints): recomputed at the next pass."""
        self._changed.update(keys)

    def carried(self, key: Key, status: Mapping[str, Any] | None) -> None:
        """The status the object carries now (from the watch): what the writer compares against."""
        self._writer.observed(key, status)

    def start(self) -> None:
        """Every watch has listed once: passes may run."""
        self._started = True

    def request_pass(self) -> None:
        self._due.set()

    def warn(self, key: Key, record: VirtualServiceRecord, reason: str, message: str) -> bool:
        """Log and emit a Kubernetes Event, once per distinct message; whether it was reported (not a repeat)."""
        if self._warned.get((key, reason)) == message:
            return False
        self._warned[(key, reason)] = message
        log.warning(
            "VirtualService %s/%s: %s",
            *key,
            message,
            extra={"virtualservice": f"{key[0]}/{key[1]}", "reason": reason, "generation": record.generation},
        )
        self._writer.warn(WarningEvent(key[0], key[1], record.uid, reason, message))
        return True

    # -- passes ------------------------------------------------------------------------------

    async def run(self) -> None:
        """A pass at most every `interval` seconds while something a status depends on changes."""
        try:
            while True:
                await self._due.wait()
                await asyncio.sleep(self._interval)  # what arrives meanwhile joins this pass
                self._due.clear()
                try:
                    self.reconcile()
                except Exception:  # a bug in one pass: logged, and the next change brings another pass
                    log.exception("status pass failed")
        finally:
            self.close()

    def close(self) -> None:
        """Shutting down: no more passes (proxies leaving during the drain would ask for one, and its DNS
        lookups would start a thread pool the exit then waits for); stop the hold timer and the lookups."""
        self._closed = True
        self._holds.close()
        self._dns.close()

    def _on_dns(self, host: str) -> None:
        """A DNS name's answer changed: the VirtualServices using it may turn Ready or not."""
        self._changed |= self._host_users.get(host, set())
        self._due.set()

    def reconcile(self) -> None:
        """Recompute the status of the VirtualServices whose inputs changed; hand the writer those that differ."""
        if not self._started or self._closed:
            return
        keys = self._take_changes()
        own_changed = self._update_own(keys)
        if self._peers is not None:
            if own_changed:
                self._peers.publish_from(self._report)  # encoded when it is next due, not per pass
            if not self._peers.synced.is_set():
                self._changed |= keys  # a status without the other replicas' proxies could turn Programmed True early
                return
        conflicts = self._conflicts
        now = now_rfc3339()
        self._health_memo.clear()
        addresses: dict[tuple[int, ...], tuple[str, ...]] = {}  # by serving node-id sets (shared between alike)
        for key in keys:
            record = self._records.get(key)
            if record is not None:
                self._recompute(key, record, conflicts.get(key), now, addresses)
        self._holds.arm()

    def _take_changes(self) -> set[Key]:
        """Every VirtualService whose status may differ from the one last computed."""
        keys, self._changed = self._changed, set()
        changed, relabelled = self._progress.update(self._proxies())
        keys |= changed
        for labels in relabelled:  # proxies came or went: every count they are part of changes
            keys.update(key for key, record in self._records.items() if record.vs and record.vs.selects(labels))
        conflicts, before = self._cache.conflicts, self._conflicts
        keys.update(key for key in conflicts.keys() | before.keys() if conflicts.get(key) != before.get(key))
        self._conflicts = conflicts
        keys |= self._holds.expired()
        if self._health_changed:
            for name in self._health_changed:
                keys |= self._cluster_users.get(name, set())
            self._health_changed.clear()
        if self._peers is not None:
            keys |= self._peer_changes(self._peers)
        return keys

    def _update_own(self, keys: set[Key]) -> bool:
        """This replica's proxies' progress for these VirtualServices; whether any was recomputed."""
        for key in keys:
            record = self._records.get(key)
            if record is None or record.vs is None:
                self._own.pop(key, None)
            else:
                self._own[key] = self._progress.progress(record.vs)
        return bool(keys)

    def _peer_changes(self, reports: ProgressReports) -> set[Key]:
        """The VirtualServices whose entries in the other replicas' reports changed since the last pass."""
        peers, before = reports.peers(), self._peers_seen
        self._peers_seen = peers
        if [(p.identity, p.partial) for p in peers] != [(p.identity, p.partial) for p in before]:
            return set(self._records)  # a replica came or went: every count changes
        keys: set[Key] = set()
        for old, new in zip(before, peers, strict=True):
            keys |= changed_entries(old, new)
        return keys

    def _report(self) -> str:
        """This replica's report for the others (O(all): one Lease annotation holds it; see peers.py)."""
        generations = {key: record.serving_generation for key, record in self._records.items()}
        return encode(self._own, generations)

    def _recompute(
        self,
        key: Key,
        record: VirtualServiceRecord,
        conflict: str | None,
        now: str,
        addresses: dict[tuple[int, ...], tuple[str, ...]],
    ) -> None:
        progress = self._own.get(key)
        if self._peers is not None:
            progress = merge_one(progress, record.serving_generation, key, self._peers_seen)
        serving = progress.serving if progress is not None else []
        shared = tuple(map(id, serving))
        if shared not in addresses:
            addresses[shared] = self._proxy_addresses(serving)
        observed = Observed(
            generation=record.generation,
            rejected=record.rejected,
            serving_generation=record.serving_generation,
            no_free_port=record.waiting,
            conflict=conflict,
            progress=progress,
            listeners=self._listener_states(key, record.vs),
            addresses=addresses[shared],
            health=self._cluster_health(key, record.vs),
        )
        if self._observed.get(key) == observed:
            return  # what was wanted for it last time (written, or queued) still holds
        previous = self._writer.written(key)
        status = status_of(observed, previous, now)
        if self._holds.holding(key, settling(status) or awaiting_health(status, previous)):
            return  # recomputed when its hold ends, or sooner if something changes
        self._observed[key] = observed
        if progress is not None and progress.rejections:
            node, error = progress.rejections[0]
            self.warn(key, record, "ProxyRejected", f"proxy {node} rejected its resources: {error}")
        self._writer.want(key, status)

    def _listener_states(self, key: Key, vs: VirtualService | None) -> tuple[ListenerState, ...]:
        """Of the generation served (none if no generation is valid)."""
        resolved = self._cache.resolved(key)
        if vs is None or resolved is None:
            return ()
        kept = self._states.get(key)
        if kept is not None and kept[0] is vs and kept[1] is resolved:
            return kept[2]
        states = listener_states(vs, resolved, self._dns.resolves)
        hosts = frozenset(upstream.host for upstreams in resolved for upstream in upstreams if not is_ip(upstream.host))
        self._use_hosts(key, hosts)
        if not hosts:
            self._states[key] = (vs, resolved, states)
        else:  # DNS answers change on their own (then _on_dns marks this VirtualService changed)
            self._states.pop(key, None)
        return states

    def _cluster_health(self, key: Key, vs: VirtualService | None) -> tuple[ClusterHealth | None, ...]:
        """Per listener: its cluster's health as the proxies report it (HDS); () without reports."""
        if vs is None or self._health is None:
            return ()
        names = tuple(envoy_cluster_name(listener) for listener in vs.spec.listeners)
        self._use_clusters(key, names)
        found = [self._health_of(name) for name in names]
        return tuple(found) if any(found) else ()

    def _health_of(self, name: str) -> ClusterHealth | None:
        """One cluster's health across the proxies that report it, computed once per pass (the VirtualServices
        of calls to one worker share its cluster)."""
        if name in self._health_memo:
            return self._health_memo[name]
        assert self._health is not None
        summary = summarize(self._health.cluster_counts(name))
        result = None
        if summary is not None:
            passing, checked, failing_on = summary
            failing = ", ".join(self._health.failing_on(name, failing_on[0])) if failing_on else ""
            result = ClusterHealth(passing, checked, tuple(failing_on), failing)
        self._health_memo[name] = result
        return result

    def _use_clusters(self, key: Key, names: tuple[str, ...]) -> None:
        before = self._clusters_of.pop(key, ())
        if before == names:
            if names:
                self._clusters_of[key] = names
            return
        if names:
            self._clusters_of[key] = names
        for name in set(before) - set(names):
            users = self._cluster_users.get(name, set())
            users.discard(key)
            if not users:
                self._cluster_users.pop(name, None)
        for name in names:
            self._cluster_users.setdefault(name, set()).add(key)

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
                self._dns.forget(host)

    def _proxy_addresses(self, serving: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
        """The pod IPs of these proxies, in address order."""
        ips = {self._pods.ip_for(node) for nodes in serving for node in nodes}
        ips.discard("")
        return tuple(sorted(ips, key=address_order))


class FirstStatusHolds:
    """Keeps a VirtualService's first status back while it only says "not on every proxy yet".

    A status written as Pending and again as Ready a moment later is two writes where one says it
    all. So until `first` seconds after a VirtualService appeared (`startup` for those present at
    startup, when the proxies still have to connect) a settling status (see conditions.settling) is held
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
