"""End to end over TLS: `xds-operator serve --tls-cert/--tls-key [--client-ca]` and real Envoys bootstrapped
with `xds-operator bootstrap --tls-ca [--tls-cert/--tls-key] [--tls-server-name]`, with certificates made
by the test (tests/support/certs.py). Every refusal is proven by outcome: the Envoy tried to connect several times
and still has no configuration, and the control plane never saw it as a proxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.certs import Pki
from tests.support.e2e import (
    PROXY_LABELS,
    endpoint,
    free_udp_port,
    launch_control_plane,
    send_until_answer,
    virtual_service,
)
from tests.support.e2e_tls import assert_refused, envoy_flags, proxies, server_flags

pytestmark = pytest.mark.parametrize("ads_variant", ["sotw"])  # the transport is the same for both ADS variants


@pytest.fixture
def tls_mode() -> str:
    return "tls"


@pytest.fixture
def control_plane(request: pytest.FixtureRequest, tmp_path: Path, vs_dir: Path, pki: Pki, tls_mode: str):
    yield from launch_control_plane(request, tmp_path, ["--dir", str(vs_dir), *server_flags(pki, tls_mode)], vs_dir)


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
