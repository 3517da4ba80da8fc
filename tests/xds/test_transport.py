"""Transport security and connection settings: TLS / mTLS on the real gRPC server (in process, with real
gRPC clients), the checks of certificate files, the command line's errors, and the bootstrap's TLS
transport socket and keepalive as the real Envoy validates them."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from tests.support.certs import EXPIRED, NOT_YET_VALID, Pki, issue, make_pki
from xds_operator.api import parse_virtual_service
from xds_operator.cli import main
from xds_operator.commands.bootstrap import XDS_CLUSTER
from xds_operator.xds import transport
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.server import AggregatedDiscoveryService, start_server
from xds_operator.xds.snapshot import CLUSTER
from xds_operator.xds.transport import ConnectionPolicy, ServerTls, TlsFileError, load_server_tls

ENVOY = Path(sys.executable).parent / "envoy"
LABELS = {"app": "ingress"}
ANSWER_TIMEOUT = 10.0  # a handshake and a first response, on a loaded machine


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# -- TLS on the wire, with real gRPC clients ------------------------------------------------------


def _cache_with_one_virtual_service() -> SnapshotCache:
    cache = SnapshotCache()
    cluster = {"name": "c", "endpoints": [{"name": "w", "host": {"address": "10.0.0.1"}, "port": 2001}]}
    cache.upsert(
        parse_virtual_service(
            {
                "apiVersion": "servicemesh.l7mp.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "vs", "namespace": "media"},
                "spec": {"selector": LABELS, "listeners": [{"name": "l", "udp": {"port": 3000, "cluster": cluster}}]},
            }
        )
    )
    cache.commit()
    return cache


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[ServerTls | None], object]]:
    """serve(tls) starts an ADS server (one VirtualService for LABELS) and returns its port."""
    servers: list[grpc.aio.Server] = []

    async def start(tls: ServerTls | None) -> int:
        server, port = await start_server(
            AggregatedDiscoveryService(_cache_with_one_virtual_service()), "127.0.0.1:0", tls=tls
        )
        servers.append(server)
        return port

    yield start
    for server in servers:
        await server.stop(None)


async def first_answer(channel: grpc.aio.Channel) -> str:
    """What a proxy on this channel gets for its first CDS request: 'config', or the gRPC status code."""
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
    node = base_pb2.Node(id="proxy-1")
    node.metadata.update({"labels": LABELS})
    try:
        await asyncio.wait_for(call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER)), ANSWER_TIMEOUT)
        response = await asyncio.wait_for(call.read(), ANSWER_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        return error.code().name
    finally:
        call.cancel()
        await channel.close()
    assert response.type_url == CLUSTER and len(response.resources) == 1
    return "config"


def tls_channel(port: int, pki: Pki, *, trust: Path | None = None, client: tuple[Path, Path] | None = None):
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(trust or pki.ca.cert).read_bytes(),
        private_key=client[1].read_bytes() if client else None,
        certificate_chain=client[0].read_bytes() if client else None,
    )
    # A channel of its own (no shared subchannel): every call makes a new connection and handshake.
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=[("grpc.use_local_subchannel_pool", 1)])


async def test_a_tls_server_serves_tls_clients_and_refuses_plaintext(serve, pki: Pki) -> None:
    port = await serve(load_server_tls(pki.server.cert, pki.server.key))
    assert await first_answer(tls_channel(port, pki)) == "config"
    assert await first_answer(grpc.aio.insecure_channel(f"127.0.0.1:{port}")) == "UNAVAILABLE"
    # A client that does not trust the server's CA refuses the server.
    assert await first_answer(tls_channel(port, pki, trust=pki.other_ca.cert)) == "UNAVAILABLE"


async def test_an_mtls_server_serves_only_clients_with_a_certificate_from_its_ca(serve, pki: Pki) -> None:
    port = await serve(load_server_tls(pki.server.cert, pki.server.key, pki.ca.cert))
    assert await first_answer(tls_channel(port, pki, client=(pki.client.cert, pki.client.key))) == "config"
    assert await first_answer(tls_channel(port, pki)) == "UNAVAILABLE"  # no client certificate
    untrusted = (pki.other_client.cert, pki.other_client.key)
    assert await first_answer(tls_channel(port, pki, client=untrusted)) == "UNAVAILABLE"
    assert await first_answer(grpc.aio.insecure_channel(f"127.0.0.1:{port}")) == "UNAVAILABLE"


async def test_a_plaintext_server_still_serves_plaintext_clients(serve, pki: Pki) -> None:
    port = await serve(None)
    assert await first_answer(grpc.aio.insecure_channel(f"127.0.0.1:{port}")) == "config"


async def test_a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not(
    serve, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"

    def install(new_cert: Path, new_key: Path) -> None:
        """Replace both files the way a Secret volume does: whole files, swapped in at once."""
        for source, target in ((new_cert, cert), (new_key, key)):
            temporary = target.with_suffix(".tmp")
            shutil.copyfile(source, temporary)
            os.replace(temporary, target)

    install(pki.server.cert, pki.server.key)
    port = await serve(load_server_tls(cert, key))
    assert await first_answer(tls_channel(port, pki)) == "config"

    install(pki.other_server.cert, pki.other_server.key)  # renewed, by another CA
    await eventually_answers(lambda: tls_channel(port, pki, trust=pki.other_ca.cert), "config")
    assert await first_answer(tls_channel(port, pki)) == "UNAVAILABLE"  # the old certificate is gone

    install(pki.server.cert, pki.other_server.key)  # a key that does not match: not used
    with caplog.at_level(logging.WARNING, logger="xds_operator.xds.transport"):
        await eventually_answers(lambda: tls_channel(port, pki, trust=pki.other_ca.cert), "config", until_log=caplog)
    assert "keeping the previous certificate" in caplog.text and str(key) in caplog.text


async def test_an_expired_certificate_is_not_swapped_in_by_a_reload(
    serve, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copyfile(pki.server.cert, cert)
    shutil.copyfile(pki.server.key, key)
    port = await serve(load_server_tls(cert, key))
    expired = issue(pki.ca, tmp_path / "expired", "server", ips=("127.0.0.1",), validity=EXPIRED)
    for source, target in ((expired.cert, cert), (expired.key, key)):
        shutil.copyfile(source, target.with_suffix(".tmp"))
        os.replace(target.with_suffix(".tmp"), target)
    with caplog.at_level(logging.WARNING, logger="xds_operator.xds.transport"):
        await eventually_answers(lambda: tls_channel(port, pki), "config", until_log=caplog)
    assert f"--tls-cert {cert}: the certificate expired on" in caplog.text
    assert "keeping the previous certificate" in caplog.text


async def eventually_answers(
    channel: Callable[[], grpc.aio.Channel], expected: str, until_log: pytest.LogCaptureFixture | None = None
) -> None:
    """New connections until one gets `expected` (and, with until_log, a warning was logged); each
    answer before that must be `expected` too when waiting for the log."""
    deadline = asyncio.get_running_loop().time() + ANSWER_TIMEOUT
    while True:
        answer = await first_answer(channel())
        if until_log is None and answer == expected:
            return
        if until_log is not None:
            assert answer == expected
            if until_log.records:
                return
        assert asyncio.get_running_loop().time() < deadline, f"still {answer!r} after {ANSWER_TIMEOUT}s"
        await asyncio.sleep(0.1)


# -- checking the files ------------------------------------------------------------------------------


def test_a_key_that_does_not_match_the_certificate_is_named(pki: Pki) -> None:
    with pytest.raises(TlsFileError) as error:
        load_server_tls(pki.server.cert, pki.client.key)
    assert (
        str(error.value)
        == f"--tls-key {pki.client.key}: does not match the certificate in --tls-cert {pki.server.cert}"
    )


def test_missing_and_malformed_files_are_named_with_their_flag(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not pem at all\n")
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    cases = {
        (missing, pki.server.key, None): f"--tls-cert {missing}: no such file",
        (pki.server.cert, missing, None): f"--tls-key {missing}: no such file",
        (pki.server.cert, pki.server.key, missing): f"--client-ca {missing}: no such file",
        (pki.server.cert, pki.server.key, tmp_path): f"--client-ca {tmp_path}: is a directory, expected a PEM file",
        (garbage, pki.server.key, None): f"--tls-cert {garbage}: not a PEM file (no -----BEGIN line)",
        (pki.server.key, pki.server.key, None): f"--tls-cert {pki.server.key}: holds no certificate",
        (pki.server.cert, pki.server.cert, None): f"--tls-key {pki.server.cert}: not a valid PEM private key",
        (pki.server.cert, pki.server.key, broken): f"--client-ca {broken}: not a valid PEM certificate",
    }
    for (cert, key, ca), expected in cases.items():
        with pytest.raises(TlsFileError) as error:
            load_server_tls(cert, key, ca)
        assert str(error.value).startswith(expected), (cert, key, ca)


def test_an_expired_or_not_yet_valid_certificate_is_refused(pki: Pki, tmp_path: Path) -> None:
    expired = issue(pki.ca, tmp_path / "expired", "server", ips=("127.0.0.1",), validity=EXPIRED)
    with pytest.raises(TlsFileError, match=rf"^--tls-cert {expired.cert}: the certificate expired on \d{{4}}-"):
        load_server_tls(expired.cert, expired.key)
    future = issue(pki.ca, tmp_path / "future", "server", ips=("127.0.0.1",), validity=NOT_YET_VALID)
    with pytest.raises(TlsFileError, match=rf"^--tls-cert {future.cert}: the certificate is not valid before "):
        load_server_tls(future.cert, future.key)


def test_serve_with_an_expired_certificate_exits_naming_the_flag(pki: Pki, tmp_path: Path) -> None:
    expired = issue(pki.ca, tmp_path / "expired", "server", ips=("127.0.0.1",), validity=EXPIRED)
    result = subprocess.run(
        [sys.executable, "-m", "xds_operator.cli", "serve", "--dir", str(tmp_path), "--xds-port", "0"]
        + ["--tls-cert", str(expired.cert), "--tls-key", str(expired.key)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"xds-operator: --tls-cert {expired.cert}: the certificate expired on ")


def test_a_renewed_certificate_not_valid_yet_is_taken_once_it_is(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copyfile(pki.server.cert, cert)
    shutil.copyfile(pki.server.key, key)
    monkeypatch.setattr(transport, "RELOAD_CHECK_SECONDS", 0.0)
    reloader = transport.CertificateReloader(load_server_tls(cert, key))
    future = issue(pki.ca, tmp_path / "future", "server", ips=("127.0.0.1",), validity=NOT_YET_VALID)
    shutil.copyfile(future.cert, cert)
    shutil.copyfile(future.key, key)
    with caplog.at_level(logging.WARNING, logger="xds_operator.xds.transport"):
        assert reloader() is None and reloader() is None
    assert caplog.text.count("is not valid before") == 1  # logged once, looked at again
    monkeypatch.setattr(transport, "CLOCK_SKEW_SECONDS", 3 * 86400.0)  # as if its time had come
    assert reloader() is not None


def test_a_certificate_chain_with_its_intermediate_loads(pki: Pki, tmp_path: Path) -> None:
    leaf = issue(pki.ca, tmp_path, "leaf", ips=("127.0.0.1",))
    chain = tmp_path / "chain.pem"
    chain.write_bytes(leaf.cert.read_bytes() + pki.ca.cert.read_bytes())
    tls = load_server_tls(chain, leaf.key, pki.ca.cert)
    assert tls.certificate_chain.count(b"BEGIN CERTIFICATE") == 2 and tls.client_ca == pki.ca.cert.read_bytes()


# -- serve: usage errors and file errors, without a traceback ----------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--client-ca", "ca.pem"], "--client-ca needs --tls-cert and --tls-key"),
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-key", "k.pem"], "--tls-cert and --tls-key go together"),
    ],
)
def test_serve_tls_usage_errors(tmp_path: Path, capsys, flags: list[str], message: str) -> None:
    status, _, err = run(["serve", "--dir", str(tmp_path), *flags], capsys)
    assert status == 2 and message in err


def test_serve_with_a_bad_key_exits_naming_the_flag_and_file_without_a_traceback(pki: Pki, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "xds_operator.cli", "serve", "--dir", str(tmp_path), "--xds-port", "0"]
        + ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.other_client.key)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    key, cert = pki.other_client.key, pki.server.cert
    assert (
        result.stderr.strip() == f"xds-operator: --tls-key {key}: does not match the certificate in --tls-cert {cert}"
    )


def test_serve_rejects_negative_durations(tmp_path: Path, capsys) -> None:
    status, _, err = run(["serve", "--dir", str(tmp_path), "--max-connection-age", "-1"], capsys)
    assert status == 2 and "--max-connection-age" in err and "0 or more" in err


# -- connection policy -------------------------------------------------------------------------------


def test_connection_policy_options() -> None:
    options = dict(ConnectionPolicy(keepalive=60, max_connection_age=1800, max_connection_age_grace=10).grpc_options())
    assert options["grpc.max_connection_age_ms"] == 1_800_000
    assert options["grpc.max_connection_age_grace_ms"] == 10_000
    assert options["grpc.keepalive_time_ms"] == 60_000
    # Envoy's keepalive pings (every 30 s by default) must not count as ping abuse.
    assert options["grpc.http2.min_ping_interval_without_data_ms"] <= 1_000
    off = dict(ConnectionPolicy(keepalive=0, max_connection_age=0).grpc_options())
    assert "grpc.max_connection_age_ms" not in off and "grpc.keepalive_time_ms" not in off


# -- the bootstrap's TLS transport socket and keepalive ----------------------------------------------


def bootstrap(argv: list[str], capsys) -> dict:
    status, out, err = run(["bootstrap", "--node-id", "edge-1", *argv], capsys)
    assert status == 0, err
    return yaml.safe_load(out)


def xds_cluster(config: dict) -> dict:
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == XDS_CLUSTER]
    return cluster


def envoy_validates(tmp_path: Path, config: dict) -> None:
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"envoy rejected the bootstrap:\n{result.stdout}\n{result.stderr}"


def test_bootstrap_mtls_verifies_the_server_by_ca_and_dns_san(pki: Pki, tmp_path: Path, capsys) -> None:
    config = bootstrap(
        ["--xds-address", "xds-operator.system.svc:18000", "--tls-ca", str(pki.ca.cert)]
        + ["--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)],
        capsys,
    )
    socket = xds_cluster(config)["transport_socket"]
    context = socket["typed_config"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    assert context["@type"].endswith("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext")
    assert context["sni"] == "xds-operator.system.svc"
    common = context["common_tls_context"]
    assert common["validation_context"] == {
        "trusted_ca": {"filename": str(pki.ca.cert)},
        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "xds-operator.system.svc"}}],
    }
    assert common["tls_certificates"] == [
        {"certificate_chain": {"filename": str(pki.client.cert)}, "private_key": {"filename": str(pki.client.key)}}
    ]
    assert common["alpn_protocols"] == ["h2"]
    envoy_validates(tmp_path, config)


def test_bootstrap_tls_to_an_ip_matches_an_ip_san_and_sends_no_sni(pki: Pki, tmp_path: Path, capsys) -> None:
    config = bootstrap(["--xds-address", "127.0.0.1:18000", "--tls-ca", str(pki.ca.cert)], capsys)
    context = xds_cluster(config)["transport_socket"]["typed_config"]
    assert "sni" not in context and "tls_certificates" not in context["common_tls_context"]
    assert context["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}
    ]
    envoy_validates(tmp_path, config)
    named = bootstrap(
        ["--xds-address", "10.0.0.5:18000", "--tls-ca", str(pki.ca.cert), "--tls-server-name", "xds.example"], capsys
    )
    context = xds_cluster(named)["transport_socket"]["typed_config"]
    assert context["sni"] == "xds.example"
    assert context["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0]["matcher"] == {
        "exact": "xds.example"
    }


def test_bootstrap_without_tls_has_no_transport_socket_and_keeps_alive(capsys) -> None:
    cluster = xds_cluster(bootstrap([], capsys))
    assert "transport_socket" not in cluster
    http2 = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    keepalive = http2["explicit_http_config"]["http2_protocol_options"]["connection_keepalive"]
    assert keepalive == {"interval": "30s", "timeout": "10s"}
    off = xds_cluster(bootstrap(["--keepalive", "0"], capsys))
    options = off["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["explicit_http_config"]["http2_protocol_options"] == {}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "c.pem", "--tls-key", "k.pem"], "need --tls-ca"),
        (["--tls-server-name", "x"], "need --tls-ca"),
        (["--tls-ca", "ca.pem", "--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--keepalive", "0.5"], "--keepalive 0.5: expected 0 (off) or at least 2 seconds"),
        (["--keepalive", "soon"], "expected a number of seconds"),
    ],
)
def test_bootstrap_tls_and_keepalive_usage_errors(capsys, flags: list[str], message: str) -> None:
    status, out, err = run(["bootstrap", "--node-id", "n", *flags], capsys)
    assert status == 2 and message in err and out == ""
