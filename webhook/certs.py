"""Certificates for the webhook: a private CA, a serving certificate, client certificates.

The API server only calls a webhook over TLS that it can verify against the ``caBundle`` of the
webhook configuration, so every install needs a CA it controls. ``gpu-queue certs`` makes one (or
keeps a still-valid one in a Secret), and patches ``caBundle``. Keys are ECDSA P-256: small, and
fast enough to make in tests and in a Helm hook Job.

Rotation is hitless: a renewed Secret's ``ca.crt`` (and the patched ``caBundle``) carries the new
CA *and* the previous one while it is valid, so the API server trusts both the old certificate
(still served until the pods' hot reload picks up the new files) and the new one. The command
that stores them in a Secret and patches the webhook configurations is ``webhook.certs_command``.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Backdate notBefore so a node whose clock is a little behind still accepts a fresh certificate.
_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its PEM (PKCS#8, unencrypted) private key."""

    cert_pem: bytes
    key_pem: bytes


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_ca(ca: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an ECDSA key (made by make_ca)")
    return cert, key


def _validity(builder: x509.CertificateBuilder, days: int, cap: datetime | None = None) -> x509.CertificateBuilder:
    """notBefore a little in the past; notAfter ``days`` ahead, but never after ``cap``."""
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    now = datetime.now(UTC)
    end = now + timedelta(days=days)
    return builder.not_valid_before(now - _CLOCK_SKEW).not_valid_after(min(end, cap) if cap else end)


def make_ca(common_name: str = "gpu-queue-ca", days: int = 3650) -> CertPair:
    """A self-signed CA that may sign leaf certificates only (pathLen 0)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
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
        .add_extension(ski, critical=False)
    )
    cert = _validity(builder, days).sign(key, hashes.SHA256())
    return CertPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _leaf(
    ca: CertPair,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    days: int,
    san: x509.SubjectAlternativeName | None,
) -> CertPair:
    ca_cert, ca_key = _load_ca(ca)
    key = _new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if san is not None:
        # Go's TLS (the API server) ignores the CN: the SANs are what it checks.
        builder = builder.add_extension(san, critical=False)
    # A leaf must not outlive its CA: verifiers would reject the tail of its life anyway.
    builder = _validity(builder, days, cap=ca_cert.not_valid_after_utc)
    cert = builder.sign(ca_key, hashes.SHA256())
    return CertPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def make_serving_cert(
    ca: CertPair,
    dns_names: Sequence[str],
    ips: Sequence[str] = (),
    days: int = 365,
    common_name: str | None = None,
) -> CertPair:
    """A TLS server certificate for the given DNS names and IP addresses, signed by ``ca``."""
    if not dns_names and not ips:
        raise ValueError("a serving certificate needs at least one DNS name or IP address")
    general: list[x509.GeneralName] = [x509.DNSName(name) for name in dict.fromkeys(dns_names)]
    try:
        general += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(ips)]
    except ValueError as exc:
        raise ValueError(f"not an IP address: {exc}") from None
    cn = common_name or (dns_names[0] if dns_names else ips[0])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return _leaf(ca, subject, ExtendedKeyUsageOID.SERVER_AUTH, days, x509.SubjectAlternativeName(general))


def make_client_cert(ca: CertPair, common_name: str, organizations: Sequence[str] = (), days: int = 365) -> CertPair:
    """A TLS client certificate: Kubernetes reads the CN as the user and each O as a group."""
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return _leaf(ca, x509.Name(attrs), ExtendedKeyUsageOID.CLIENT_AUTH, days, None)


def not_after(cert_pem: bytes) -> datetime:
    """The expiry (UTC) of the first certificate in ``cert_pem``."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def dns_names(cert_pem: bytes) -> list[str]:
    """The DNS SANs of the first certificate in ``cert_pem`` (empty if it has none)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.DNSName))


def ip_addresses(cert_pem: bytes) -> list[str]:
    """The IP SANs of the first certificate in ``cert_pem``, as strings."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def service_dns_names(service: str, namespace: str, extra: Sequence[str] = ()) -> list[str]:
    """The names the API server may use for a Service: short, namespaced, and fully qualified."""
    names = [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        *extra,
    ]
    return list(dict.fromkeys(names))


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file and rename, so a reader never sees half a key; mode set before data."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_pair(directory: Path, ca: CertPair, serving: CertPair, *, ca_bundle: bytes | None = None) -> None:
    """Write ``ca.crt``, ``ca.key`` (0600), ``tls.crt``, ``tls.key`` (0600) into ``directory``.

    ``ca.key`` is skipped when ``ca.key_pem`` is empty (a kept Secret holds no CA key).
    ``ca_bundle`` (default ``ca.cert_pem``) is what goes into ``ca.crt``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    # Keys first, the certificate last: a hot reloader that sees the new tls.crt also finds its key.
    if ca.key_pem:
        _write_atomic(directory / "ca.key", ca.key_pem, 0o600)
    _write_atomic(directory / "ca.crt", ca_bundle if ca_bundle is not None else ca.cert_pem, 0o644)
    _write_atomic(directory / "tls.key", serving.key_pem, 0o600)
    _write_atomic(directory / "tls.crt", serving.cert_pem, 0o644)


def ca_bundle_b64(bundle_pem: bytes) -> str:
    """The ``caBundle`` field's form: base64 of the PEM bundle."""
    return base64.b64encode(bundle_pem).decode("ascii")
