"""Throw-away TLS material for a local secured broker: a CA and a server certificate it signs.

For local testing only (the keys are written unencrypted). Needs the ``cryptography``
package (``pip install 'streams[test]'``).

>>> pki = write_test_pki(Path("/tmp/pki"))          # doctest: +SKIP
>>> pki.ca_cert   # what clients trust: KAFKA_SSL_CAFILE  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
_VALIDITY = datetime.timedelta(days=2)


@dataclass(frozen=True)
class TestPki:
    """PEM files: the CA certificate, the server certificate chain and its private key."""

    __test__ = False  # not a pytest test class

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "streams local test"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> datetime.datetime:
    # Back-dated a little: the JVM and Python may not agree on "now" to the second.
    return datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)


def make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA key and certificate."""
    key = _key()
    name = _name(common_name)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str] = DEFAULT_HOSTS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server key and a certificate for ``hosts`` (IP addresses or DNS names) signed by the CA."""
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    key = _key()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def cert_pem(*certs: x509.Certificate) -> bytes:
    """Certificates in PEM, in the order given (leaf first for a chain)."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """An unencrypted PKCS#8 PEM private key (the form Kafka's PEM key store reads)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_ca(path: Path, common_name: str) -> Path:
    """Write a fresh CA's certificate to ``path`` (e.g. an "untrusted" CA for tests)."""
    _, cert = make_ca(common_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert_pem(cert))
    return path


def write_test_pki(directory: Path, hosts: Sequence[str] = DEFAULT_HOSTS) -> TestPki:
    """Write ``ca.pem``, ``server-chain.pem`` and ``server-key.pem`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = make_ca("streams local test CA")
    server_key, server = make_server_cert(ca_key, ca, hosts)
    pki = TestPki(
        directory / "ca.pem", directory / "server-chain.pem", directory / "server-key.pem"
    )
    pki.ca_cert.write_bytes(cert_pem(ca))
    pki.server_cert.write_bytes(cert_pem(server, ca))
    pki.server_key.touch(mode=0o600)
    pki.server_key.write_bytes(key_pem(server_key))
    return pki
