"""End to end over TLS: `xds-operator serve --tls-cert/--tls-key [--client-ca]` and real Envoys bootstrapped
with `xds-operator bootstrap --tls-ca [--tls-cert/--tls-key] [--tls-server-name]`, with certificates made
by the test (tests/certs.py). Every refusal is proven by outcome: the Envoy tried to connect several times
and still has no configuration, and the control plane never saw it as a proxy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from certs import Pki

from .conftest import (
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

ATTEMPTS = 3  # connections a refused Envoy must have tried before we look at what it got


pytestmark = pytest.mark.parametrize("ads_variant", ["sotw"])  # the transport is the same for both ADS variants


@pytest.fixture
def tls_mode() -> str:
    return "tls"


def server_flags(pki: Pki, mode: str) -> list[str]:
    flags = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]
    return flags + (["--client-ca", str(pki.ca.cert)] if mode == "mtls" else [])


@pytest.fixture
def control_plane(request: pytest.FixtureRequest, tmp_path: Path, vs_dir: Path, pki: Pki, tls_mode: str):
    yield from launch_control_plane(request, tmp_path, ["--dir", str(vs_dir), *server_flags(pki, tls_mode)], vs_dir)


def envoy_flags(
    ca: Path | None = None, client: tuple[Path, Path] | None = None, server_name: str | None = None
) -> list[str]:
    flags = ["--tls-ca", str(ca)] if ca else []
    if client:
        flags += ["--tls-cert", str(client[0]), "--tls-key", str(client[1])]
    return flags + (["--tls-server-name", server_name] if server_name else [])


def proxies(plane: ControlPlane) -> set[str]:
    status, body = plane.get("/debug/proxies")
    assert status == 200
    return {proxy["node_id"] for proxy in json.loads(body)}


def assert_refused(envoy: Envoy, plane: ControlPlane) -> dict[str, int]:
    """The Envoy kept trying to connect and got no configuration; return its xds_cluster stats."""
    wait_until(
        lambda: envoy.stats().get("cluster.xds_cluster.upstream_cx_total", 0) >= ATTEMPTS,
        f"Envoy {envoy.node_id} to try {ATTEMPTS} connections",
        timeout=30,
    )
    stats = envoy.stats()
    # Not `control_plane.connected_state`: Envoy sets it to 1 as each attempt opens its stream, before
    # the server's TLS alert ends it (with TLS 1.3 the client's handshake completes first), so a sample
    # can catch an attempt in flight. That it kept retrying and got nothing is the outcome that counts.
    assert stats["cluster_manager.cds.update_success"] == 0
    assert stats["listener_manager.lds.update_success"] == 0
    assert envoy.listeners() == {}
    assert envoy.node_id not in proxies(plane)
    return {name.removeprefix("cluster.xds_cluster."): value for name, value in stats.items()}


def test_envoy_gets_its_config_over_tls_and_datagrams_flow(pki, control_plane, start_envoy, workers, vs_files):
    worker, port = workers("worker-a"), free_udp_port()
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(worker, health=False)]))
    envoy = start_envoy(PROXY_LABELS, bootstrap_args=envoy_flags(pki.ca.cert))
    envoy.wait_listener("calls-l", port)
    assert send_until_answer(port) == "worker-a"
    stats = envoy.stats()
    assert stats["cluster.xds_cluster.ssl.handshake"] >= 1
    assert stats["cluster.xds_cluster.ssl.connection_error"] == 0


@pytest.mark.parametrize("tls_mode", ["mtls"])
def test_mtls_serves_only_envoys_with_a_certificate_from_the_client_ca(
    pki, control_plane, start_envoy, workers, vs_files
):
    worker, port = workers("worker-a"), free_udp_port()
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(worker, health=False)]))
    good = start_envoy(PROXY_LABELS, bootstrap_args=envoy_flags(pki.ca.cert, (pki.client.cert, pki.client.key)))
    no_cert = start_envoy(PROXY_LABELS, bootstrap_args=envoy_flags(pki.ca.cert), wait_live=False)
    untrusted = start_envoy(
        PROXY_LABELS,
        bootstrap_args=envoy_flags(pki.ca.cert, (pki.other_client.cert, pki.other_client.key)),
        wait_live=False,
    )

    good.wait_listener("calls-l", port)
    assert send_until_answer(port) == "worker-a"
    for refused in (no_cert, untrusted):
        assert_refused(refused, control_plane)
    assert proxies(control_plane) == {good.node_id}


def test_a_tls_control_plane_serves_only_envoys_that_verify_it(pki, control_plane, start_envoy, vs_files, workers):
    worker, port = workers("worker-a"), free_udp_port()
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(worker, health=False)]))
    # The server's certificate carries the SANs 127.0.0.1 and localhost: a DNS name verifies too (sent as SNI).
    by_name = start_envoy(PROXY_LABELS, bootstrap_args=envoy_flags(pki.ca.cert, server_name="localhost"))
    other_ca = start_envoy(PROXY_LABELS, bootstrap_args=envoy_flags(pki.other_ca.cert), wait_live=False)
    wrong_name = start_envoy(
        PROXY_LABELS, bootstrap_args=envoy_flags(pki.ca.cert, server_name="xds.example"), wait_live=False
    )
    plaintext = start_envoy(PROXY_LABELS, wait_live=False)

    by_name.wait_listener("calls-l", port)
    assert send_until_answer(port) == "worker-a"
    assert assert_refused(other_ca, control_plane)["ssl.fail_verify_error"] >= 1  # chain not trusted
    assert assert_refused(wrong_name, control_plane)["ssl.fail_verify_san"] >= 1  # trusted, but not that server
    assert_refused(plaintext, control_plane)  # a plaintext HTTP/2 client gets no answer from a TLS server
    assert proxies(control_plane) == {by_name.node_id}
