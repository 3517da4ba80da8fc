"""Endpoint health as one proxy sees it, over Envoy's Health Discovery Service (HDS), free of I/O.

Envoy's cluster health checks decide where it sends traffic, but tell the control plane nothing. HDS does:
the server sends a proxy a `HealthCheckSpecifier` (clusters, their health checks and endpoints), the proxy
runs those checks itself — from where it forwards, with the same TCP check as its cluster — and reports
every endpoint's health every `interval` (`EndpointHealthResponse`). A `HealthStream` is one such stream:

- `on_snapshot`: the proxy's snapshot changed. The specifier holds the health-checked clusters of that
  snapshot; only the clusters the change names are looked at (their entries are encoded once per content
  and shared by every stream), and a specifier goes out only when its bytes differ from the last one sent.
- `on_report`: the proxy's report, as received (bytes). A report identical to the previous one (Envoy sends
  the same bytes while nothing changes) costs a comparison; one that differs in a few bytes (an endpoint's
  health flipped) is decoded only in the cluster entries that differ; any other is read whole. Only the
  clusters and endpoints this stream asked for are read, the rest counted and ignored. An endpoint counts
  as failing after FAILING_REPORTS consecutive reports say so (Envoy reports an endpoint it has not
  checked yet as unhealthy), and as passing at the first report that says it passes.
"""

from __future__ import annotations

import array
import bisect
import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.health.v3 import hds_pb2
from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError

from xds_operator.admin.views import HealthView, UnhealthyEndpoint
from xds_operator.net import is_ip
from xds_operator.xds.snapshot import CLUSTER, ENDPOINT, Resource, Snapshot, length_delimited

log = logging.getLogger(__name__)

REPORT_INTERVAL_SECONDS = 1  # how often a proxy reports (the specifier's `interval`)
FAILING_REPORTS = 2  # consecutive failing reports before an endpoint counts as failing
# Bounds on what one proxy is asked to check and may send back (see README, "What one xDS client can cost").
MAX_CHECKED_ENDPOINTS = 20_000  # endpoints in one proxy's specifier; clusters beyond are left out
MAX_REPORT_BYTES = 4 * 1024 * 1024  # a larger report is ignored (Envoy's for 20,000 endpoints is ~1.6 MB)
MAX_SHOWN_UNHEALTHY = 32  # failing endpoints listed per proxy on /debug/proxies
_TARGET_MEMO = 65_536  # encoded clusters remembered (by content), shared by all streams

# How a limit was hit, as counted in xds_operator_xds_client_limits_total{limit}.
LIMIT_REPORT_SIZE = "health_report_size"
LIMIT_UNKNOWN_ENDPOINT = "health_unknown_endpoint"
LIMIT_CHECKED_ENDPOINTS = "health_checked_endpoints"
LIMIT_BAD_REPORT = "health_bad_report"

# Envoy keeps the stats of an HDS cluster under `cluster.<its name>.`: named like the cluster it checks, the two
# checkers would add up in one `health_check.*` counter and overwrite each other's `membership_*` gauges. Every
# Envoy cluster's name starts with a letter or digit (a declared one, or a copy `<cluster>@<listener>`), so
# `@hds@<name>` is never another cluster's (and Envoy keeps "@" in stat names, where it turns ":" into "_").
HDS_NAME_PREFIX = "@hds@"

_PASSING = frozenset({health_check_pb2.HEALTHY, health_check_pb2.DEGRADED})


@dataclass(frozen=True)
class Target:
    """One health-checked cluster as a proxy is asked to check it: its specifier entry, encoded once."""

    name: str
    entry: bytes  # a `HealthCheckSpecifier.cluster_health_checks` field, encoded
    endpoints: Mapping[str, int | None]  # "ip:port" → the port its check connects to (None: the endpoint's)
    positions: Mapping[str, int]  # "ip:port" → its place in `endpoints` (and in a stream's states of it)


def targets_of(snapshot: Snapshot, name: str) -> Target | None:
    """The cluster `name` of this snapshot as a health-check target; None if it has no health check
    (or no endpoint with an IP address: HDS clusters are static, so DNS names are not checked)."""
    cluster = snapshot.resources[CLUSTER].get(name)
    if cluster is None:
        return None
    assignment = snapshot.resources[ENDPOINT].get(name)
    key = (cluster.weight, assignment.weight if assignment is not None else 0)
    memo = _MEMO.get(key)
    if memo is None:
        memo = _MEMO[key] = _target(cluster, assignment)
        if len(_MEMO) > _TARGET_MEMO:
            _MEMO.popitem(last=False)
    else:
        _MEMO.move_to_end(key)
    return memo  # (a cluster's weight hashes its name too: one key, one name)


