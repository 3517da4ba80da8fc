"""TLS end to end: the flags that make `xds-operator serve` and `xds-operator bootstrap` use the test's
certificates (tests/support/certs.py), and what a refused Envoy looks like."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.certs import Pki
from tests.support.e2e import ControlPlane, Envoy, wait_until

ATTEMPTS = 3  # connections a refused Envoy must have tried before we look at what it got


def server_flags(pki: Pki, mode: str) -> list[str]:
    flags = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]
    return flags + (["--client-ca", str(pki.ca.cert)] if mode == "mtls" else [])


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
