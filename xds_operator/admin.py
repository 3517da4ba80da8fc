"""The admin HTTP port: health, readiness, metrics and JSON views of connected proxies.

A deliberately small HTTP/1.1 server on asyncio: GET only, one response per connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Payload:
    """A body with its own content type (a str body is plain text, anything else JSON)."""

    content_type: str
    data: bytes


Handler = Callable[[], tuple[int, object]]  # → (status, body: str, Payload or JSON-able)


@dataclass(frozen=True)
class WithQuery:
    """A route that reads the query string: called with its parameters (the last value of each)."""

    handler: Callable[[dict[str, str]], tuple[int, object]]


REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class AdminServer:
    def __init__(self, routes: dict[str, Handler | WithQuery]):
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
            if isinstance(body, Payload):
                kind, payload = body.content_type, body.data
            elif isinstance(body, str):
                kind, payload = "text/plain; charset=utf-8", body.encode()
            else:
                kind, payload = "application/json", json.dumps(body, indent=2).encode() + b"\n"
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
        url = urlsplit(target)
        handler = self._routes.get(url.path)
        if handler is None:
            return 404, f"not found; try one of: {', '.join(sorted(self._routes))}\n"
        try:
            if isinstance(handler, WithQuery):
                query = {key: values[-1] for key, values in parse_qs(url.query).items()}
                return handler.handler(query)
            return handler()
        except Exception:  # a bug in one view must not take the admin port down
            log.exception("admin: GET %s failed", target)
            return 500, "internal error; see the control plane's log\n"
