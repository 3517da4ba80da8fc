"""End to end: endpoint health as a real Envoy sees it, reported to the control plane over HDS.

A worker whose TCP health port closes keeps its UDP port (Envoy's cluster stops sending it datagrams); the
control plane learns it from the proxy's health reports and shows it on /debug/proxies, `xds-operator
status` and the metrics; when the port opens again, the endpoint is healthy again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.support.e2e import endpoint, free_udp_port, virtual_service, wait_until


def _health(control_plane, node_id: str) -> dict | None:
    status, body = control_plane.get("/debug/proxies")
    if status != 200:
        return None
    for proxy in json.loads(body):
        if proxy["node_id"] == node_id:
            return proxy.get("health")
    return None


def _unhealthy_metric(control_plane) -> float:
    _, body = control_plane.get("/metrics")
    for line in body.splitlines():
        if line.startswith("xds_operator_unhealthy_endpoints "):
            return float(line.split()[1])
    raise AssertionError("no xds_operator_unhealthy_endpoints metric")


def test_health_port_closing_and_opening_is_reported_per_proxy(envoy, control_plane, workers, vs_files):
    a, b = workers("worker-a"), workers("worker-b")
    port = free_udp_port()
    vs_files.write(
        "calls.yaml", virtual_service("calls", port, [endpoint(a), endpoint(b)], hash_key="callid", health_check_ms=500)
    )
    envoy.wait_listener("calls-l", port)

    def reported(healthy: int, unhealthy: list[str]) -> bool:
        health = _health(control_plane, envoy.node_id)
        return (
            health is not None
            and health["endpoints"] == 2
            and health["healthy"] == healthy
            and sorted(e["endpoint"] for e in health["unhealthy"]) == unhealthy
        )

    wait_until(lambda: reported(2, []), "both endpoints reported healthy")
    assert _unhealthy_metric(control_plane) == 0
    # The reporting checker's stats are its own: the cluster's health check counters count the cluster's checks.
    stats = envoy.stats()
    assert stats["cluster.@hds@calls-c.health_check.attempt"] > 0
    assert stats["cluster.calls-c.health_check.attempt"] > 0
    assert stats["cluster.calls-c.membership_healthy"] == 2

    closed = time.monotonic()
    a.close_health()
    wait_until(lambda: reported(1, [f"127.0.0.1:{a.port}"]), "worker-a reported unhealthy")
    shown_after = time.monotonic() - closed
    failing = _health(control_plane, envoy.node_id)["unhealthy"]
    assert failing == [{"cluster": "calls-c", "endpoint": f"127.0.0.1:{a.port}", "health_check_port": a.health_port}]
    assert _unhealthy_metric(control_plane) == 1
    # `xds-operator status` names the endpoint, its port and its health check port, per proxy.
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "xds_operator.cli",
            "status",
            "--admin-address",
            f"127.0.0.1:{control_plane.admin_port}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"{envoy.node_id} calls-c: 127.0.0.1:{a.port} (health check port {a.health_port}) fails" in shown.stdout

    opened = time.monotonic()
    a.open_health()
    wait_until(lambda: reported(2, []), "worker-a reported healthy again")
    assert _unhealthy_metric(control_plane) == 0
    # Check interval 500 ms, a report every second, failing after 2 reports in a row (not asserted: timing).
    back_after = time.monotonic() - opened
    print(f"\nFIGURE health-port closed-to-shown={shown_after:.2f}s opened-to-shown={back_after:.2f}s")


def test_removed_cluster_is_no_longer_checked(envoy, control_plane, workers, vs_files):
    a = workers("worker-a")
    port = free_udp_port()
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(a)], health_check_ms=500))
    envoy.wait_listener("calls-l", port)
    wait_until(lambda: (_health(control_plane, envoy.node_id) or {}).get("healthy") == 1, "the endpoint reported")

    a.close_health()
    wait_until(lambda: (_health(control_plane, envoy.node_id) or {}).get("unhealthy_count") == 1, "failing")
    (vs_files.directory / "calls.yaml").unlink()
    wait_until(
        lambda: (
            _health(control_plane, envoy.node_id)
            == {
                "clusters": 0,
                "endpoints": 0,
                "healthy": 0,
                "unhealthy_count": 0,
                "unhealthy": [],
                "reports": _health(control_plane, envoy.node_id)["reports"],
            }
        ),
        "nothing left to check",
    )
    assert _unhealthy_metric(control_plane) == 0
