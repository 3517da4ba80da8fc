"""How the xDS server talks on the wire: TLS / mTLS credentials, keepalive and maximum connection age.

The certificate files are checked with the standard library's `ssl` before gRPC sees them, so a
missing, unreadable or mismatched file is reported by flag and path instead of failing later in a
handshake.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc

log = logging.getLogger(__name__)

# A proxy whose peer vanished (node crash, network partition) leaves a half-open connection
# and a watch behind: the server pings each connection after this long without traffic.
SERVER_PING_TIMEOUT_SECONDS = 20.0  # no answer to a ping within this: the connection is closed
# gRPC's default lets a client ping only once every 5 minutes while no data flows and answers
# more frequent pings with GOAWAY (too_many_pings); Envoy's HTTP/2 keepalive pings more often.
MIN_CLIENT_PING_INTERVAL_SECONDS = 1.0
RELOAD_CHECK_SECONDS = 1.0  # how often, at most, the TLS files are looked at for a renewed certificate
# A certificate issued a moment ago on a machine whose clock is slightly ahead is not refused as "not yet valid".
CLOCK_SKEW_SECONDS = 300.0


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the flag and the file."""


class NotYetValid(TlsFileError):
    """The certificate's validity starts in the future: the same files become usable by themselves."""


@dataclass(frozen=True)
class TlsFiles:
    certificate: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class ServerTls:
    """PEM bytes of the server's certificate chain and key; client_ca set means mTLS.

    files: where they were read from; then a changed file (a renewed certificate) is read again
    before the next handshake, and takes effect if it passes the same checks.
    """

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None
    files: TlsFiles | None = None

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self.private_key, self.certificate_chain)], self.client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        if self.files is None:
            return grpc.ssl_server_credentials(
                [(self.private_key, self.certificate_chain)],
                root_certificates=self.client_ca,
                require_client_auth=self.client_ca is not None,
            )
        # gRPC documents that the fetcher returns None for "no change"; typeshed's stub leaves None out.
        fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], CertificateReloader(self))
        return grpc.dynamic_ssl_server_credentials(
            self.configuration(), fetcher, require_client_authentication=self.client_ca is not None
        )


# Per TLS file, (inode, mtime in ns, size), or None if absent: changes when a file is replaced or rewritten.
_Signature = tuple[tuple[int, int, int] | None, ...]


class CertificateReloader:
    """gRPC calls this before every TLS handshake: a new configuration once the files changed, else None.

    It looks at the files' metadata at most once per RELOAD_CHECK_SECONDS. A Secret volume swaps all
    files at once (its ..data link), so the three are read together; a set that fails the checks (say,
    a key that does not match its certificate) is logged and the previous certificate stays in use.
    """

    def __init__(self, current: ServerTls):
        assert current.files is not None
        self._files = current.files
        self._mtls = current.client_ca is not None
        self._signature = _signature(self._files)
        self._refused: _Signature | None = None  # the signature of the last set refused, so it is logged once
        self._next_check = 0.0

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        now = time.monotonic()
        if now < self._next_check:
            return None
        self._next_check = now + RELOAD_CHECK_SECONDS
        signature = _signature(self._files)
        if signature == self._signature:
            return None
        try:
            tls = load_server_tls(self._files.certificate, self._files.key, self._files.client_ca)
        except TlsFileError as error:
            if signature != self._refused:
                log.warning("TLS files changed but cannot be used, keeping the previous certificate: %s", error)
                self._refused = signature
            if not isinstance(error, NotYetValid):  # a not-yet-valid one is looked at again until it is valid
                self._signature = signature
            return None
        self._signature = signature
        log.info("TLS files changed: serving the new certificate %s", self._files.certificate)
        return tls.configuration()


def _signature(files: TlsFiles) -> _Signature:
    """What changes when a file is replaced or rewritten (stat follows a Secret volume's symlinks)."""
    result: list[tuple[int, int, int] | None] = []
    for path in (files.certificate, files.key, files.client_ca):
        try:
            info = path.stat() if path is not None else None
        except OSError:
            info = None
        result.append(None if info is None else (info.st_ino, info.st_mtime_ns, info.st_size))
    return tuple(result)