_MEMO: OrderedDict[tuple[int, int], Target | None] = OrderedDict()
# The specifiers of the most recently used snapshots, while they live (one per proxy group that changed lately;
# a bound, so thousands of groups do not each keep one).
MAX_SHARED_SPECIFIERS = 64
_SPECIFIERS: OrderedDict[int, tuple[weakref.ref[Snapshot], bytes]] = OrderedDict()


def _shared_specifier(snapshot: Snapshot) -> bytes | None:
    entry = _SPECIFIERS.get(id(snapshot))
    if entry is None or entry[0]() is not snapshot:
        return None
    _SPECIFIERS.move_to_end(id(snapshot))
    return entry[1]


def _share_specifier(snapshot: Snapshot, encoded: bytes) -> None:
    key = id(snapshot)

    def forget(reference: weakref.ref[Snapshot]) -> None:
        if _SPECIFIERS.get(key, (None,))[0] is reference:  # not a newer snapshot that reuses the id
            del _SPECIFIERS[key]

    _SPECIFIERS[key] = (weakref.ref(snapshot, forget), encoded)
    _SPECIFIERS.move_to_end(key)
    while len(_SPECIFIERS) > MAX_SHARED_SPECIFIERS:
        _SPECIFIERS.popitem(last=False)


def _target(cluster_resource: Resource, assignment_resource: Resource | None) -> Target | None:
    cluster = cluster_pb2.Cluster.FromString(cluster_resource.body)
    if not cluster.health_checks:
        return None
    if cluster.type == cluster_pb2.Cluster.EDS:
        if assignment_resource is None:
            return None
        assignment = endpoint_pb2.ClusterLoadAssignment.FromString(assignment_resource.body)
    else:
        assignment = cluster.load_assignment
    entry = hds_pb2.ClusterHealthCheck(cluster_name=HDS_NAME_PREFIX + cluster.name)
    entry.health_checks.extend(cluster.health_checks)
    checked = entry.locality_endpoints.add().endpoints
    endpoints: dict[str, int | None] = {}
    for locality in assignment.endpoints:
        for lb_endpoint in locality.lb_endpoints:
            endpoint = lb_endpoint.endpoint
            address = endpoint.address.socket_address
            if not is_ip(address.address):
                continue
            checked.add().CopyFrom(endpoint)
            port = endpoint.health_check_config.port_value
            endpoints[f"{address.address}:{address.port_value}"] = port or None
    if not endpoints:
        return None
    encoded = length_delimited(1, entry.SerializeToString(deterministic=True))
    return Target(cluster.name, encoded, endpoints, {endpoint: i for i, endpoint in enumerate(endpoints)})


_INTERVAL = length_delimited(2, duration_pb2.Duration(seconds=REPORT_INTERVAL_SECONDS).SerializeToString())


@dataclass(frozen=True)
class Layout:
    """Where each `cluster_endpoints_health` entry's payload lies in a report: compact (12 bytes an entry), as
    every stream keeps the one of its last report."""

    starts: array.array[int] = field(default_factory=lambda: array.array("I"))
    ends: array.array[int] = field(default_factory=lambda: array.array("I"))
    names_end: array.array[int] = field(default_factory=lambda: array.array("I"))  # where its cluster name ends


_NO_LAYOUT = Layout()


# An endpoint's state on one proxy, in one byte (a stream keeps one per endpoint it checks: a bytearray per
# cluster): the two low bits say whether it counts as passing, the rest how many reports in a row said it fails.
UNKNOWN, PASSES, FAILS = 0, 1, 2  # not reported yet (or not long enough to call it failing); passing; failing


def _counted(state: int) -> int:
    return state & 3


def _streak(state: int) -> int:
    return state >> 2


