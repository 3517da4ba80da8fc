"""End to end: a listener that names no port gets one from serve --listener-ports, and a real Envoy forwards
datagrams on it; the record beside the directory says which one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.e2e import (
    ControlPlane,
    endpoint,
    free_udp_port,
    launch_control_plane,
    send_until_answer,
    virtual_service,
    wait_until,
)


@pytest.fixture
def assigned_port() -> int:
    """The one port of the range: free on this machine, so Envoy can bind it."""
    return free_udp_port()


@pytest.fixture
def control_plane(
    request: pytest.FixtureRequest, tmp_path: Path, vs_dir: Path, assigned_port: int
) -> Iterator[ControlPlane]:
    source = ["--dir", str(vs_dir), "--listener-ports", f"{assigned_port}-{assigned_port}"]
    yield from launch_control_plane(request, tmp_path, source, vs_dir)


def test_a_datagram_reaches_the_worker_through_the_assigned_port(envoy, workers, vs_files, assigned_port, vs_dir):
    worker = workers("worker-a")
    document = virtual_service("calls", 0, [endpoint(worker, health=False)])
    del document["spec"]["listeners"][0]["udp"]["port"]
    vs_files.write("calls.yaml", document)
    envoy.wait_listener("calls-l", assigned_port)
    assert send_until_answer(assigned_port) == "worker-a"
    state = vs_dir.parent / f".{vs_dir.name}.listener-ports.json"

    def recorded() -> list[tuple[str, str, int]]:
        try:
            lines = state.read_text().splitlines()[1:]  # JSON Lines, after the header
            entries = [json.loads(line) for line in lines]
            return [(e["name"], item["listener"], item["port"]) for e in entries for item in e["listeners"]]
        except (OSError, ValueError):
            return []

    wait_until(lambda: recorded() == [("calls", "calls-l", assigned_port)], "the port recorded beside the directory")