@dataclass(frozen=True)
class ConnectionPolicy:
    """Keepalive and connection age of every xDS connection, in seconds (0 turns a setting off)."""

    keepalive: float = 60.0
    max_connection_age: float = 1800.0
    max_connection_age_grace: float = 10.0

    def grpc_options(self) -> list[tuple[str, int]]:
        options = [
            # Permit Envoy's keepalive pings, with or without an open stream.
            ("grpc.http2.min_ping_interval_without_data_ms", _ms(MIN_CLIENT_PING_INTERVAL_SECONDS)),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        if self.keepalive > 0:
            options += [
                ("grpc.keepalive_time_ms", _ms(self.keepalive)),
                ("grpc.keepalive_timeout_ms", _ms(SERVER_PING_TIMEOUT_SECONDS)),
                # By default gRPC stops pinging after 2 pings without data; an idle ADS stream
                # sends no data for hours, and it is exactly the one to watch.
                ("grpc.http2.max_pings_without_data", 0),
            ]
        if self.max_connection_age > 0:
            # gRPC adds ±10% jitter to the age, so connections made together do not all close together.
            # At the age the server sends GOAWAY; the ADS stream never ends by itself, so after the grace
            # period the connection is closed and Envoy reconnects, possibly to another replica.
            options += [
                ("grpc.max_connection_age_ms", _ms(self.max_connection_age)),
                ("grpc.max_connection_age_grace_ms", _ms(self.max_connection_age_grace)),
            ]
        return options


DEFAULT_POLICY = ConnectionPolicy()


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def load_server_tls(certificate: Path, key: Path, client_ca: Path | None = None) -> ServerTls:
    """Read and check the server's TLS files; raise TlsFileError naming the flag and file at fault."""
    chain = _read("--tls-cert", certificate)
    private_key = _read("--tls-key", key)
    ca = _read("--client-ca", client_ca) if client_ca is not None else None
    _check_certificates("--tls-cert", certificate, chain)
    _check_validity(certificate)
    if client_ca is not None and ca is not None:
        _check_certificates("--client-ca", client_ca, ca)
    _check_key_matches(certificate, key)
    return ServerTls(chain, private_key, ca, TlsFiles(certificate, key, client_ca))


def _read(flag: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TlsFileError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise TlsFileError(f"{flag} {path}: is a directory, expected a PEM file") from None
    except OSError as error:
        raise TlsFileError(f"{flag} {path}: cannot read: {error.strerror}") from None
    if b"-----BEGIN " not in data:
        raise TlsFileError(f"{flag} {path}: not a PEM file (no -----BEGIN line)")
    return data


def _check_certificates(flag: str, path: Path, data: bytes) -> None:
    """The file holds at least one readable certificate."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TlsFileError(f"{flag} {path}: holds no certificate (no -----BEGIN CERTIFICATE----- block)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=data.decode("ascii", errors="replace"))
    except (ssl.SSLError, ValueError) as error:
        raise TlsFileError(f"{flag} {path}: not a valid PEM certificate ({_reason(error)})") from None


def _check_validity(certificate: Path) -> None:
    """The server certificate (the first of the chain) is valid now: an expired one fails every handshake."""
    try:
        # The standard library's own certificate decoder (it reads the file's first certificate).
        decoded = ssl._ssl._test_decode_cert(str(certificate))  # type: ignore[attr-defined]
        not_before = ssl.cert_time_to_seconds(decoded["notBefore"])
        not_after = ssl.cert_time_to_seconds(decoded["notAfter"])
    except (AttributeError, KeyError, ValueError, OSError, ssl.SSLError):
        return  # unreadable here: the other checks name the problem
    now = time.time()
    if now > not_after:
        raise TlsFileError(f"--tls-cert {certificate}: the certificate expired on {_utc(not_after)}")
    if now + CLOCK_SKEW_SECONDS < not_before:
        raise NotYetValid(f"--tls-cert {certificate}: the certificate is not valid before {_utc(not_before)}")


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _check_key_matches(certificate: Path, key: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certificate, key, password=_no_password)
    except _EncryptedKey:
        raise TlsFileError(f"--tls-key {key}: the key is encrypted; give an unencrypted PEM key") from None
    except ssl.SSLError as error:
        if "KEY_VALUES_MISMATCH" in str(error) or "key values mismatch" in str(error):
            raise TlsFileError(f"--tls-key {key}: does not match the certificate in --tls-cert {certificate}") from None
        raise TlsFileError(f"--tls-key {key}: not a valid PEM private key ({_reason(error)})") from None


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    # Called only for an encrypted key; without it OpenSSL would prompt on the terminal.
    raise _EncryptedKey


def _reason(error: Exception) -> str:
    """OpenSSL's words without the C source location."""
    text = re.sub(r"^\[\w+\]\s*|\s*\(_ssl\.c:\d+\)", "", str(error)).strip()
    return "unreadable PEM data" if text in ("", "PEM lib") else text