@dataclass
class HealthStream:
    """One proxy's HDS stream: what it is asked to check, and what it reported."""

    node_id: str  # as shown
    limited: Callable[[str], None] = lambda limit: None  # told of every bound a client hits (metrics)
    targets: dict[str, Target] = field(default_factory=dict)
    health: dict[str, bytearray] = field(default_factory=dict)  # cluster → its endpoints' states (Target order)
    reports: int = 0
    _snapshot: Snapshot | None = None
    _left_out: set[str] = field(default_factory=set)  # health-checked clusters over MAX_CHECKED_ENDPOINTS
    _checked: int = 0  # endpoints in `targets`
    _sent: bytes | None = None
    _last_report: bytes = b""
    _settling: bool = False  # an endpoint has failed fewer than FAILING_REPORTS reports in a row
    _settling_entries: set[int] = field(default_factory=set)  # the report entries of their clusters
    _layout: Layout = field(default_factory=lambda: _NO_LAYOUT)  # where the last report's cluster entries lie
    _budget: int = 0
    _unknown: int = 0
    _failing: set[tuple[str, str]] = field(default_factory=set)  # (cluster, "ip:port") counted as failing
    _passing: int = 0  # endpoints counted as passing
    _warned: set[str] = field(default_factory=set)

    # -- what the proxy is asked to check ------------------------------------------------------------

    def on_snapshot(self, snapshot: Snapshot | None) -> tuple[bytes | None, set[str]]:
        """The specifier to send (None: unchanged) and the clusters whose target changed."""
        if snapshot is None:
            return None, set()
        names = _changed_names(self._snapshot, snapshot)
        self._snapshot = snapshot
        if names is None:
            names = set(self.targets) | self._left_out | set(snapshot.resources[CLUSTER].keys())
        changed = set()
        checked = self._checked
        for name in sorted(names):
            if self._set_target(name, targets_of(snapshot, name)):
                changed.add(name)
        if self._left_out and self._checked < checked:  # room was made: clusters left out may fit now
            for name in sorted(self._left_out - names):
                if self._set_target(name, targets_of(snapshot, name)):
                    changed.add(name)
        if not changed and self._sent is not None:
            return None, changed
        specifier = self._encode(snapshot)
        if specifier == self._sent:
            return None, changed
        if self._sent is None and not self.targets:
            return None, changed  # nothing to check yet: Envoy sends no reports until it has a specifier
        self._sent = specifier
        return specifier, changed

    def _encode(self, snapshot: Snapshot) -> bytes:
        """The specifier of `targets`. Proxies of one group share a snapshot, and then (unless a bound left
        clusters out, which depends on a stream's history) the same specifier: it is joined once per snapshot."""
        shared = not self._left_out
        if shared:
            encoded = _shared_specifier(snapshot)
            if encoded is not None:
                return encoded
        encoded = b"".join([*(self.targets[name].entry for name in sorted(self.targets)), _INTERVAL])
        if shared:
            _share_specifier(snapshot, encoded)
        return encoded

    def _set_target(self, name: str, target: Target | None) -> bool:
        old = self.targets.get(name)
        if old is target:
            return False
        if old is not None:
            self._checked -= len(old.endpoints)
            del self.targets[name]
        was_left_out = name in self._left_out
        self._left_out.discard(name)
        if target is not None and self._checked + len(target.endpoints) > MAX_CHECKED_ENDPOINTS:
            self._left_out.add(name)
            if not was_left_out:
                self._limit(
                    LIMIT_CHECKED_ENDPOINTS, f"over {MAX_CHECKED_ENDPOINTS} endpoints to check; left out: {name}"
                )
            target = None
        kept = self.health.pop(name, None)
        if kept is not None and old is not None:
            self._failing -= {(name, e) for e, i in old.positions.items() if _counted(kept[i]) == FAILS}
            self._passing -= sum(1 for state in kept if _counted(state) == PASSES)
        if target is None:
            return old is not None
        self.targets[name] = target
        self._checked += len(target.endpoints)
        states = bytearray(len(target.endpoints))
        if kept is not None and old is not None:  # endpoints that stay keep what was reported of them
            for endpoint, i in target.positions.items():
                j = old.positions.get(endpoint)
                if j is not None:
                    states[i] = kept[j]
            self._failing |= {(name, e) for e, i in target.positions.items() if _counted(states[i]) == FAILS}
            self._passing += sum(1 for state in states if _counted(state) == PASSES)
        self.health[name] = states
        return True

    # -- what it reports ---------------------------------------------------------------------------------

    def on_report(self, raw: bytes) -> set[str]:
        """A message of the stream after the first; the clusters whose health (as counted) changed."""
        if len(raw) > MAX_REPORT_BYTES:
            self._limit(LIMIT_REPORT_SIZE, f"a health report of {len(raw)} bytes (at most {MAX_REPORT_BYTES})")
            return set()
        if raw == self._last_report and not self._settling:
            return set()  # nothing changed since the last report: the steady state, one comparison
        differing = _changed_entries(self._last_report, raw, self._layout)
        if differing is None:
            return self._read_whole(raw)
        # Only some clusters' entries differ (an endpoint's health flipped): decode those, and those settling.
        self._last_report = raw
        self.reports += 1
        changed: set[str] = set()
        self._budget = self._checked + 64
        layout = self._layout
        for index in sorted(differing | self._settling_entries):
            try:
                cluster = hds_pb2.ClusterEndpointsHealth.FromString(raw[layout.starts[index] : layout.ends[index]])
            except DecodeError:
                return self._read_whole(raw)
            changed |= self._apply_cluster(index, cluster)
        self._after_apply()
        return changed

    def _read_whole(self, raw: bytes) -> set[str]:
        try:
            message = hds_pb2.HealthCheckRequestOrEndpointHealthResponse.FromString(raw)
        except DecodeError:
            self._limit(LIMIT_BAD_REPORT, "a health report that does not decode")
            return set()
        self._last_report = raw
        self._layout = _NO_LAYOUT
        self._settling_entries.clear()
        if not message.HasField("endpoint_health_response"):
            return set()
        self.reports += 1
        self._layout = _layout(raw)  # entry i of the report is cluster_endpoints_health[i] (or no layout)
        changed: set[str] = set()
        self._budget = self._checked + 64  # entries read at most: a proxy reports each endpoint once
        for index, cluster in enumerate(message.endpoint_health_response.cluster_endpoints_health):
            changed |= self._apply_cluster(index, cluster)
            if self._budget < 0:
                break
        self._after_apply()
        return changed

    def _apply_cluster(self, index: int, cluster: hds_pb2.ClusterEndpointsHealth) -> set[str]:
        """Fold in the report's entry `index`, one cluster's endpoints."""
        reported_name = cluster.cluster_name
        name = reported_name[len(HDS_NAME_PREFIX) :] if reported_name.startswith(HDS_NAME_PREFIX) else ""
        states = self.health.get(name)
        target = self.targets.get(name)
        changed = False
        settling = False
        for locality in cluster.locality_endpoints_health:
            for reported in locality.endpoints_health:
                self._budget -= 1
                if self._budget < 0:
                    return {name} if changed else set()
                address = reported.endpoint.address.socket_address
                endpoint = f"{address.address}:{address.port_value}"
                i = target.positions.get(endpoint) if target is not None else None
                if i is None or states is None:
                    self._unknown += 1
                    continue
                was = states[i]
                now = states[i] = _update(was, reported.health_status)
                if _counted(now) != _counted(was):
                    changed = True
                    self._passing += (_counted(now) == PASSES) - (_counted(was) == PASSES)
                    if _counted(now) == FAILS:
                        self._failing.add((name, endpoint))
                    else:
                        self._failing.discard((name, endpoint))
                settling |= 0 < _streak(now) < FAILING_REPORTS
        if settling:
            self._settling_entries.add(index)
        else:
            self._settling_entries.discard(index)
        return {name} if changed else set()

    def _after_apply(self) -> None:
        self._settling = bool(self._settling_entries)
        if self._unknown:  # expected once right after a specifier change (a report already on its way): no warning
            self._limit(LIMIT_UNKNOWN_ENDPOINT, f"{self._unknown} endpoints it was not asked to check", warn=False)
            self._unknown = 0
        if self._budget < 0:
            self._limit(LIMIT_UNKNOWN_ENDPOINT, "more endpoint entries than it was asked to check (the rest ignored)")

    def _limit(self, limit: str, what: str, *, warn: bool = True) -> None:
        self.limited(limit)
        if not warn:
            log.debug("proxy %s health reports: %s", self.node_id, what, extra={"node_id": self.node_id})
        elif limit not in self._warned:  # once per stream and limit
            self._warned.add(limit)
            log.warning("proxy %s health reports: %s", self.node_id, what, extra={"node_id": self.node_id})

    # -- what it shows -----------------------------------------------------------------------------------

    def counts(self, cluster: str) -> tuple[int, int] | None:
        """(passing, checked) endpoints of a cluster on this proxy; None before its first report on it."""
        states = self.health.get(cluster)
        if not states or not any(_counted(state) for state in states):
            return None
        return sum(1 for state in states if _counted(state) == PASSES), len(states)

    def failing(self, cluster: str | None = None) -> list[UnhealthyEndpoint]:
        """The endpoints counted as failing (of one cluster, or all), by cluster and address."""
        return [
            {"cluster": name, "endpoint": endpoint, "health_check_port": self.targets[name].endpoints[endpoint]}
            for name, endpoint in sorted(self._failing)
            if cluster is None or name == cluster
        ]

    def failing_count(self) -> int:
        return len(self._failing)

    def view(self) -> HealthView:
        failing = self.failing()
        return {
            "clusters": len(self.targets),
            "endpoints": self._checked,
            "healthy": self._passing,
            "unhealthy_count": len(failing),
            "unhealthy": failing[:MAX_SHOWN_UNHEALTHY],
            "reports": self.reports,
        }


