"""Fixtures shared across folders: the fake Kubernetes API server (one definition for every test that
needs one) and the Kubernetes-mode control plane in process over it (tests/e2e overrides `operator`
with a real `xds-operator serve` process)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.fake_apiserver import FakeApiServer
from tests.support.operator import Operator, running_operator


@pytest.fixture
def apiserver() -> AsyncIterator[FakeApiServer]:
    with FakeApiServer(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
async def operator(apiserver: FakeApiServer) -> AsyncIterator[Operator]:
    async with running_operator(apiserver) as running:
        yield running
