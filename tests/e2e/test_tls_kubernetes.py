"""End to end in Kubernetes mode over mTLS: the operator (fake API server, real client) serves a real Envoy
identified by its pod, with a client certificate; an Envoy without one gets nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.certs import Pki
from tests.support.e2e import ControlPlane, Envoy, free_port, free_udp_port, send_until_answer
from tests.support.e2e_kube import INGRESS, NS, Cluster, vs_body
from tests.support.e2e_tls import assert_refused, envoy_flags, server_flags

pytestmark = pytest.mark.parametrize("ads_variant", ["sotw"])  # the transport is the same for both ADS variants


@pytest.fixture
def operator_args(pki: Pki) -> list[str]:
    return server_flags(pki, "mtls")


@pytest.fixture
def xds_server(operator: ControlPlane) -> ControlPlane:
    return operator


@pytest.mark.usefixtures("xds_server")
def test_kubernetes_mode_serves_over_mtls(pki, cluster: Cluster, operator, start_envoy: Callable[..., Envoy]):
    worker_port, port = free_udp_port(), free_udp_port()
    cluster.worker_pod("worker-a", worker_port, free_port())
    cluster.create(vs_body("calls", port, worker_port))
    cluster.pod("envoy-0", INGRESS, "127.0.0.1")
    cluster.pod("envoy-1", INGRESS, "127.0.0.1")
    envoy = start_envoy(
        {}, node_id=f"{NS}/envoy-0", bootstrap_args=envoy_flags(pki.ca.cert, (pki.client.cert, pki.client.key))
    )
    no_cert = start_envoy({}, node_id=f"{NS}/envoy-1", bootstrap_args=envoy_flags(pki.ca.cert), wait_live=False)

    envoy.wait_listener("calls-l", port)
    assert send_until_answer(port) == "worker-a"
    cluster.wait_condition("calls", "Programmed", "True")
    assert_refused(no_cert, operator)
