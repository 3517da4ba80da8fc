"""End to end: a running control plane next to bad files keeps serving the good one to a real Envoy."""

from __future__ import annotations

import os

import pytest

from tests.support.bad_files import BAD_FILES
from tests.support.e2e import (
    endpoint,
    free_udp_port,
    send_until_answer,
    virtual_service,
    wait_all_answered_by,
    wait_until,
)

pytestmark = pytest.mark.parametrize("ads_variant", ["sotw"])  # reading files does not depend on the ADS variant


def test_bad_files_are_reported_and_the_good_one_keeps_serving(control_plane, envoy, workers, vs_files):
    worker = workers("worker-a")
    port = free_udp_port()
    vs_files.write("good.yaml", virtual_service("good", port, [endpoint(worker, health=False)]))
    envoy.wait_listener("good-l", port)
    assert send_until_answer(port) == "worker-a"

    for bad in BAD_FILES:  # written atomically, as an editor or a ConfigMap update would
        temporary = vs_files.directory / f".{bad.name}.tmp"
        temporary.write_bytes(bad.content)
        os.replace(temporary, vs_files.directory / bad.name)
    os.mkfifo(vs_files.directory / ".fifo.tmp")  # a FIFO under a VirtualService name: refused, never opened blocking
    os.replace(vs_files.directory / ".fifo.tmp", vs_files.directory / "fifo.yaml")

    def all_reported() -> bool:
        log = control_plane.log()
        fifo = "fifo.yaml: not a regular file but a FIFO; skipped" in log
        return fifo and all(f"{bad.name}: " in log and bad.error in log for bad in BAD_FILES)

    wait_until(all_reported, "an error for every bad file in the control plane's log")
    assert control_plane.process.poll() is None, "the control plane must survive bad input"
    assert "Traceback" not in control_plane.log()

    # The watch still works after all that: an edit of the good file reaches Envoy.
    moved = free_udp_port()
    vs_files.write("good.yaml", virtual_service("good", moved, [endpoint(worker, health=False)]))
    envoy.wait_listener("good-l", moved)
    wait_all_answered_by(moved, "worker-a")
    assert envoy.listeners() == {"good-l": moved}, "nothing from the bad files reached Envoy"
