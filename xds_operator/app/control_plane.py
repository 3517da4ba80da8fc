"""Run the control plane: a source feeding the cache, the ADS server, the admin port."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from xds_operator import __version__
from xds_operator.admin import debug
from xds_operator.admin.metrics import Metrics
from xds_operator.admin.server import AdminServer, Handler, WithQuery
from xds_operator.app.shutdown import GRACE_SECONDS, Shutdown
from xds_operator.app.wiring import KubernetesPlane, build_directory_plane, build_kubernetes_plane
from xds_operator.net import join_host_port
from xds_operator.ports.assigner import PortRange
from xds_operator.xds.server import AggregatedDiscoveryService, start_server
from xds_operator.xds.transport import DEFAULT_POLICY, ConnectionPolicy, ServerTls

if TYPE_CHECKING:  # the kubernetes client is imported only in Kubernetes mode
    from xds_operator.sources.kubernetes.leader import LeaseConfig

log = logging.getLogger(__name__)


async def serve_directory(
    directory: Path,
    xds_address: str,
    admin_host: str,
    admin_port: int,
    *,
    tls: ServerTls | None = None,
    policy: ConnectionPolicy = DEFAULT_POLICY,
    listener_ports: PortRange | None = None,
    port_state: Path | None = None,
) -> None:
    """Serve the VirtualServices in `directory` until SIGINT or SIGTERM (xDS over TLS if `tls`); listeners
    without a port get one from `listener_ports`, recorded in `port_state`."""
    plane = build_directory_plane(directory, listener_ports=listener_ports, port_state=port_state)
    await _run(
        plane.service,
        plane.metrics,
        xds_address,
        admin_host,
        admin_port,
        background=plane.background(),
        description=f"VirtualServices from {directory}",
        tls=tls,
        policy=policy,
    )


async def serve_kubernetes(
    kubeconfig: Path | None,
    namespaces: Sequence[str],
    xds_address: str,
    admin_host: str,
    admin_port: int,
    *,
    tls: ServerTls | None = None,
    policy: ConnectionPolicy = DEFAULT_POLICY,
    election: LeaseConfig | None = None,
    listener_ports: PortRange | None = None,
) -> None:
    """Serve the cluster's VirtualServices (in `namespaces`, or all) until SIGINT or SIGTERM.

    With `election`, every replica serves xDS and only the Lease holder writes status and Events.
    `listener_ports`: where listeners that name no port get one (None: such a listener is invalid).
    """
    from xds_operator.sources.kubernetes.client import api_client

    api = api_client(kubeconfig, connections=2 * max(1, len(namespaces)) + 4)
    if election is not None:  # tells replicas apart in the API server's audit log
        api.user_agent = f"xds-operator/{__version__} ({election.identity})"
    plane = build_kubernetes_plane(api, namespaces, election=election, listener_ports=listener_ports)
    where = "namespaces " + ", ".join(namespaces) if namespaces else "all namespaces"
    description = f"VirtualServices from Kubernetes ({where})"
    if election is not None:
        description += f", status written by the holder of Lease {election.namespace}/{election.name}"
        description += f" (this replica: {election.identity})"
    plane.start_watches()
    try:
        await _run(
            plane.service,
            plane.metrics,
            xds_address,
            admin_host,
            admin_port,
            background=plane.background(),
            before_serving=plane.source.synced(),
            description=description,
            routes=_kubernetes_routes(plane),
            tls=tls,
            policy=policy,
        )
    finally:
        await plane.close()
        api.close()


def _kubernetes_routes(plane: KubernetesPlane) -> dict[str, Handler | WithQuery]:
    """/debug/virtualservices, and /debug/leader with several replicas."""
    routes: dict[str, Handler | WithQuery] = {"/debug/virtualservices": lambda: (200, _records(plane))}
    elector, reports = plane.elector, plane.reports
    if elector is not None and reports is not None:
        routes["/debug/leader"] = lambda: (200, {**elector.describe(), "peers": [p.identity for p in reports.peers()]})
    return routes


def _records(plane: KubernetesPlane) -> dict[str, dict[str, Any]]:
    """/debug/virtualservices: per VirtualService, the generation seen and served, why it is rejected, its status."""
    return {
        f"{namespace}/{name}": {
            "generation": record.generation,
            "serving_generation": record.serving_generation,
            "rejected": record.rejected,
            "waiting_for_port": record.waiting,
            "status": plane.writer.written((namespace, name)),
        }
        for (namespace, name), record in sorted(plane.source.records.items())
    }


async def _run(
    service: AggregatedDiscoveryService,
    metrics: Metrics,
    xds_address: str,
    admin_host: str,
    admin_port: int,
    *,
    background: Sequence[Coroutine[Any, Any, None]],
    description: str,
    before_serving: Coroutine[Any, Any, None] | None = None,
    routes: dict[str, Handler | WithQuery] | None = None,
    tls: ServerTls | None = None,
    policy: ConnectionPolicy = DEFAULT_POLICY,
) -> None:
    """Admin port first (so probes answer), then wait for the source's first state, then serve xDS until a signal.

    `background`: the source's work, run meanwhile; one that ends (it should not) stops the process with its error.
    """
    serving = False

    def readyz() -> tuple[int, object]:
        return (200, "ready\n") if serving else (503, "starting\n")

    admin = AdminServer(
        {
            "/healthz": lambda: (200, "ok\n"),
            "/readyz": readyz,
            "/debug/proxies": lambda: (200, service.proxies()),
            **debug.routes(service, metrics),
            **(routes or {}),
        }
    )
    metrics.read_admin_limits(lambda: admin.closed)
    try:
        bound_admin = await admin.start(admin_host, admin_port)
    except OSError as error:
        for work in [*background, *([before_serving] if before_serving else [])]:
            work.close()  # never started: closed, or Python warns that they were never awaited
        reason = os.strerror(error.errno) if error.errno and error.errno > 0 else error.strerror or str(error)
        raise OSError(
            f"cannot listen on the admin port {join_host_port(admin_host, admin_port)}: {reason}"
            " (see --admin-address, --admin-port)"
        ) from None
    shutdown = Shutdown(asyncio.get_running_loop())
    stopping = asyncio.create_task(shutdown.requested.wait())
    tasks = [asyncio.create_task(work) for work in background]
    synced = asyncio.create_task(before_serving) if before_serving is not None else None
    server = None
    try:
        if synced is not None:
            log.info("waiting for the first complete list before serving xDS")
            await asyncio.wait([stopping, synced, *tasks], return_when=asyncio.FIRST_COMPLETED)
            _raise_if_failed(tasks)
            if shutdown.requested.is_set():
                return
        try:
            server, bound_xds = await start_server(service, xds_address, tls=tls, policy=policy)
        except OSError as error:
            raise OSError(f"{error} (see --xds-address, --xds-port)") from None
        serving = True
        log.info(
            "serving xDS (%s) on %s (port %d), admin on %s, %s",
            "plaintext" if tls is None else "mTLS" if tls.client_ca else "TLS",
            xds_address,
            bound_xds,
            join_host_port(admin_host, bound_admin),
            description,
        )
        await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
        _raise_if_failed(tasks)
    finally:
        serving = False
        started = [stopping, *tasks, *([synced] if synced else [])]
        for task in started:
            task.cancel()
        if server is not None:
            await _drain(server, service)
        # Let the cancelled work finish (a leader starts releasing its Lease) before the caller cleans up.
        await asyncio.gather(*started, return_exceptions=True)
        await admin.stop()
        log.info("stopped")
        shutdown.close()


async def _drain(server: grpc.aio.Server, service: AggregatedDiscoveryService) -> None:
    """Refuse new streams, then end the open ones: proxies reconnect, to another replica if there is one."""
    stopped = asyncio.create_task(server.stop(GRACE_SECONDS))
    await asyncio.sleep(0)  # stop() has begun refusing new streams
    log.info("shutting down: closing %d xDS stream(s) (grace %.0fs)", service.drain(), GRACE_SECONDS)
    await stopped


def _raise_if_failed(tasks: Sequence[asyncio.Task[None]]) -> None:
    """A background task that ended on its own failed: raise why."""
    for task in tasks:
        if task.done() and not task.cancelled():
            task.result()
            raise RuntimeError(f"{getattr(task.get_coro(), '__qualname__', task.get_name())} stopped unexpectedly")
