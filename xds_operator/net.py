"""Small network helpers shared by validation, bootstraps, readiness, status and the commands: addresses,
HOST:PORT and port numbers (one reading of each, `parse_address` and `parse_port`, for every command)."""

from __future__ import annotations

import functools
import ipaddress


@functools.lru_cache(maxsize=65536)  # readiness asks about every pod IP on every status pass
def is_ip(host: str) -> bool:
    """Whether host is an IPv4 or IPv6 address literal (not a DNS name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def join_host_port(host: str, port: int) -> str:
    """HOST:PORT, with an IPv6 address in brackets (as gRPC and URLs want it)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address_order(ip: str) -> tuple[int, int, str]:
    """A sort key: IPv4 before IPv6, each numerically (10.0.0.9 before 10.0.0.10); anything else last."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return (9, 0, ip)
    return (address.version, int(address), ip)


MAX_PORT = 65535


def parse_port(text: str, *, allow_zero: bool = False) -> int:
    """A port number as every command and address takes it: decimal ASCII digits only (no sign, space or
    `_`, which int() would accept), 1..65535, or 0..65535 with `allow_zero` (0: let the system pick a
    free one). Raises ValueError naming the text."""
    lowest = 0 if allow_zero else 1
    significant = text.lstrip("0") or "0"
    # A long run of digits is out of range without being converted (int() of 5,000 digits is refused anyway).
    short = text.isascii() and text.isdigit() and len(significant) <= len(str(MAX_PORT))
    if short and lowest <= int(significant) <= MAX_PORT:
        return int(significant)
    free = " (0 picks a free one)" if allow_zero else ""
    raise ValueError(f"{text!r}: expected a port number in {lowest}..{MAX_PORT}{free}")


def split_host_port(address: str, *, allow_port_zero: bool = False, flag: str = "") -> tuple[str, int]:
    """HOST:PORT as `parse_address` reads it, the port required (IPv6 as [::1]:PORT). Raises ValueError with a
    readable message, naming `flag` if given."""
    where = f"{flag} " if flag else ""
    lowest = 0 if allow_port_zero else 1
    expected = f"{where}{address!r}: expected HOST:PORT with a port in {lowest}..{MAX_PORT} (IPv6: [ADDRESS]:PORT)"
    try:
        host, port = parse_address(address, flag=flag, allow_port_zero=allow_port_zero)
    except ValueError:
        raise ValueError(expected) from None
    if port is None:
        raise ValueError(expected)
    return host, port


def parse_address(text: str, *, flag: str, allow_port_zero: bool = False) -> tuple[str, int | None]:
    """An address as the commands' flags take it: HOST, HOST:PORT, [IPV6]:PORT, [IPV6] or a bare IPv6 address
    (`::1`, unambiguous only without a port). Returns the host and the port (see `parse_port`), None when
    not given. Raises ValueError with a message naming `flag`."""
    lowest = 0 if allow_port_zero else 1
    expected = f"{flag} {text!r}: expected HOST or HOST:PORT with a port in {lowest}..{MAX_PORT} (IPv6: [ADDRESS]:PORT)"
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or not is_ip(host) or (rest and not rest.startswith(":")):
            raise ValueError(expected)
        if not rest:
            return host, None
        port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    elif ":" in text:  # two or more colons: an IPv6 address, which cannot carry a port without brackets
        if not is_ip(text):
            raise ValueError(f"{flag} {text!r}: not an IPv6 address; with a port, write [ADDRESS]:PORT")
        return text, None
    else:
        if not text:
            raise ValueError(expected)
        return text, None
    if not host:
        raise ValueError(expected)
    try:
        return host, parse_port(port, allow_zero=allow_port_zero)
    except ValueError:
        raise ValueError(expected) from None
