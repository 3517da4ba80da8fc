"""Run the control plane: a source feeding the cache, the ADS server, the admin port."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from .admin import AdminServer, Handler
from .files import DirectorySource
from .shutdown import GRACE_SECONDS, Shutdown
from .xds.cache import SnapshotCache
from .xds.server import AggregatedDiscoveryService, start_server

log = logging.getLogger(__name__)


async def serve_directory(directory: Path, xds_address: str, admin_host: str, admin_port: int) -> None:
    """Serve the VirtualServices in `directory` until SIGINT or SIGTERM."""
    cache = SnapshotCache()
    source = DirectorySource(directory, cache)
    source.load()
    service = AggregatedDiscoveryService(cache)
    await _run(
        service,
        xds_address,
        admin_host,
        admin_port,
        background=[source.watch()],
        description=f"VirtualServices from {directory}",
    )


async def serve_kubernetes(
    kubeconfig: Path | None, namespaces: Sequence[str], xds_address: str, admin_host: str, admin_port: int
) -> None:
    """Serve the cluster's VirtualServices (in `namespaces`, or all) until SIGINT or SIGTERM."""
    from .operator.kube import api_client
    from .operator.pods import PodIndex
    from .operator.source import KubernetesSource, start_watches
    from .operator.status import StatusWriter

    api = api_client(kubeconfig, connections=2 * max(1, len(namespaces)) + 4)
    pods = PodIndex()
    cache = SnapshotCache(pods.ready_ips)
    writer = StatusWriter(api)
    source = KubernetesSource(cache, pods, writer)
    service = AggregatedDiscoveryService(cache, identify=source.identify, on_progress=source.on_progress)
    source.bind(service)
    reflectors = start_watches(source, api, namespaces, asyncio.get_running_loop())
    where = "namespaces " + ", ".join(namespaces) if namespaces else "all namespaces"
    try:
        await _run(
            service,
            xds_address,
            admin_host,
            admin_port,
            background=[writer.run()],
            before_serving=source.synced(),
            description=f"VirtualServices from Kubernetes ({where})",
            routes={"/debug/virtualservices": lambda: (200, _records(source))},
        )
    finally:
        for reflector in reflectors:
            reflector.stop(timeout=0.2)
        api.close()


def _records(source: Any) -> dict:
    return {
        f"{namespace}/{name}": {
            "generation": record.generation,
            "serving_generation": record.serving_generation,
            "rejected": record.rejected,
            "status": source.status.written((namespace, name)) if source.status else None,
        }
        for (namespace, name), record in sorted(source.records.items())
    }


async def _run(
    service: AggregatedDiscoveryService,
    xds_address: str,
    admin_host: str,
    admin_port: int,
    *,
    background: Sequence[Coroutine[Any, Any, None]],
    description: str,
    before_serving: Coroutine[Any, Any, None] | None = None,
    routes: dict[str, Handler] | None = None,
) -> None:
    """Admin port first (so probes answer), then wait for the source's first state, then serve xDS."""
    serving = False

    def readyz() -> tuple[int, object]:
        return (200, "ready\n") if serving else (503, "starting\n")

    admin = AdminServer(
        {
            "/healthz": lambda: (200, "ok\n"),
            "/readyz": readyz,
            "/debug/proxies": lambda: (200, service.proxies()),
            "/debug/runtime": lambda: (200, _runtime(service)),
            **(routes or {}),
        }
    )
    bound_admin = await admin.start(admin_host, admin_port)
    tasks = [asyncio.create_task(work) for work in background]
    shutdown = Shutdown(asyncio.get_running_loop())
    stop = shutdown.requested
    stopping = asyncio.create_task(stop.wait())
    server = None
    try:
        if before_serving is not None:
            log.info("waiting for the first complete list before serving xDS")
            await asyncio.wait([stopping, asyncio.create_task(before_serving), *tasks], return_when="FIRST_COMPLETED")
            _raise_if_failed(tasks)
            if stop.is_set():
                return
        server, bound_xds = await start_server(service, xds_address)
        serving = True
        log.info(
            "serving xDS on %s (port %d), admin on %s:%d, %s",
            xds_address,
            bound_xds,
            admin_host,
            bound_admin,
            description,
        )
        await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
        _raise_if_failed(tasks)
    finally:
        serving = False
        for task in [stopping, *tasks]:
            task.cancel()
        if server is not None:
            # Refuse new streams first, then end the open ones: proxies reconnect to another replica.
            stopped = asyncio.create_task(server.stop(GRACE_SECONDS))
            await asyncio.sleep(0)
            log.info("shutting down: closing %d xDS stream(s) (grace %.0fs)", service.drain(), GRACE_SECONDS)
            await stopped
        await admin.stop()
        log.info("stopped")


def _runtime(service: AggregatedDiscoveryService) -> dict[str, int]:
    """What must not grow with churn: asyncio tasks, streams, cache groups and watches, resident memory."""
    try:
        with open("/proc/self/statm") as statm:  # Linux; the field is in pages
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        rss = 0  # not Linux: unknown
    return {"tasks": len(asyncio.all_tasks()), **service.counts(), "rss_bytes": rss}


def _raise_if_failed(tasks: Sequence[asyncio.Task]) -> None:
    """A background task that ended on its own failed: raise why."""
    for task in tasks:
        if task.done() and not task.cancelled():
            task.result()
            raise RuntimeError(f"{task.get_coro().__qualname__} stopped unexpectedly")
