"""Echo workers: the backends of `make run` and of the end-to-end tests.

EchoWorker is a UDP echo worker with a TCP health port. Every datagram is answered with
`<name>: <payload>`, so the sender sees which worker answered. The health port accepts TCP
connections (what Envoy's TCP health check needs) and can be closed to make the worker look
dead while it keeps echoing. TcpEchoWorker answers every chunk read on a TCP connection the
same way; its own port doubles as its health port.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class EchoWorker:
    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0, health_port: int | None = 0):
        self.name = name
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._udp.bind((host, port))
        self.host, self.port = self._udp.getsockname()
        self.received = 0
        self._health: socket.socket | None = None
        self.health_port: int | None = None
        if health_port is not None:
            self.open_health(health_port)
        self._thread = threading.Thread(target=self._echo, name=f"echo-{name}", daemon=True)
        self._thread.start()

    def open_health(self, port: int = 0) -> None:
        """Accept TCP connections on the health port (the same one again if it was open before)."""
        health = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        health.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        health.bind((self.host, port or self.health_port or 0))
        health.listen(64)
        self._health = health
        self.health_port = health.getsockname()[1]
        threading.Thread(target=self._accept, args=(health,), name=f"health-{self.name}", daemon=True).start()

    def close_health(self) -> None:
        """Stop accepting on the health port: Envoy's TCP check then marks this worker unhealthy."""
        if self._health is not None:
            health, self._health = self._health, None
            with contextlib.suppress(OSError):
                health.shutdown(socket.SHUT_RDWR)
            health.close()

    def close(self) -> None:
        self.close_health()
        self._udp.close()

    def _echo(self) -> None:
        while True:
            try:
                payload, sender = self._udp.recvfrom(65535)
            except OSError:
                return  # closed
            self.received += 1
            try:
                self._udp.sendto(self.name.encode() + b": " + payload, sender)
            except OSError:
                return

    @staticmethod
    def _accept(health: socket.socket) -> None:
        while True:
            try:
                connection, _ = health.accept()
            except OSError:
                return  # closed
            connection.close()


class TcpEchoWorker:
    """A TCP echo worker: each chunk received on a connection is answered with `<name>: <chunk>`."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0):
        self.name = name
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(128)
        self.host, self.port = self._listener.getsockname()
        self.connections = 0  # accepted so far (Envoy's health checks included)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name=f"tcp-echo-{name}", daemon=True).start()

    def close(self) -> None:
        """Stop listening and drop every open connection."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            connections, self._open = list(self._open), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.connections += 1
                self._open.add(connection)
            threading.Thread(target=self._echo, args=(connection,), name=f"tcp-echo-{self.name}", daemon=True).start()

    def _echo(self, connection: socket.socket) -> None:
        with connection:
            while True:
                try:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break  # the peer closed its side
                    connection.sendall(self.name.encode() + b": " + chunk)
                except OSError:
                    break
        with self._lock:
            self._open.discard(connection)


def send(host: str, port: int, payload: bytes, *, timeout: float = 1.0) -> bytes | None:
    """Send one datagram from a new source port; return the answer, or None if none came within timeout."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        sock.sendto(payload, address)
        try:
            return sock.recvfrom(65535)[0]
        except TimeoutError:
            return None
