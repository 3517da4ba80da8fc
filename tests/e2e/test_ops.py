"""Operations end to end with the real Envoy: /metrics, `xds-operator status`, /debug/config_dump compared
with Envoy's own /config_dump, `xds-operator render`, and JSON logs.

A real NACK: Envoy binds UDP listeners with SO_REUSEPORT, so a port already held by a socket
without it cannot be bound; Envoy rejects the listener ("cannot bind ...: Address already in use").
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import any_pb2, json_format
from prometheus_client.parser import text_string_to_metric_families

import xds_operator.translate  # noqa: F401 (registers the Envoy message types the JSON mapping needs)
from tests.support.e2e import (
    PROXY_LABELS,
    ControlPlane,
    Envoy,
    endpoint,
    free_udp_port,
    launch_control_plane,
    send_until_answer,
    virtual_service,
    wait_until,
)

BLOCKED_LABELS = {"app": "e2e-blocked"}


@pytest.fixture
def control_plane(request: pytest.FixtureRequest, tmp_path: Path, vs_dir: Path) -> Iterator[ControlPlane]:
    """As conftest's, with global options (e.g. --log-format json) when a test parametrizes it indirectly."""
    yield from launch_control_plane(request, tmp_path, ["--dir", str(vs_dir)], vs_dir, getattr(request, "param", ()))


