"""Stopping on SIGTERM / SIGINT within a stated bound.

The first signal starts a drain: the caller closes every ADS stream (so proxies reconnect to
another replica) and gives streams that cannot take their close at once GRACE_SECONDS. A
second signal during the drain exits at once, and the process exits if the drain has not
finished EXIT_DEADLINE_SECONDS after the first signal, whatever it is stuck on.

The signals are received by a thread of their own, not by the event loop, so that bound holds
even when the loop is blocked (say, in a system call that never returns): CPython's C-level
signal handler writes each signal's number to the "wakeup fd" at once, whatever the main thread
is doing, and that thread reads it from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time

log = logging.getLogger(__name__)

GRACE_SECONDS = 2.0  # how long open ADS streams get to take their close before they are cancelled
EXIT_DEADLINE_SECONDS = GRACE_SECONDS + 3.0  # the process is gone this long after the first signal, at the latest
SIGNALS = (signal.SIGINT, signal.SIGTERM)
LOG_SECONDS = 0.5  # how long an exit waits for its log line (the logging lock may be held by a blocked thread)


class Shutdown:
    """Signal handling for one run: `requested` is set (on the loop) by the first SIGINT/SIGTERM.

    Create it on the event loop's thread, the main thread (only it may install signal handlers).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.requested = asyncio.Event()
        self._loop = loop
        self._draining = threading.Event()  # set by the first signal, from the signal thread
        self._receiver, self._sender = socket.socketpair()
        self._sender.setblocking(False)  # the C handler must never block on it
        self._previous_fd = signal.set_wakeup_fd(self._sender.fileno(), warn_on_full_buffer=False)
        # A Python-level handler is what makes CPython catch the signal (and write the wakeup fd);
        # the work is done by the thread.
        self._previous = {signum: signal.signal(signum, _received) for signum in SIGNALS}
        threading.Thread(target=self._receive_signals, name="signals", daemon=True).start()

    def close(self) -> None:
        """Give the signals back, unless a drain began: then its deadline stands until the process is gone."""
        if self._draining.is_set():
            return
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._sender.close()  # ends the thread

    def _receive_signals(self) -> None:
        """The signal thread: start the drain on the first signal, exit on the second or at the deadline."""
        deadline: float | None = None
        with self._receiver:
            while True:
                self._receiver.settimeout(None if deadline is None else max(0.0, deadline - time.monotonic()))
                try:
                    received = self._receiver.recv(64)
                except TimeoutError:
                    _exit(1, "the drain did not finish within %.0fs of the signal: exiting", EXIT_DEADLINE_SECONDS)
                if not received:
                    return  # closed: the run ended without a signal
                for signum in (number for number in received if number in SIGNALS):
                    if deadline is not None:
                        name = signal.Signals(signum).name
                        _exit(128 + signum, "%s during the drain: exiting now", name, level=logging.WARNING)
                    deadline = time.monotonic() + EXIT_DEADLINE_SECONDS
                    self._draining.set()
                    self._start_drain(signum)

    def _start_drain(self, signum: int) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed already: nothing to drain; the deadline holds
            self._loop.call_soon_threadsafe(self._first, signum)

    def _first(self, signum: int) -> None:
        log.info(
            "%s: draining (streams get %.0fs; exit within %.0fs; send SIGTERM or SIGINT again to exit now)",
            signal.Signals(signum).name,
            GRACE_SECONDS,
            EXIT_DEADLINE_SECONDS,
        )
        self.requested.set()


def _received(_signum: int, _frame: object) -> None:
    """Nothing to do on the main thread: the signal thread has the signal from the wakeup fd."""


def _exit(status: int, message: str, *args: object, level: int = logging.ERROR) -> None:
    """Log, then exit at once. The log line gets LOG_SECONDS: if the blocked main thread holds the logging
    lock (writing to a full pipe, say), the exit must not wait for it."""
    reporter = threading.Thread(target=log.log, args=(level, message, *args), daemon=True)
    reporter.start()
    reporter.join(LOG_SECONDS)
    os._exit(status)
