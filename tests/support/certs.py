"""Test certificates made with `cryptography`: CAs, server certificates with SANs, client certificates."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, written as PEM files."""

    cert: Path
    key: Path
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Issued(cert_path, key_path, certificate, key)


Validity = tuple[datetime.timedelta, datetime.timedelta]  # (not before, not after), relative to now
VALID_NOW: Validity = (datetime.timedelta(minutes=-5), datetime.timedelta(days=1))
EXPIRED: Validity = (datetime.timedelta(days=-2), datetime.timedelta(days=-1))
NOT_YET_VALID: Validity = (datetime.timedelta(days=1), datetime.timedelta(days=2))


def _validity(builder: x509.CertificateBuilder, validity: Validity = VALID_NOW) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now + validity[0]).not_valid_after(now + validity[1])


def make_ca(directory: Path, name: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return _write(directory, name, _validity(builder).sign(key, hashes.SHA256()), key)


def issue(
    ca: Issued,
    directory: Path,
    name: str,
    *,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    client: bool = False,
    validity: Validity = VALID_NOW,
) -> Issued:
    """A leaf certificate signed by `ca`: a server certificate with these SANs, or a client certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _write(directory, name, _validity(builder, validity).sign(ca.private_key, hashes.SHA256()), key)


@dataclass(frozen=True)
class Pki:
    """Everything the TLS tests need: a trusted CA with a server and a client certificate, and an untrusted CA."""

    ca: Issued
    server: Issued  # SANs 127.0.0.1 and localhost
    client: Issued
    other_ca: Issued  # trusted by nobody
    other_client: Issued  # signed by other_ca
    other_server: Issued  # signed by other_ca, SANs 127.0.0.1 and localhost


def make_pki(directory: Path) -> Pki:
    ca = make_ca(directory, "test-ca")
    other = make_ca(directory, "untrusted-ca")
    return Pki(
        ca=ca,
        server=issue(ca, directory, "server", dns=("localhost",), ips=("127.0.0.1",)),
        client=issue(ca, directory, "client", client=True),
        other_ca=other,
        other_client=issue(other, directory, "other-client", client=True),
        other_server=issue(other, directory, "other-server", dns=("localhost",), ips=("127.0.0.1",)),
    )