@pytest.fixture
def held_udp_port() -> Iterator[int]:
    """A UDP port held by a socket without SO_REUSEPORT: an Envoy listener on it fails to bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        yield sock.getsockname()[1]


def metrics(plane: ControlPlane) -> dict[tuple[str, frozenset], float]:
    status, text = plane.get("/metrics")
    assert status == 200, text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(plane: ControlPlane, name: str, **labels: str) -> float:
    return metrics(plane).get((name, frozenset(labels.items())), 0.0)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xds_operator.cli", *args], capture_output=True, text=True, timeout=30, check=False
    )


def proxy_state(plane: ControlPlane, node_id: str) -> dict:
    status, body = plane.get("/debug/proxies")
    assert status == 200
    return next((p for p in json.loads(body) if p["node_id"] == node_id), {})


def all_acked(plane: ControlPlane, node_id: str, types: tuple[str, ...] = ("CDS", "LDS")) -> bool:
    states = proxy_state(plane, node_id).get("types", {})
    return all(states.get(kind, {}).get("state") == "ACKed" for kind in types)


# ---------------------------------------------------------------- metrics


def test_metrics_follow_a_real_envoy_through_an_edit(envoy, control_plane, ads_variant, workers, vs_files):
    a = workers("worker-a")
    port = free_udp_port()
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(a, health=False)]))
    envoy.wait_listener("calls-l", port)
    wait_until(
        lambda: metric(control_plane, "xds_operator_xds_ack_latency_seconds_count", type="LDS") >= 1,
        "the first LDS ACK in the latency histogram",
    )
    assert metric(control_plane, "xds_operator_connected_proxies", variant=ads_variant) == 1
    assert metric(control_plane, "xds_operator_proxy_groups") == 1
    assert metric(control_plane, "xds_operator_virtual_services", condition="Accepted", status="True") == 1
    before = metrics(control_plane)

    def grew(name: str, kind: str) -> bool:
        key = (name, frozenset({"type": kind}.items()))
        return metrics(control_plane).get(key, 0.0) > before.get(key, 0.0)

    new_port = free_udp_port()
    vs_files.write("calls.yaml", virtual_service("calls", new_port, [endpoint(a, health=False)]))
    envoy.wait_listener("calls-l", new_port)
    assert send_until_answer(new_port) == "worker-a"
    wait_until(lambda: grew("xds_operator_xds_ack_latency_seconds_count", "LDS"), "the edit's LDS ACK counted")
    assert grew("xds_operator_xds_pushes_total", "LDS")
    assert grew("xds_operator_xds_pushed_bytes_total", "LDS")
    assert metric(control_plane, "xds_operator_xds_nacks_total", type="LDS") == 0
    assert metric(control_plane, "xds_operator_snapshot_build_seconds_count") >= 2  # the load and the edit

    # An invalid document counts as a source error and as a VirtualService not accepted.
    vs_files.write("broken.yaml", {**virtual_service("broken", free_udp_port(), [endpoint(a)]), "spec": {}})
    wait_until(
        lambda: metric(control_plane, "xds_operator_source_errors_total", kind="invalid_document") == 1,
        "the invalid document counted",
    )
    assert metric(control_plane, "xds_operator_virtual_services", condition="Accepted", status="False") == 1


def test_a_rejected_listener_is_counted_and_status_shows_who_acked_and_who_nacked(
    start_envoy, control_plane, ads_variant, workers, vs_files, held_udp_port
):
    a = workers("worker-a")
    good_port = free_udp_port()
    good = start_envoy(PROXY_LABELS, node_id="edge-good")
    blocked = start_envoy(BLOCKED_LABELS, node_id="edge-blocked")
    vs_files.write("calls.yaml", virtual_service("calls", good_port, [endpoint(a, health=False)]))
    vs_files.write(
        "blocked.yaml",
        virtual_service("blocked", held_udp_port, [endpoint(a, health=False)], selector=BLOCKED_LABELS),
    )
    good.wait_listener("calls-l", good_port)
    wait_until(lambda: metric(control_plane, "xds_operator_xds_nacks_total", type="LDS") >= 1, "Envoy's NACK counted")
    wait_until(lambda: all_acked(control_plane, "edge-good"), "edge-good to ACK everything")
    assert "blocked-l" not in blocked.listeners()  # Envoy really did reject it
    assert metric(control_plane, "xds_operator_connected_proxies", variant=ads_variant) == 2
    assert metric(control_plane, "xds_operator_proxy_groups") == 2

    admin = f"127.0.0.1:{control_plane.admin_port}"
    text = cli("status", "--admin-address", admin)
    assert text.returncode == 0, text.stderr
    lines = {line.split()[0]: line for line in text.stdout.splitlines() if line.startswith("edge-")}
    assert set(lines) == {"edge-good", "edge-blocked"}
    good_cells = re.findall(r"([0-9a-f]{16}) (ACKED|NACKED|PENDING)", lines["edge-good"])
    assert [state for _, state in good_cells] == ["ACKED", "ACKED"], lines["edge-good"]  # CDS and LDS
    assert "app=e2e-ingress,tier=edge" in lines["edge-good"] and ads_variant in lines["edge-good"]
    blocked_cells = re.findall(r"([0-9a-f]{16}) (ACKED|NACKED|PENDING)", lines["edge-blocked"])
    assert [state for _, state in blocked_cells] == ["ACKED", "NACKED"], lines["edge-blocked"]
    assert re.search(r"edge-blocked LDS: NACKED .*cannot bind .*Address already in use", text.stdout), text.stdout

    as_json = cli("status", "--admin-address", admin, "--output", "json")
    assert as_json.returncode == 0, as_json.stderr
    by_node = {proxy["node_id"]: proxy for proxy in json.loads(as_json.stdout)}
    lds = by_node["edge-blocked"]["types"]["LDS"]
    assert lds["state"] == "NACKed" and "Address already in use" in lds["error"]
    assert lds["version"] == blocked_cells[1][0]
    assert by_node["edge-good"]["types"]["LDS"]["state"] == "ACKed"


def test_status_says_clearly_when_the_admin_port_does_not_answer():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        result = cli("status", "--admin-address", f"127.0.0.1:{sock.getsockname()[1]}")
    assert result.returncode == 1
    assert "cannot reach the admin port at 127.0.0.1:" in result.stderr and "--admin-address" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- config dump and render


def envoy_dynamic_resources(envoy: Envoy) -> dict[str, dict[str, tuple[str, any_pb2.Any]]]:
    """Envoy's own view: per type, resource name → (version, resource as an Any), from /config_dump."""
    dump = json.loads(envoy.get("/config_dump?include_eds"))
    found: dict[str, dict] = {"CDS": {}, "EDS": {}, "LDS": {}}
    for config in dump["configs"]:
        kind = config["@type"].rsplit(".", 1)[-1]
        if kind == "ClustersConfigDump":
            for entry in config.get("dynamic_active_clusters", []):
                found["CDS"][entry["cluster"]["name"]] = (entry["version_info"], parse_any(entry["cluster"]))
        elif kind == "EndpointsConfigDump":
            for entry in config.get("dynamic_endpoint_configs", []):
                resource = entry["endpoint_config"]
                found["EDS"][resource["cluster_name"]] = (entry.get("version_info", ""), parse_any(resource))
        elif kind == "ListenersConfigDump":
            for entry in config.get("dynamic_listeners", []):
                state = entry["active_state"]
                found["LDS"][entry["name"]] = (state["version_info"], parse_any(state["listener"]))
    return found


