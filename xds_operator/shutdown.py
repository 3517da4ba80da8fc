"""Stopping on SIGTERM / SIGINT within a stated bound.

The first signal starts a drain: the caller closes every ADS stream (so proxies reconnect to
another replica) and gives streams that cannot take their close at once GRACE_SECONDS. A
second signal during the drain exits at once, and a watchdog exits the process if the drain
has not finished EXIT_DEADLINE_SECONDS after the first signal, whatever it is stuck on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

GRACE_SECONDS = 2.0  # how long open ADS streams get to take their close before they are cancelled
EXIT_DEADLINE_SECONDS = GRACE_SECONDS + 3.0  # the process is gone this long after the first signal, at the latest
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Shutdown:
    """Signal handling for one run: `requested` is set by the first SIGINT/SIGTERM."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.requested = asyncio.Event()
        self._loop = loop
        for signum in SIGNALS:
            loop.add_signal_handler(signum, self._first, signum)

    def _first(self, signum: int) -> None:
        name = signal.Signals(signum).name
        log.info(
            "%s: draining (streams get %.0fs; exit within %.0fs; send SIGTERM or SIGINT again to exit now)",
            name,
            GRACE_SECONDS,
            EXIT_DEADLINE_SECONDS,
        )
        for other in SIGNALS:
            # A plain handler, not the loop's: it runs even if the loop is busy.
            self._loop.remove_signal_handler(other)
            signal.signal(other, _exit_now)
        watchdog = threading.Timer(EXIT_DEADLINE_SECONDS, _exit_late)
        watchdog.daemon = True  # a finished drain must not wait for it
        watchdog.start()
        self.requested.set()


def _exit_now(signum: int, _frame: object) -> None:
    log.warning("%s during the drain: exiting now", signal.Signals(signum).name)
    os._exit(128 + signum)


def _exit_late() -> None:
    log.error("the drain did not finish within %.0fs of the signal: exiting", EXIT_DEADLINE_SECONDS)
    os._exit(1)
