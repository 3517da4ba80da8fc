"""The admin port under hostile clients (issue 14, A.7): slow requests end, held connections are bounded,
an overlong request line is answered, and /healthz keeps answering throughout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from xds_operator.admin import server as admin
from xds_operator.admin.server import AdminServer


@pytest.fixture
async def server() -> AsyncIterator[tuple[AdminServer, int]]:
    server = AdminServer({"/healthz": lambda: (200, "ok\n")})
    port = await server.start("127.0.0.1", 0)
    try:
        yield server, port
    finally:
        await server.stop()


async def get(port: int, target: str = "/healthz") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within) is not None
    except ConnectionResetError:  # closed with our lines unread: a reset, still the server's close
        return True
    except TimeoutError:
        return False


async def test_a_request_sent_a_header_at_a_time_is_ended_after_the_connection_bound(
    server: tuple[AdminServer, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slowloris: each line arrives well within any per-line timeout, the request never ends."""
    monkeypatch.setattr(admin, "CONNECTION_SECONDS", 1.0)
    admin_server, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for index in range(100):
                writer.write(f"X-{index}: y\r\n".encode())
                await writer.drain()
                await asyncio.sleep(0.2)

    trickling = asyncio.create_task(trickle())
    assert await closed_by_server(reader, 5), "the server kept the connection open"
    assert admin_server.closed["timeout"] == 1
    trickling.cancel()
    writer.close()
    assert (await get(port)).startswith(b"HTTP/1.1 200")


async def test_held_connections_are_bounded_and_healthz_keeps_answering(
    server: tuple[AdminServer, int], caplog: pytest.LogCaptureFixture
) -> None:
    """1,050 connections that send nothing (the file limit in a pod is 1,024): the server keeps at most
    MAX_CONNECTIONS open, closing the oldest for each new one, and a probe is answered."""
    admin_server, port = server
    held = []
    for _ in range(1050):
        held.append(await asyncio.open_connection("127.0.0.1", port))
    try:
        await asyncio.sleep(0.2)
        assert len(admin_server._open) <= admin.MAX_CONNECTIONS
        assert (await get(port)).startswith(b"HTTP/1.1 200")
        assert admin_server.closed["too_many"] >= 1050 - admin.MAX_CONNECTIONS
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "connections open" in r.message]
        assert len(warnings) == 1  # logged once, counted every time
    finally:
        for _, writer in held:
            writer.close()


async def test_an_overlong_request_line_is_answered_without_a_traceback(
    server: tuple[AdminServer, int], caplog: pytest.LogCaptureFixture
) -> None:
    admin_server, port = server
    answer = await get(port, "/" + "a" * 70_000)
    assert answer.startswith(b"HTTP/1.1 431")
    assert admin_server.closed["too_long"] == 1
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert (await get(port)).startswith(b"HTTP/1.1 200")
