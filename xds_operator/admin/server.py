"""The admin HTTP port: health, readiness, metrics and JSON views of connected proxies.

A deliberately small HTTP/1.1 server on asyncio: GET only, one response per connection. It keeps
answering probes whatever clients do: a connection gets CONNECTION_SECONDS in all (reading the request
and writing the answer), a request line or header MAX_LINE bytes and MAX_HEADERS lines, and at most
MAX_CONNECTIONS are open at once: one more closes the oldest, so held connections cannot use up the
process's file descriptors (1,024 in a pod by default) nor keep a probe out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

CONNECTION_SECONDS = 10.0  # a connection's whole life: the request read, the answer written
MAX_LINE = 64 * 1024  # bytes of the request line or one header line
MAX_HEADERS = 100  # header lines of a request
MAX_CONNECTIONS = 128  # open at once; one more closes the oldest
LOG_EVERY_SECONDS = 10.0  # a limit that keeps being hit is logged at most this often


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
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
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
        self._open: dict[asyncio.StreamWriter, str] = {}  # open connections, oldest first → peer
        self.closed: Counter[str] = Counter()  # connections ended by a limit, by reason (metrics)
        self._logged: dict[str, float] = {}  # reason → when last logged

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_LINE)
        bound: int = self._server.sockets[0].getsockname()[1]  # (host, port) for IPv4, more for IPv6
        return bound

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        if len(self._open) >= MAX_CONNECTIONS:
            oldest, oldest_peer = next(iter(self._open.items()))
            self._limit_hit("too_many", f"{MAX_CONNECTIONS} connections open: closed the oldest, from {oldest_peer}")
            del self._open[oldest]
            oldest.transport.abort()  # its handler sees the end of its stream and finishes
        self._open[writer] = peer
        try:
            async with asyncio.timeout(CONNECTION_SECONDS):
                status, body = await self._read_request(reader, peer)
                writer.write(_response(status, body))
                await writer.drain()
        except TimeoutError:
            self._limit_hit("timeout", f"connection from {peer} not done within {CONNECTION_SECONDS:g} s: closed")
        except ConnectionError:
            pass
        finally:
            self._open.pop(writer, None)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader, peer: str) -> tuple[int, object]:
        """The answer to the request on `reader`: read its request line and headers (they are not needed)."""
        try:
            request_line = await reader.readline()
            for _ in range(MAX_HEADERS + 1):
                if await reader.readline() in (b"\r\n", b"\n", b""):
                    return self._answer(request_line.decode("latin-1").split())
        except ValueError:  # a line over the reader's limit (asyncio.LimitOverrunError, re-raised so)
            pass
        self._limit_hit("too_long", f"request from {peer} over {MAX_LINE} bytes a line or {MAX_HEADERS} headers")
        return 431, "request line or headers too long\n"

    def _limit_hit(self, reason: str, message: str) -> None:
        """Count it, and log it unless the same limit was logged within LOG_EVERY_SECONDS."""
        self.closed[reason] += 1
        now = time.monotonic()
        if now - self._logged.get(reason, -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS:
            self._logged[reason] = now
            log.warning("admin port: %s (%d such so far)", message, self.closed[reason], extra={"reason": reason})

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


def _response(status: int, body: object) -> bytes:
    if isinstance(body, Payload):
        kind, payload = body.content_type, body.data
    elif isinstance(body, str):
        kind, payload = "text/plain; charset=utf-8", body.encode()
    else:
        kind, payload = "application/json", json.dumps(body, indent=2).encode() + b"\n"
    return (
        f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )


def _peer(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) and len(address) >= 2 else str(address)