def parse_any(resource: dict) -> any_pb2.Any:
    return json_format.ParseDict(resource, any_pb2.Any())


def ours_by_name(dump: dict) -> dict[str, dict[str, any_pb2.Any]]:
    result = {}
    for kind, of_type in dump["resources"].items():
        key = "cluster_name" if kind == "EDS" else "name"
        result[kind] = {resource[key]: parse_any(resource) for resource in of_type["resources"]}
    return result


def unpacked(packed: any_pb2.Any):
    from google.protobuf import symbol_database

    message = symbol_database.Default().GetSymbol(packed.type_url.split("/", 1)[1])()
    assert packed.Unpack(message)
    return message


def hosts(assignment: endpoint_pb2.ClusterLoadAssignment) -> set[tuple[str, int, int]]:
    return {
        (
            e.endpoint.address.socket_address.address,
            e.endpoint.address.socket_address.port_value,
            e.endpoint.health_check_config.port_value,
        )
        for group in assignment.endpoints
        for e in group.lb_endpoints
    }


def eds_clusters(ours: dict[str, dict[str, any_pb2.Any]]) -> set[str]:
    return {name for name, packed in ours["CDS"].items() if unpacked(packed).type == cluster_pb2.Cluster.EDS}


def test_config_dump_is_what_envoy_runs_and_render_shows_the_same(envoy, control_plane, ads_variant, workers, vs_files):
    a, b = workers("worker-a"), workers("worker-b")
    eds_port, dns_port = free_udp_port(), free_udp_port()
    vs_files.write(
        "calls.yaml",
        [
            virtual_service("rtp", eds_port, [endpoint(a), endpoint(b)], discovery="eds", hash_key="callid"),
            virtual_service("dns", dns_port, [endpoint(a, health=False)], health_check_ms=500),
        ],
    )
    envoy.wait_listener("rtp-l", eds_port)
    envoy.wait_listener("dns-l", dns_port)
    envoy.wait_hosts("rtp-c", {a.port, b.port})
    wait_until(lambda: all_acked(control_plane, envoy.node_id, ("CDS", "EDS", "LDS")), "every type ACKed")

    status, body = control_plane.get(f"/debug/config_dump?node={envoy.node_id}")
    assert status == 200, body
    dump = json.loads(body)
    assert dump["node_id"] == envoy.node_id and dump["group"] == "app=e2e-ingress,tier=edge"
    ours = ours_by_name(dump)
    theirs = envoy_dynamic_resources(envoy)
    assert set(ours["CDS"]) == {"rtp-c", "dns-c"} and set(ours["LDS"]) == {"rtp-l", "dns-l"}
    assert set(ours["EDS"]) == {"rtp-c"}
    # Envoy lists the (resolved) endpoints of every cluster there; only EDS clusters' came over EDS.
    theirs["EDS"] = {name: entry for name, entry in theirs["EDS"].items() if name in eds_clusters(ours)}
    for kind in ("CDS", "EDS", "LDS"):
        assert set(theirs[kind]) == set(ours[kind]), kind
    for kind in ("CDS", "LDS"):  # Envoy shows these exactly as it received them
        for name, packed in ours[kind].items():
            assert unpacked(theirs[kind][name][1]) == unpacked(packed), f"{kind} {name} differs from Envoy's"
    # Endpoints as Envoy holds them, with its defaults filled in (weights, locality, health status,
    # overprovisioning): the same hosts and health-check ports.
    for name, packed in ours["EDS"].items():
        assert (
            hosts(unpacked(theirs["EDS"][name][1]))
            == hosts(unpacked(packed))
            == {
                ("127.0.0.1", a.port, a.health_port),
                ("127.0.0.1", b.port, b.health_port),
            }
        )
    if ads_variant == "sotw":  # state of the world: Envoy records the type's version on each resource
        for kind in ("CDS", "LDS"):
            assert {version for version, _ in theirs[kind].values()} == {dump["resources"][kind]["version"]}

    # Offline, from the same files and the proxy's labels: the same resources and versions.
    rendered = cli("render", str(vs_files.directory), *(f"--label={k}={v}" for k, v in PROXY_LABELS.items()))
    assert rendered.returncode == 0, rendered.stderr
    assert json.loads(rendered.stdout) == dump["resources"]

    status, body = control_plane.get("/debug/config_dump?node=nobody")
    assert status == 404 and "'nobody'" in body and envoy.node_id in body


