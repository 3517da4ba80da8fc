"""Run the control plane: a source feeding the cache, the ADS server, the admin port."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from .admin import AdminServer
from .files import DirectorySource
from .xds.cache import SnapshotCache
from .xds.server import AggregatedDiscoveryService, start_server

log = logging.getLogger(__name__)

GRACE_SECONDS = 2.0  # how long open streams get to finish on shutdown


async def serve_directory(directory: Path, xds_address: str, admin_host: str, admin_port: int) -> None:
    """Serve the VirtualServices in `directory` until SIGINT or SIGTERM."""
    cache = SnapshotCache()
    source = DirectorySource(directory, cache)
    source.load()
    service = AggregatedDiscoveryService(cache)
    serving = False

    def readyz() -> tuple[int, object]:
        return (200, "ready\n") if serving else (503, "starting\n")

    admin = AdminServer(
        {
            "/healthz": lambda: (200, "ok\n"),
            "/readyz": readyz,
            "/debug/proxies": lambda: (200, service.proxies()),
        }
    )
    bound_admin = await admin.start(admin_host, admin_port)
    server = None
    watcher = asyncio.create_task(source.watch())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        server, bound_xds = await start_server(service, xds_address)
        serving = True
        log.info(
            "serving xDS on %s (port %d), admin on %s:%d, VirtualServices from %s",
            xds_address,
            bound_xds,
            admin_host,
            bound_admin,
            directory,
        )
        await asyncio.wait([asyncio.create_task(stop.wait()), watcher], return_when=asyncio.FIRST_COMPLETED)
        if watcher.done():
            watcher.result()  # raises why watching failed
    finally:
        serving = False
        watcher.cancel()
        if server is not None:
            log.info("shutting down: closing xDS streams (grace %.0fs)", GRACE_SECONDS)
            await server.stop(GRACE_SECONDS)
        await admin.stop()
