"""The admin HTTP port: health, readiness and a JSON view of connected proxies.

A deliberately small HTTP/1.1 server on asyncio: GET only, one response per connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

Handler = Callable[[], tuple[int, object]]  # → (status, body: str or JSON-able)

REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable", 400: "Bad Request"}


class AdminServer:
    def __init__(self, routes: dict[str, Handler]):
        self._routes = routes
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            status, body = self._answer(request_line.decode("latin-1").split())
            payload = body.encode() if isinstance(body, str) else json.dumps(body, indent=2).encode() + b"\n"
            kind = "text/plain; charset=utf-8" if isinstance(body, str) else "application/json"
            writer.write(
                f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, parts: list[str]) -> tuple[int, object]:
        if len(parts) != 3:
            return 400, "bad request\n"
        method, target, _ = parts
        if method != "GET":
            return 405, "only GET is supported\n"
        handler = self._routes.get(target.split("?", 1)[0])
        if handler is None:
            return 404, f"not found; try one of: {', '.join(sorted(self._routes))}\n"
        return handler()
