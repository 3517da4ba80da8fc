"""SIGTERM / SIGINT handling (xds_operator.shutdown) in a real process with real signals.

The child runs `Shutdown` on an event loop and, once asked to stop, drains forever (as a
stream stuck behind a proxy that stopped reading would): what ends it is the second signal,
or the watchdog at the exit deadline.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

CHILD = """
import asyncio, sys
from xds_operator import shutdown
shutdown.EXIT_DEADLINE_SECONDS = float(sys.argv[1])

async def main():
    stop = shutdown.Shutdown(asyncio.get_running_loop())
    print("running", flush=True)
    await stop.requested.wait()
    print("draining", flush=True)
    await asyncio.sleep(3600)  # a drain that does not finish

asyncio.run(main())
"""
WAIT = 20.0  # generous: the machine is shared


def start(deadline: float) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(deadline)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "running\n"
    return child


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_during_the_drain_exits_at_once(second: signal.Signals) -> None:
    child = start(deadline=3600)  # the watchdog is not what ends it
    try:
        child.send_signal(signal.SIGTERM)
        assert child.stdout is not None and child.stdout.readline() == "draining\n"
        child.send_signal(second)
        assert child.wait(timeout=WAIT) == 128 + second
        assert f"{second.name} during the drain: exiting now" in child.stderr.read()
    finally:
        child.kill()
        child.wait()


def test_a_drain_that_does_not_finish_is_cut_at_the_exit_deadline() -> None:
    child = start(deadline=0.5)
    try:
        signalled = time.monotonic()
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=WAIT) == 1
        assert time.monotonic() - signalled >= 0.5  # not before the deadline
        assert "did not finish within" in child.stderr.read()
    finally:
        child.kill()
        child.wait()
