"""Fixtures shared across folders: the fake Kubernetes API server (one definition for every test that
needs one) and the Kubernetes-mode control plane in process over it (tests/e2e overrides `operator`
with a real `xds-operator serve` process)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from kubernetes import client

from tests.support.fake_apiserver import FakeApiServer
from tests.support.operator import Operator, running_operator


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    """The fake Kubernetes API server (tests/support/fake_apiserver.py), bookmarks every 0.2 s; after the test,
    no exception may have escaped inside it."""
    with FakeApiServer(bookmark_interval=0.2) as server:
        yield server
        assert server.errors == [], "exceptions inside the fake API server:\n" + "\n".join(server.errors)


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    """The fake API server with its own defaults (its tests and the session helper's, which need no quick
    bookmarks); as with `apiserver`, no exception may have escaped inside it."""
    with FakeApiServer() as fake:
        yield fake
        assert fake.errors == [], "exceptions inside the fake API server:\n" + "\n".join(fake.errors)


@pytest.fixture
def api(server: FakeApiServer) -> Iterator[client.ApiClient]:
    """A real kubernetes client of `server`."""
    with server.api_client() as api_client:
        yield api_client


@pytest.fixture
async def operator(apiserver: FakeApiServer) -> AsyncIterator[Operator]:
    async with running_operator(apiserver) as running:
        yield running
