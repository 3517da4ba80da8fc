"""Prometheus metrics of one running control plane, in a registry of its own (GET /metrics on the admin port).

Cheap where it matters: a push or a NACK adds to a plain integer, an ACK to one histogram bucket
(also plain integers). What is a state rather than an event (connected proxies, groups, VirtualServices by
condition) and the counters other parts keep as plain integers (Kubernetes watch restarts and
relists, source errors) are read from their owners only when Prometheus scrapes.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from xds_operator.xds.delta import DeltaStream
from xds_operator.xds.server import Connection
from xds_operator.xds.snapshot import PUSH_ORDER, SHORT_NAMES
from xds_operator.xds.stream import ProxyStream, SotwStream, StreamObserver

PREFIX = "xds_operator_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
VARIANTS = (SotwStream.variant, DeltaStream.variant)
# Kubernetes mode; directory mode has Accepted and Conflicted only.
CONDITIONS = ("Accepted", "Programmed", "Ready", "Conflicted")
CONDITION_STATUSES = ("True", "False", "Unknown")
# The limits on what one xDS client may send (see stream.py): a label of xds_client_limits_total.
CLIENT_LIMITS = (
    "node_id",
    "resource_names",
    "unsupported_type",
    # Health reports (HDS, xds/health.py):
    "health_report_size",
    "health_unknown_endpoint",
    "health_checked_endpoints",
    "health_bad_report",
)
# Envoy usually ACKs within milliseconds; warming clusters (DNS, health checks) can take seconds.
ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BUILD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# A scrape-time reader: yields finished metric families.
Reader = Callable[[], Iterable[Metric]]


class WatchLoop(Protocol):
    """What the metrics read of a list/watch loop (the Kubernetes reflector), without importing it."""

    @property
    def name(self) -> str: ...
    @property
    def watches(self) -> int: ...
    @property
    def lists(self) -> int: ...


class Metrics(StreamObserver):
    """The metrics of one control plane. Pass it as the ADS service's stream observer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.pushes: dict[str, int] = dict.fromkeys(PUSH_ORDER, 0)
        self.pushed_bytes: dict[str, int] = dict.fromkeys(PUSH_ORDER, 0)
        self.nacks: dict[str, int] = dict.fromkeys(PUSH_ORDER, 0)
        self.limits: Counter[str] = Counter(dict.fromkeys(CLIENT_LIMITS, 0))  # a client hit a limit, by limit
        self.ack_latency = {type_url: Buckets(ACK_BUCKETS) for type_url in PUSH_ORDER}
        self.snapshot_build = Buckets(BUILD_BUCKETS)
        self._readers: list[Reader] = [self._xds_counters, self._histograms]
        self.registry.register(_Readers(self._readers))

    # -- hot path (StreamObserver) -------------------------------------------------------------

    def pushed(self, stream: ProxyStream[Any], type_url: str, size: int) -> None:
        self.pushes[type_url] += 1
        self.pushed_bytes[type_url] += size

    def acked(self, stream: ProxyStream[Any], type_url: str, since: float) -> None:
        self.ack_latency[type_url].observe(time.monotonic() - since)

    def nacked(self, stream: ProxyStream[Any], type_url: str) -> None:
        self.nacks[type_url] += 1

    def limited(self, stream: ProxyStream[Any], limit: str) -> None:
        self.limits[limit] += 1

    def limit_hit(self, limit: str) -> None:
        """A health report stream hit a limit (xds/health.py)."""
        self.limits[limit] += 1

    def observe_build(self, seconds: float) -> None:
        self.snapshot_build.observe(seconds)

    # -- read when scraped ---------------------------------------------------------------------

    def read_serving(self, connections: Callable[[], Iterable[Connection]], group_count: Callable[[], int]) -> None:
        """Connected proxies by ADS variant (from the service's connections) and proxy groups (from the cache)."""

        def read() -> Iterator[Metric]:
            by_variant = Counter(connection.stream.variant for connection in connections())
            proxies = GaugeMetricFamily(
                PREFIX + "connected_proxies", "ADS streams open now, by variant", labels=["variant"]
            )
            for variant in VARIANTS:
                proxies.add_metric([variant], by_variant.get(variant, 0))
            yield proxies
            yield GaugeMetricFamily(
                PREFIX + "proxy_groups",
                "Distinct label sets of connected proxies (each shares one snapshot)",
                value=group_count(),
            )

        self._readers.append(read)

    def read_health(self, unhealthy: Callable[[], int]) -> None:
        """Endpoints whose health check fails, summed over the proxies that report them (HDS)."""

        def read() -> Iterator[Metric]:
            yield GaugeMetricFamily(
                PREFIX + "unhealthy_endpoints",
                "Endpoints whose TCP health check fails as the proxies see it, summed over proxies (HDS reports)",
                value=unhealthy(),
            )

        self._readers.append(read)

    def read_virtual_services(self, counts: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        """VirtualServices by (condition, status), e.g. ("Accepted", "False")."""

        def read() -> Iterator[Metric]:
            family = GaugeMetricFamily(
                PREFIX + "virtual_services",
                "VirtualServices by condition and status (directory mode: Accepted False counts invalid documents)",
                labels=["condition", "status"],
            )
            for (condition, status), value in sorted(counts().items()):
                family.add_metric([condition, status], value)
            yield family

        self._readers.append(read)

    def read_listener_ports(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Assigned listener ports (serve --listener-ports): per protocol, assigned, free, and listeners waiting."""

        def read() -> Iterator[Metric]:
            family = GaugeMetricFamily(
                PREFIX + "listener_ports",
                "Ports of --listener-ports by protocol and state: assigned, free (neither assigned nor named "
                "by a VirtualService), waiting (listeners without a port for want of a free one)",
                labels=["protocol", "state"],
            )
            for name, value in sorted(counts().items()):
                protocol, _, state = name.partition("_")
                family.add_metric([protocol.upper(), state], value)
            yield family

        self._readers.append(read)

    def read_source_errors(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Cumulative source errors by kind (invalid documents, unreadable files, failed status writes...)."""

        def read() -> Iterator[Metric]:
            family = CounterMetricFamily(
                PREFIX + "source_errors", "Errors of the configuration source, by kind", labels=["kind"]
            )
            for kind, value in sorted(counts().items()):
                family.add_metric([kind], value)
            yield family

        self._readers.append(read)

    def read_status_writes(self, count: Callable[[], int]) -> None:
        """Kubernetes mode: status subresource writes sent (what status costs the API server)."""

        def read() -> Iterator[Metric]:
            yield CounterMetricFamily(
                PREFIX + "status_writes", "VirtualService status writes sent to the API server", value=count()
            )

        self._readers.append(read)

    def read_admin_limits(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Admin port connections a limit ended: too_many (the oldest, closed for a new one), timeout, too_long."""

        def read() -> Iterator[Metric]:
            family = CounterMetricFamily(
                PREFIX + "admin_connections_closed", "Admin connections ended by a limit, by reason", labels=["reason"]
            )
            for reason, value in sorted({"too_many": 0, "timeout": 0, "too_long": 0, **counts()}.items()):
                family.add_metric([reason], value)
            yield family

        self._readers.append(read)

    def read_watches(self, reflectors: Sequence[WatchLoop]) -> None:
        """Kubernetes list/watch loops: watches re-established (ended, dropped, failed) and full relists (410 Gone)."""

        def read() -> Iterator[Metric]:
            restarts = CounterMetricFamily(
                PREFIX + "kubernetes_watch_restarts",
                "Watches started again after the previous one ended, dropped or failed",
                labels=["watch"],
            )
            relists = CounterMetricFamily(
                PREFIX + "kubernetes_relists",
                "Full lists after the first (the watch's history expired: 410 Gone)",
                labels=["watch"],
            )
            for reflector in reflectors:
                restarts.add_metric([reflector.name], max(reflector.watches - 1, 0))
                relists.add_metric([reflector.name], max(reflector.lists - 1, 0))
            yield restarts
            yield relists

        self._readers.append(read)

    def _xds_counters(self) -> Iterator[Metric]:
        for name, text, values in (
            ("xds_pushes", "Responses sent to proxies, by type", self.pushes),
            ("xds_pushed_bytes", "Bytes of the responses sent to proxies, by type", self.pushed_bytes),
            ("xds_nacks", "Responses proxies rejected (NACKs), by type", self.nacks),
        ):
            family = CounterMetricFamily(PREFIX + name, text, labels=["type"])
            for type_url, value in values.items():
                family.add_metric([SHORT_NAMES[type_url]], value)
            yield family
        limits = CounterMetricFamily(
            PREFIX + "xds_client_limits",
            "Requests of proxies that hit a limit on what one client may send (cut, ignored or logged once), by limit",
            labels=["limit"],
        )
        for limit, value in sorted(self.limits.items()):
            limits.add_metric([limit], value)
        yield limits

    def _histograms(self) -> Iterator[Metric]:
        latency = HistogramMetricFamily(
            PREFIX + "xds_ack_latency_seconds",
            "From the moment a proxy's new snapshot was committed (or the proxy joined its group) "
            "to its ACK of the response carrying it, per type",
            labels=["type"],
        )
        for type_url, buckets in self.ack_latency.items():
            latency.add_metric([SHORT_NAMES[type_url]], buckets.cumulative(), buckets.sum)
        yield latency
        build = HistogramMetricFamily(
            PREFIX + "snapshot_build_seconds",
            "Time one cache commit took to rebuild the snapshots of the proxy groups a change touched",
        )
        build.add_metric([], self.snapshot_build.cumulative(), self.snapshot_build.sum)
        yield build

    def exposition(self) -> bytes:
        """The Prometheus text format of everything above."""
        return generate_latest(self.registry)


class Buckets:
    """A histogram kept as plain integers (an observation is a bisect and two additions; prometheus_client's
    Histogram takes a lock per bucket and costs ~10× more); exported when scraped."""

    def __init__(self, bounds: Sequence[float]):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(upper bound, observations at or below it), ending with +Inf: the Prometheus bucket form."""
        total, result = 0, list[tuple[str, float]]()
        for bound, count in zip([*map(floatToGoString, self.bounds), "+Inf"], self.counts, strict=True):
            total += count
            result.append((bound, total))
        return result


class _Readers(Collector):
    def __init__(self, readers: list[Reader]):
        self._readers = readers

    def collect(self) -> Iterator[Metric]:
        for read in self._readers:
            yield from read()


def condition_counts(statuses: Iterable[Mapping[str, Any] | None]) -> dict[tuple[str, str], int]:
    """Kubernetes mode: count VirtualServices per (condition, status) from their status subresources.

    A VirtualService without a status yet (or without one of the conditions) counts as Unknown.
    """
    counts = {(condition, status): 0 for condition in CONDITIONS for status in CONDITION_STATUSES}
    for status in statuses:
        found: dict[object, str] = {
            c.get("type"): str(c.get("status"))  # one of CONDITION_STATUSES
            for c in (status or {}).get("conditions") or ()
            if isinstance(c, Mapping) and c.get("status") in CONDITION_STATUSES
        }
        for condition in CONDITIONS:
            counts[(condition, found.get(condition, "Unknown"))] += 1
    return counts