# ---------------------------------------------------------------- logs


@pytest.mark.parametrize("ads_variant", ["sotw"])
@pytest.mark.parametrize("control_plane", [["--log-format", "json", "--log-level", "info"]], indirect=True)
def test_json_logs_parse_and_carry_node_ids_types_and_versions(
    start_envoy, control_plane, workers, vs_files, held_udp_port
):
    a = workers("worker-a")
    port = free_udp_port()
    blocked_labels = {**PROXY_LABELS, "blocked": "yes"}
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(a, health=False)]))
    vs_files.write(
        "blocked.yaml",
        virtual_service("blocked", held_udp_port, [endpoint(a, health=False)], selector={"blocked": "yes"}),
    )
    envoy = start_envoy(blocked_labels, node_id="edge-json")
    envoy.wait_listener("calls-l", port)

    def records() -> list[dict]:
        # Our lines only: gRPC's C core may write its own (non-JSON) lines to the same stderr.
        text = control_plane.log()
        assert not re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", text, re.MULTILINE), "a text log line"
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def nack() -> dict | None:
        return next((r for r in records() if r["level"] == "warning" and "NACKed" in r["message"]), None)

    record = wait_until(nack, "the NACK logged")
    assert record["node_id"] == "edge-json" and record["type"] == "LDS" and "Address already in use" in record["error"]
    assert re.fullmatch(r"[0-9a-f]{16}", record["version"])
    assert record["logger"] == "xds_operator.xds.stream"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    every = records()
    connected = [r for r in every if r["message"].startswith("proxy edge-json connected")]
    assert len(connected) == 1 and connected[0]["level"] == "info"
    assert connected[0]["node_id"] == "edge-json" and connected[0]["variant"] == "sotw"
    pushes = [r for r in every if r["message"].startswith("push to proxy edge-json: ")]
    assert pushes and {r["node_id"] for r in pushes} == {"edge-json"}
    assert {kind for r in pushes for kind in r["versions"]} == {"CDS", "LDS"}  # one line per push, its types in it
    for push in pushes:
        assert push["level"] == "info"
        assert all(re.fullmatch(r"[0-9a-f]{16}", version) for version in push["versions"].values())
        assert all(f"{kind} {version} (" in push["message"] for kind, version in push["versions"].items())
    assert not [r for r in every if " ACKed " in r["message"]], "ACKs are debug lines"
    assert any(r.get("file", "").endswith("blocked.yaml") for r in every)


def test_removing_the_last_eds_cluster_leaves_every_type_acked(envoy, control_plane, ads_variant, workers, vs_files):
    """Envoy unsubscribes from EDS when its last EDS cluster goes. In state of the world it then takes the
    empty EDS response without answering (it watches nothing), so waiting for an ACK would show the proxy
    PENDING, and its VirtualServices not Programmed, for as long as it stays connected."""
    a = workers("worker-a")
    eds_port, plain_port = free_udp_port(), free_udp_port()
    vs_files.write("eds.yaml", virtual_service("eds", eds_port, [endpoint(a, health=False)], discovery="eds"))
    vs_files.write("plain.yaml", virtual_service("plain", plain_port, [endpoint(a, health=False)]))
    envoy.wait_listener("eds-l", eds_port)
    wait_until(lambda: all_acked(control_plane, envoy.node_id, ("CDS", "EDS", "LDS")), "everything ACKed")
    vs_files.delete("eds.yaml")
    envoy.wait_listener_absent("eds-l")
    wait_until(lambda: all_acked(control_plane, envoy.node_id, ("CDS", "EDS", "LDS")), "everything ACKed again")
    text = cli("status", "--admin-address", f"127.0.0.1:{control_plane.admin_port}")
    assert "PENDING" not in text.stdout, text.stdout
    assert send_until_answer(plain_port) == "worker-a"
