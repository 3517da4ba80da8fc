"""Whether the DNS names of address endpoints resolve, for the Ready condition: answered from a
cache, looked up in a small thread pool of its own, never on the event loop.

The first question about a name starts a lookup and answers None (not known yet). When an
answer arrives or changes, `on_change` runs (the source recomputes status). A name is looked
up again every `refresh` seconds (every `retry` seconds while it fails) as long as someone
asked about it within `keep` seconds, so a name that starts or stops resolving is noticed
without any other event; names nobody asks about any more are forgotten.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger(__name__)

LOOKUP_THREADS = 2  # a hanging resolver ties up these, not the loop's default executor


@functools.lru_cache(maxsize=65536)  # asked about every pod IP on every status pass
def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def lookup(host: str) -> bool:
    """Blocking: whether the system resolver finds an address for host."""
    try:
        return bool(socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM))
    except (OSError, UnicodeError):  # socket.gaierror is an OSError
        return False


@dataclass
class _Entry:
    resolves: bool | None = None
    asked: float = 0.0  # loop time of the last question


class DnsCache:
    def __init__(
        self,
        on_change: Callable[[], None],
        *,
        refresh: float = 30.0,
        retry: float = 5.0,
        keep: float = 600.0,
        resolve: Callable[[str], bool] = lookup,
    ):
        self._on_change = on_change
        self._refresh, self._retry, self._keep = refresh, retry, keep
        self._resolve = resolve
        self._entries: dict[str, _Entry] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._lookups: set[asyncio.Future] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def resolves(self, host: str) -> bool | None:
        """True or False from the cache; None while the first lookup runs. Call on the event loop."""
        if is_ip(host):
            return True
        loop = asyncio.get_running_loop()
        entry = self._entries.get(host)
        if entry is None:
            entry = self._entries[host] = _Entry()
            self._start(host)
        entry.asked = loop.time()
        return entry.resolves

    def close(self) -> None:
        for pending in [*self._lookups, *self._timers.values()]:
            pending.cancel()
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

    def _answered(self, host: str, future: asyncio.Future) -> None:
        self._lookups.discard(future)
        entry = self._entries.get(host)
        if future.cancelled() or entry is None:
            return
        answer = bool(future.result()) if future.exception() is None else False
        loop = asyncio.get_running_loop()
        if loop.time() - entry.asked > self._keep:
            del self._entries[host]  # nobody asks any more
            return
        changed, entry.resolves = entry.resolves != answer, answer
        if changed:
            log.info("address %s %s", host, "resolves" if answer else "does not resolve")
            self._on_change()
        self._timers[host] = loop.call_later(self._refresh if answer else self._retry, self._again, host)

    def _again(self, host: str) -> None:
        self._timers.pop(host, None)
        if host in self._entries:
            self._start(host)
