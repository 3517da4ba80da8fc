"""Whether the DNS names of address endpoints resolve, for the Ready condition: answered from a
cache, looked up in a small thread pool of its own, never on the event loop.

The first question about a name starts a lookup and answers PENDING (not known yet). When an
answer arrives or changes, `on_change(name)` runs (the source recomputes the status of the
VirtualServices that use it). A name is looked up again every `refresh` seconds (every `retry`
seconds while it fails), so a name that starts or stops resolving is noticed without any other
event. When no VirtualService uses a name any more, the source calls `forget`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from xds_operator.net import is_ip
from xds_operator.status.readiness import Resolution

log = logging.getLogger(__name__)

LOOKUP_THREADS = 2  # a hanging resolver ties up these, not the loop's default executor


def lookup(host: str) -> bool:
    """Blocking: whether the system resolver finds an address for host."""
    try:
        return bool(socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM))
    except (OSError, UnicodeError):  # socket.gaierror is an OSError
        return False


class DnsCache:
    def __init__(
        self,
        on_change: Callable[[str], None],
        *,
        refresh: float = 30.0,
        retry: float = 5.0,
        resolve: Callable[[str], bool] = lookup,
    ):
        self._on_change = on_change
        self._refresh, self._retry = refresh, retry
        self._resolve = resolve
        self._answers: dict[str, Resolution] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._lookups: set[asyncio.Future[bool]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def resolves(self, host: str) -> Resolution:
        """The cached answer; PENDING while the first lookup runs. Call on the event loop."""
        if is_ip(host):
            return Resolution.RESOLVES
        if host not in self._answers:
            self._answers[host] = Resolution.PENDING
            self._start(host)
        return self._answers[host]

    def forget(self, host: str) -> None:
        """No VirtualService uses this name any more: drop its answer and stop looking it up."""
        self._answers.pop(host, None)
        timer = self._timers.pop(host, None)
        if timer is not None:
            timer.cancel()

    def close(self) -> None:
        pending: list[asyncio.Future[bool] | asyncio.TimerHandle] = [*self._lookups, *self._timers.values()]
        for each in pending:
            each.cancel()
        self._lookups.clear()
        self._timers.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _start(self, host: str) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="dns")
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._resolve, host)
        self._lookups.add(future)
        future.add_done_callback(lambda done: self._answered(host, done))

    def _answered(self, host: str, future: asyncio.Future[bool]) -> None:
        self._lookups.discard(future)
        if future.cancelled() or host not in self._answers:
            return  # closed, or forgotten meanwhile
        found = bool(future.result()) if future.exception() is None else False
        answer = Resolution.RESOLVES if found else Resolution.DOES_NOT_RESOLVE
        changed = self._answers[host] != answer
        self._answers[host] = answer
        if changed:
            log.info("address %s %s", host, answer.value)
            self._on_change(host)
        earlier = self._timers.pop(host, None)  # one refresh timer per name, even after overlapping lookups
        if earlier is not None:
            earlier.cancel()
        self._timers[host] = asyncio.get_running_loop().call_later(
            self._refresh if found else self._retry, self._again, host
        )

    def _again(self, host: str) -> None:
        self._timers.pop(host, None)
        if host in self._answers:
            self._start(host)
