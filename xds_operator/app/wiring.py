"""The composition root: builds a control plane's parts, each handed everything it needs when it is made.

`serve` runs what these build (control_plane.py); the tests run the same thing against the fake API
server. Kubernetes mode imports the `kubernetes` client, so its modules are imported only when it is built.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xds_operator.admin.metrics import Metrics, condition_counts
from xds_operator.ports.assigner import PortAssigner, PortRange
from xds_operator.sources.directory import DirectorySource
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.hds import HealthDiscoveryService
from xds_operator.xds.server import AggregatedDiscoveryService

if TYPE_CHECKING:
    from kubernetes import client

    from xds_operator.sources.kubernetes.leader import LeaderElector, LeaseConfig
    from xds_operator.sources.kubernetes.pods import PodIndex
    from xds_operator.sources.kubernetes.reflector import Reflector
    from xds_operator.sources.kubernetes.source import KubernetesSource
    from xds_operator.status.peers import ProgressReports
    from xds_operator.status.reconciler import StatusReconciler
    from xds_operator.status.writer import StatusWriter

Background = Coroutine[Any, Any, None]


@dataclass(frozen=True)
class DirectoryPlane:
    """A control plane serving the VirtualServices of a directory."""

    metrics: Metrics
    cache: SnapshotCache
    source: DirectorySource
    service: AggregatedDiscoveryService

    def background(self) -> list[Background]:
        """What runs beside the ADS server: the directory watch."""
        return [self.source.watch()]


def build_directory_plane(
    directory: Path, *, listener_ports: PortRange | None = None, port_state: Path | None = None
) -> DirectoryPlane:
    """Loads the directory (its first state), ready to serve and watch it. `listener_ports`: the range
    listeners without a port get theirs from (None: such a listener is invalid); `port_state`: the file that
    records those ports across restarts (None: not recorded)."""
    metrics = Metrics()
    cache = SnapshotCache(on_commit=metrics.observe_build)
    # One process, nothing to agree with: an assigned port is as good as recorded at once (and then written).
    ports = PortAssigner(listener_ports, settled_when_assigned=True)
    source = DirectorySource(directory, cache, ports, port_state)
    source.load()
    health = HealthDiscoveryService(cache, limited=metrics.limit_hit)
    service = AggregatedDiscoveryService(cache, observer=metrics, health=health)
    _directory_metrics(metrics, service, cache, source)
    return DirectoryPlane(metrics, cache, source, service)


@dataclass(frozen=True)
class KubernetesPlane:
    """A control plane serving a cluster's VirtualServices and writing their status.

    Start the watches (`start_watches`), run `background()` meanwhile, and `close()` at the end.
    """

    metrics: Metrics
    pods: PodIndex
    cache: SnapshotCache
    service: AggregatedDiscoveryService
    writer: StatusWriter
    reconciler: StatusReconciler
    source: KubernetesSource
    reflectors: list[Reflector]
    # With several replicas: the Lease election (only the leader writes) and the replicas' progress reports.
    elector: LeaderElector | None
    reports: ProgressReports | None
    # What the elector calls when this replica starts or stops leading (a test that decides who leads calls it).
    leadership_changed: Callable[[bool], None]

    def start_watches(self) -> None:
        """Start the list/watch threads; `source.synced()` returns once each has listed."""
        for reflector in self.reflectors:
            reflector.start()

    def background(self) -> list[Background]:
        """What runs beside the ADS server: the status writer and reconciler, the election and the reports."""
        work = [self.writer.run(), self.reconciler.run()]
        if self.elector is not None:
            work.append(self.elector.run())
        if self.reports is not None:
            work.append(self.reports.run())
        return work

    async def close(self, reflector_timeout: float = 0.2) -> None:
        """After the background work ended: stop the watches; wait until the Leases are released."""
        for reflector in self.reflectors:
            reflector.stop(timeout=reflector_timeout)
        self.source.close()
        self.reconciler.close()
        if self.elector is not None:
            await self.elector.stopped()  # the Lease is free before the process ends: a peer takes over at once
        if self.reports is not None:
            await self.reports.stopped()


def build_kubernetes_plane(
    api: client.ApiClient,
    namespaces: Sequence[str],
    *,
    election: LeaseConfig | None = None,
    leading: Callable[[], bool] | None = None,
    status_retry_delay: float = 1.0,
    first_status_hold: float | None = None,
    startup_status_hold: float | None = None,
    listener_ports: PortRange | None = None,
) -> KubernetesPlane:
    """The parts of a Kubernetes-mode control plane, wired; call on the event loop that will run it.

    `namespaces`: those to watch (none: all). `election`: several replicas; every one serves xDS, the
    holder of the Lease writes status. `leading`: whether this replica may write, when not decided by
    `election` (default: always). `status_retry_delay`: after a failed write. `first_status_hold`,
    `startup_status_hold`: how long first statuses may be held back (None: the defaults in status/reconciler.py).
    `listener_ports`: the range listeners without a port get theirs from (serve --listener-ports; None: such a
    listener is invalid).
    """
    from xds_operator.sources.kubernetes.leader import LeaderElector
    from xds_operator.sources.kubernetes.pods import PodIndex
    from xds_operator.sources.kubernetes.source import KubernetesSource, watches
    from xds_operator.status.peers import ProgressReports
    from xds_operator.status.reconciler import (
        FIRST_STATUS_HOLD_SECONDS,
        STARTUP_STATUS_HOLD_SECONDS,
        StatusReconciler,
    )
    from xds_operator.status.writer import StatusWriter

    metrics = Metrics()
    pods = PodIndex()
    cache = SnapshotCache(pods.ready_ips, on_commit=metrics.observe_build)
    status_due = asyncio.Event()  # set by whatever a status depends on: the reconciler then runs a pass
    health_changed: set[str] = set()  # clusters whose health on some proxy changed (read by the reconciler)

    def on_health(clusters: set[str]) -> None:
        health_changed.update(clusters)
        status_due.set()

    health = HealthDiscoveryService(cache, pods.identify, on_health=on_health, limited=metrics.limit_hit)
    service = AggregatedDiscoveryService(
        cache, identify=pods.identify, on_progress=status_due.set, observer=metrics, health=health
    )

    def leadership_changed(now_leading: bool) -> None:
        if now_leading:  # a new leader writes every status it computed while following
            status_due.set()
            writer.resume()  # the writer is made below: it asks the elector whether this replica leads

    elector: LeaderElector | None = None
    reports: ProgressReports | None = None
    if election is not None:
        elected = elector = LeaderElector(api, election, on_change=leadership_changed)
        # Replicas publish their proxies' progress, so the leader's status counts every replica's proxies.
        reports = ProgressReports(api, election, on_change=status_due.set, leading=lambda: elected.leading)
        leading = leading or (lambda: elected.leading)
    writer = StatusWriter(api, retry_delay=status_retry_delay, leading=leading or (lambda: True))
    reconciler = StatusReconciler(
        cache,
        pods,
        writer,
        service.progress,
        status_due,
        peers=reports,
        health=health,
        health_changed=health_changed,
        first_status_hold=FIRST_STATUS_HOLD_SECONDS if first_status_hold is None else first_status_hold,
        startup_status_hold=STARTUP_STATUS_HOLD_SECONDS if startup_status_hold is None else startup_status_hold,
    )
    source = KubernetesSource(cache, pods, reconciler, service.reidentify, PortAssigner(listener_ports))
    reflectors = watches(source, api, namespaces, asyncio.get_running_loop())
    _kubernetes_metrics(metrics, service, cache, source, writer, reflectors)
    return KubernetesPlane(
        metrics, pods, cache, service, writer, reconciler, source, reflectors, elector, reports, leadership_changed
    )


def _directory_metrics(
    metrics: Metrics, service: AggregatedDiscoveryService, cache: SnapshotCache, source: DirectorySource
) -> None:
    """Directory mode: what is read at scrape time from the ADS service, the cache and the DirectorySource."""
    metrics.read_serving(service.connections, cache.group_count)
    if service.health is not None:
        metrics.read_health(service.health.unhealthy_endpoints)

    def virtual_services() -> dict[tuple[str, str], int]:
        served, conflicted = len(cache.virtual_services()), len(cache.conflicts)
        return {
            ("Accepted", "True"): served,
            ("Accepted", "False"): source.invalid_documents(),
            ("Conflicted", "True"): conflicted,
            ("Conflicted", "False"): served - conflicted,
        }

    metrics.read_virtual_services(virtual_services)
    metrics.read_source_errors(lambda: {"invalid_document": 0, "unreadable_file": 0, **source.errors})
    metrics.read_listener_ports(source.ports.counts)


def _kubernetes_metrics(
    metrics: Metrics,
    service: AggregatedDiscoveryService,
    cache: SnapshotCache,
    source: KubernetesSource,
    writer: StatusWriter,
    reflectors: Sequence[Reflector],
) -> None:
    """Kubernetes mode: as above, with VirtualServices counted from their status and the watches' restarts."""
    metrics.read_serving(service.connections, cache.group_count)
    if service.health is not None:
        metrics.read_health(service.health.unhealthy_endpoints)

    def statuses() -> Iterable[Mapping[str, Any] | None]:
        return [writer.written(key) for key in list(source.records)]

    metrics.read_virtual_services(lambda: condition_counts(statuses()))

    def errors() -> dict[str, int]:
        return {"invalid_virtualservice": 0, "status_write": 0, "event_write": 0, **source.errors, **writer.failures}

    metrics.read_source_errors(errors)
    metrics.read_status_writes(lambda: writer.writes)
    metrics.read_watches(reflectors)
    metrics.read_listener_ports(source.ports.counts)
