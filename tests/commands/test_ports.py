"""Port numbers and HOST:PORT are read one way (net.parse_port, net.parse_address) by every command:
serve's and the demo's port flags, every --*-address, `demo send`."""

from __future__ import annotations

import argparse

import pytest

from xds_operator.cli import build_parser as cli_parser
from xds_operator.demo.main import build_parser as demo_parser
from xds_operator.net import parse_address, parse_port, split_host_port

# Each would be some port to int(), or to str.isdigit() before int() raised on it.
NOT_A_PORT = [
    "",
    " 80",
    "80 ",
    "+80",
    "-0",
    "8_0",
    "0x50",
    "80.0",
    "٨٠",
    "８０",
    "²",
    "1" * 5000,
    "0" * 5000 + "1" * 10,
]


@pytest.mark.parametrize(("text", "port"), [("1", 1), ("80", 80), ("65535", 65535), ("0080", 80), ("0" * 100 + "7", 7)])
def test_a_port_is_decimal_ascii_digits_in_range(text: str, port: int) -> None:
    assert parse_port(text) == port


@pytest.mark.parametrize("text", [*NOT_A_PORT, "0", "65536", "99999", "100000"])
def test_anything_else_is_refused_naming_the_text(text: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_port(text)
    assert str(error.value) == f"{text!r}: expected a port number in 1..65535"


def test_zero_asks_for_a_free_port_where_allowed() -> None:
    assert parse_port("0", allow_zero=True) == 0
    with pytest.raises(ValueError, match=r"expected a port number in 0\.\.65535 \(0 picks a free one\)$"):
        parse_port("65536", allow_zero=True)


@pytest.mark.parametrize("port", NOT_A_PORT[1:])  # an empty port is "host:", refused too
def test_an_address_takes_the_same_ports(port: str) -> None:
    with pytest.raises(ValueError, match="expected HOST or HOST:PORT with a port in 1..65535"):
        parse_address(f"host:{port}", flag="--xds-address")
    with pytest.raises(ValueError, match="expected HOST:PORT with a port in 1..65535"):
        split_host_port(f"host:{port}")
    assert parse_address("[::1]:0080", flag="--xds-address") == ("::1", 80)


@pytest.mark.parametrize(
    ("address", "host", "port"), [("127.0.0.1:2000", "127.0.0.1", 2000), ("[::1]:2000", "::1", 2000), ("h:1", "h", 1)]
)
def test_split_host_port_reads_as_the_address_flags_do(address: str, host: str, port: int) -> None:
    assert split_host_port(address) == (host, port)


@pytest.mark.parametrize("address", ["::1:2000", "[nope]:1", "[::1]", "host", ":2000", "[::1]2000"])
def test_split_host_port_refuses_what_the_address_flags_refuse_or_what_has_no_port(address: str) -> None:
    # ::1:2000 used to be read as host ::1, port 2000, and [nope]:1 as host nope: --xds-address refuses both.
    with pytest.raises(ValueError) as error:
        split_host_port(address, flag="TARGET")
    assert str(error.value) == f"TARGET {address!r}: expected HOST:PORT with a port in 1..65535 (IPv6: [ADDRESS]:PORT)"


def parse_error(parser: argparse.ArgumentParser, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("port", ["٣", "+80", " 80", "8_0", "70000"])
def test_serve_and_the_demo_refuse_the_same_ports_naming_the_flag(
    port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = parse_error(cli_parser(), ["serve", "--dir", ".", "--xds-port", port], capsys)
    assert f"argument --xds-port: {port!r}: expected a port number in 0..65535 (0 picks a free one)" in err
    err = parse_error(demo_parser(), ["run", "--dir", ".", "--admin-port", port], capsys)
    assert f"argument --admin-port: {port!r}: expected a port number in 1..65535" in err


def test_serve_and_the_demo_take_a_port() -> None:
    assert cli_parser().parse_args(["serve", "--dir", ".", "--xds-port", "0"]).xds_port == 0
    assert demo_parser().parse_args(["run", "--dir", ".", "--envoy-admin-port", "9902"]).envoy_admin_port == 9902
