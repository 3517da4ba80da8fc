"""End to end: the xDS connection's lifetime with a real Envoy. At the maximum connection age the control
plane closes the connection, Envoy reconnects and, holding the current versions, is sent nothing again;
Envoy's HTTP/2 keepalive pings are answered, not punished with GOAWAY (too_many_pings)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.e2e import (
    PROXY_LABELS,
    endpoint,
    free_udp_port,
    launch_control_plane,
    send_until_answer,
    virtual_service,
    wait_until,
)

CX_TOTAL = "cluster.xds_cluster.upstream_cx_total"  # connections Envoy opened to the control plane
GOAWAYS = "cluster.xds_cluster.upstream_cx_close_notify"  # ... that the control plane closed with GOAWAY
UPDATES = ("cluster_manager.cds.update_success", "listener_manager.lds.update_success")


@pytest.fixture
def serve_flags() -> list[str]:
    return []


@pytest.fixture
def control_plane(request: pytest.FixtureRequest, tmp_path: Path, vs_dir: Path, serve_flags: list[str]):
    yield from launch_control_plane(request, tmp_path, ["--dir", str(vs_dir), *serve_flags], vs_dir)


@pytest.mark.parametrize("serve_flags", [["--max-connection-age", "1", "--max-connection-age-grace", "1"]])
def test_at_the_maximum_connection_age_envoy_reconnects_and_is_sent_nothing_again(
    control_plane, envoy, workers, vs_files
):
    worker, port = workers("worker-a"), free_udp_port()
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(worker, health=False)]))
    envoy.wait_listener("calls-l", port)
    assert send_until_answer(port) == "worker-a"
    before = envoy.stats()

    # Two reconnects: the first new stream has fully played out once the second connection opens.
    wait_until(lambda: envoy.stats()[CX_TOTAL] >= before[CX_TOTAL] + 2, "Envoy to reconnect twice", timeout=30)
    wait_until(lambda: envoy.stats()["control_plane.connected_state"] == 1, "Envoy to be connected again")
    after = envoy.stats()
    assert {name: after[name] for name in UPDATES} == {name: before[name] for name in UPDATES}
    assert control_plane.log().count(f"proxy {envoy.node_id} connected") >= 3
    assert send_until_answer(port) == "worker-a"


@pytest.mark.parametrize("ads_variant", ["sotw"])
def test_envoy_keepalive_pings_are_not_refused(control_plane, start_envoy, workers, vs_files):
    """gRPC's default allows one ping per 5 minutes on a quiet connection and sends GOAWAY after the
    third ping too soon: an Envoy pinging every 2 s would be disconnected within about 8 s."""
    worker, port = workers("worker-a"), free_udp_port()
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(worker, health=False)]))
    envoy = start_envoy(PROXY_LABELS, bootstrap_args=["--keepalive", "2"])
    envoy.wait_listener("calls-l", port)

    # 5 or more pings on a connection that carries nothing else: refused pings would end it at the third.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = envoy.stats()
        assert (stats[CX_TOTAL], stats.get(GOAWAYS, 0), stats["control_plane.connected_state"]) == (1, 0, 1)
        time.sleep(0.5)  # the interval between samples of an observation window, not a synchronisation
    assert send_until_answer(port) == "worker-a"
