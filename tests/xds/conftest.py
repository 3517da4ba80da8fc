"""The in-process ADS server the tests of this folder drive: a cache, the service over it, and a real
grpc.aio channel to it on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.server import AggregatedDiscoveryService, start_server


@pytest.fixture
def cache() -> SnapshotCache:
    return SnapshotCache()


@pytest.fixture
def service(cache: SnapshotCache) -> AggregatedDiscoveryService:
    return AggregatedDiscoveryService(cache)


@pytest.fixture
async def channel(service: AggregatedDiscoveryService) -> AsyncIterator[grpc.aio.Channel]:
    server, port = await start_server(service, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(None)
