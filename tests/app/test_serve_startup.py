"""Starting `xds-operator serve`: a bad or busy port or address is reported by its flag (no traceback, no
warning); durations must be finite; an IPv6 xDS address is served."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from tests.support.certs import make_pki
from xds_operator.cli import main


def serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`serve --dir` (an empty directory) with these arguments; it must end on its own."""
    command = [sys.executable, "-m", "xds_operator.cli", "serve", "--dir", str(tmp_path), "--xds-address", "127.0.0.1"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)


@contextmanager
def serving(tmp_path: Path, log: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`serve --dir` (an empty directory) with these arguments, its stderr in log, until it serves xDS: the
    process and its xDS port. Terminated afterwards."""
    command = [sys.executable, "-m", "xds_operator.cli", "serve", "--dir", str(tmp_path), "--admin-port", "0"]
    with log.open("w") as stderr:
        process = subprocess.Popen([*command, *args], stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while not (started := re.search(r"serving xDS \(.*?\) on \S+ \(port (\d+)\)", log.read_text())):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "timed out waiting for the server"
            time.sleep(0.05)
        yield process, int(started.group(1))
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A TCP port another socket listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("flag", ["--xds-port", "--admin-port"])
@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_a_port_out_of_range_is_refused(tmp_path: Path, flag: str, port: str) -> None:
    # 70000 used to be served silently on 70000 - 65536 = 4464.
    other = "--admin-port" if flag == "--xds-port" else "--xds-port"
    result = serve(tmp_path, flag, port, other, "0")
    assert result.returncode == 2
    assert f"argument {flag}: {port!r}: expected a port" in result.stderr


def test_an_xds_port_in_use_is_reported_by_flag(tmp_path: Path, taken_port: int) -> None:
    result = serve(tmp_path, "--xds-port", str(taken_port), "--admin-port", "0")
    assert result.returncode == 1
    assert f"cannot bind the xDS server to 127.0.0.1:{taken_port}" in result.stderr
    assert "--xds-port" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_serve_on_the_same_xds_port_stops(tmp_path: Path) -> None:
    # gRPC sets SO_REUSEPORT: the second server used to bind the same port too and serve beside the first.
    with serving(tmp_path, tmp_path / "first.log", "--xds-address", "127.0.0.1", "--xds-port", "0") as (first, port):
        second = serve(tmp_path, "--xds-port", str(port), "--admin-port", "0")
        assert second.returncode == 1, second.stderr
        assert f"cannot bind the xDS server to 127.0.0.1:{port}: Address already in use" in second.stderr
        assert "--xds-port" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None  # the first one serves on


def test_an_xds_address_may_carry_the_port(tmp_path: Path, taken_port: int) -> None:
    # `--xds-address 127.0.0.1:18000` was handed to gRPC as "127.0.0.1:18000:18000": a raw gRPC error.
    result = serve(tmp_path, "--xds-address", f"127.0.0.1:{taken_port}", "--admin-port", "0")
    assert result.returncode == 1
    assert f"cannot bind the xDS server to 127.0.0.1:{taken_port}: Address already in use" in result.stderr


def test_an_admin_address_may_carry_the_port(tmp_path: Path, taken_port: int) -> None:
    result = serve(tmp_path, "--xds-port", "0", "--admin-address", f"127.0.0.1:{taken_port}")
    assert result.returncode == 1
    assert f"cannot listen on the admin port 127.0.0.1:{taken_port}: Address already in use" in result.stderr


@pytest.mark.parametrize("flag", ["--xds", "--admin"])
def test_a_port_given_twice_must_agree(flag: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["serve", "--dir", str(tmp_path), f"{flag}-address", "127.0.0.1:18000", f"{flag}-port", "18001"]) == 2
    assert (
        f"{flag}-address 127.0.0.1:18000 names port 18000 but {flag}-port says 18001: give the port once"
        in capsys.readouterr().err
    )


def test_a_bad_address_is_reported_by_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["serve", "--dir", str(tmp_path), "--xds-address", "::1:18000"]) == 2
    assert (
        "--xds-address '::1:18000': not an IPv6 address; with a port, write [ADDRESS]:PORT" in capsys.readouterr().err
    )


def test_an_admin_port_in_use_is_reported_by_flag(tmp_path: Path, taken_port: int) -> None:
    result = serve(tmp_path, "--xds-port", "0", "--admin-address", "127.0.0.1", "--admin-port", str(taken_port))
    assert result.returncode == 1
    assert f"cannot listen on the admin port 127.0.0.1:{taken_port}: Address already in use" in result.stderr
    assert "--admin-port" in result.stderr
    assert "never awaited" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", ["--lease-duration", "--renew-deadline", "--retry-period"])
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_lease_duration_that_is_not_a_finite_number_of_seconds_is_refused(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # NaN passed every consistency check (each comparison with it is false) and reached the election.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # were it to get that far, it would not serve
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exit_:
        main(["serve", flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}: {value!r}: expected a finite number of seconds" in capsys.readouterr().err


def test_an_ipv6_xds_address_is_served(tmp_path: Path) -> None:
    # `--xds-address ::1` was handed to gRPC as "::1:18000", which it cannot bind.
    log = tmp_path / "serve.log"
    with serving(tmp_path, log, "--xds-address", "::1", "--xds-port", "0") as (_, port):
        assert "serving xDS (plaintext) on [::1]:0" in log.read_text()
        with grpc.insecure_channel(f"[::1]:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)


def test_grpcs_own_log_lines_follow_the_log_format(tmp_path: Path) -> None:
    # gRPC's C core wrote its lines (a failed TLS handshake) to stderr in its own format, breaking JSON logs.
    pki = make_pki(tmp_path / "pki")
    log = tmp_path / "serve.log"
    tls = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key), "--log-format", "json"]
    with serving(tmp_path, log, *tls, "--xds-address", "127.0.0.1", "--xds-port", "0") as (_, port):
        deadline = time.monotonic() + 60
        while "Handshake failed" not in log.read_text():
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")  # plaintext: refused
            with channel, pytest.raises(grpc.FutureTimeoutError):
                grpc.channel_ready_future(channel).result(timeout=0.5)
            assert time.monotonic() < deadline, log.read_text()
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]  # every line is JSON
    [handshake, *_] = [r for r in records if "Handshake failed" in r["message"]]
    assert handshake["logger"] == "grpc.core" and handshake["level"] == "info"
    assert handshake["source"].startswith("ssl_transport_security.cc:")