# -- reading reports by their bytes -------------------------------------------------------------------------
#
# Envoy re-sends the whole report every interval. When one endpoint's health flips, the new report has the same
# length and differs in a few bytes (its status, in the cluster's entry and in the legacy flat list), so the
# entries that differ are found from the bytes (an XOR of the two reports, in C) and only they are decoded: the
# cost of a flip does not grow with the endpoints reported. Anything else (a length change, a difference in an
# entry's header) reads the whole report.

MAX_DIFFERING_BYTES = 64  # beyond this, the whole report is read


def _changed_entries(old: bytes, new: bytes, layout: Layout) -> set[int] | None:
    """The cluster entries of `layout` (offsets valid in `old`) whose bytes differ in `new`; None if `new` may be
    laid out otherwise (read it all)."""
    if not layout.starts or len(old) != len(new):
        return None
    differing = int.from_bytes(old, "little") ^ int.from_bytes(new, "little")
    entries: set[int] = set()
    for _ in range(MAX_DIFFERING_BYTES):
        if not differing:
            return entries
        offset = ((differing & -differing).bit_length() - 1) // 8
        differing &= ~(0xFF << (offset * 8))
        index = bisect.bisect_right(layout.starts, offset) - 1
        if index < 0 or offset >= layout.ends[index]:
            continue  # outside every cluster entry: the legacy flat list, which is not read
        if offset < layout.names_end[index]:
            return None  # an entry's name changed
        entries.add(index)
    return None


def _layout(raw: bytes) -> Layout:
    """The layout of a report as Envoy encodes one: `endpoint_health_response` alone, each cluster entry
    starting with its name; otherwise none (then every changed report is read whole)."""
    layout = Layout()
    try:
        if not raw or raw[0] != 0x12:  # endpoint_health_response: field 2, length-delimited
            return _NO_LAYOUT
        length, position = _read_varint(raw, 1)
        end = position + length
        if end != len(raw):
            return _NO_LAYOUT
        while position < end:
            key, position = _read_varint(raw, position)
            size, position = _read_varint(raw, position)
            if key & 7 != 2:
                return _NO_LAYOUT
            if key >> 3 == 2:  # cluster_endpoints_health
                if not size or raw[position] != 0x0A:  # its cluster_name first
                    return _NO_LAYOUT
                name_size, name_start = _read_varint(raw, position + 1)
                layout.starts.append(position)
                layout.ends.append(position + size)
                layout.names_end.append(name_start + name_size)
            position += size
    except IndexError:
        return _NO_LAYOUT
    return layout if position == end else _NO_LAYOUT


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _update(state: int, status: int) -> int:
    """An endpoint's state after one more report of it."""
    if status in _PASSING:
        return PASSES
    if status == health_check_pb2.UNKNOWN:
        return state
    streak = min(_streak(state) + 1, FAILING_REPORTS)
    return (FAILS if streak >= FAILING_REPORTS else _counted(state)) | streak << 2


def _changed_names(older: Snapshot | None, newer: Snapshot) -> set[str] | None:
    """Cluster names whose cluster or load assignment may differ; None: not known (look at all)."""
    if older is None:
        return None
    clusters = newer.changed_since(older, CLUSTER)
    endpoints = newer.changed_since(older, ENDPOINT)
    if clusters is None or endpoints is None:
        return None
    return clusters | endpoints


def summarize(per_proxy: Iterable[tuple[str, tuple[int, int]]]) -> tuple[int, int, list[str]] | None:
    """Several proxies' (passing, checked) counts of one cluster: the fewest passing (the worst proxy), the
    most checked, and the proxies on which none passes; None if no proxy reported."""
    seen = list(per_proxy)
    if not seen:
        return None
    return (
        min(passing for _, (passing, _) in seen),
        max(checked for _, (_, checked) in seen),
        sorted(node for node, (passing, _) in seen if passing == 0),
    )
