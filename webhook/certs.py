"""Certificates for the webhook: a private CA, a serving certificate, client certificates.

The API server only calls a webhook over TLS that it can verify against the ``caBundle`` of the
webhook configuration, so every install needs a CA it controls. ``gpu-queue certs`` makes one (or
keeps a still-valid one in a Secret), and patches ``caBundle``. Keys are ECDSA P-256: small, and
fast enough to make in tests and in a Helm hook Job.

The CA's key is kept next to it, so a renewed serving certificate is signed by the same CA and
every copy of ``ca.crt`` (the hub's, the ``caBundle``) keeps verifying. A new CA is trusted next to
the old one (``ca.crt`` is a bundle) before anything is signed by it; ``ca_pair``, ``issuer_of``
and ``trust_bundle`` are the pieces for that. The command that stores them in a Secret and patches
the webhook configurations is ``webhook.certs_command``.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
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


def load_bundle(bundle_pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order; empty when it holds none."""
    try:
        return x509.load_pem_x509_certificates(bundle_pem)
    except ValueError:
        return []


def _spki(key: ec.EllipticCurvePublicKey | x509.Certificate) -> bytes:
    public = key.public_key() if isinstance(key, x509.Certificate) else key
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def ca_pair(bundle_pem: bytes, key_pem: bytes) -> CertPair | None:
    """The CA certificate in ``bundle_pem`` that ``key_pem`` belongs to, with that key.

    None when there is no key, it is not an ECDSA key, or no CA certificate in the bundle that is
    valid now has its public key: then nothing can be signed under that bundle.
    """
    if not key_pem:
        return None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    now, spki = datetime.now(UTC), _spki(key.public_key())
    for cert in load_bundle(bundle_pem):
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if is_ca and cert.not_valid_before_utc <= now < cert.not_valid_after_utc and _spki(cert) == spki:
            return CertPair(cert.public_bytes(serialization.Encoding.PEM), key_pem)
    return None


def issuer_of(leaf_pem: bytes, bundle_pem: bytes) -> x509.Certificate | None:
    """The certificate in ``bundle_pem`` that signed the first certificate of ``leaf_pem``, if any.

    Checked by signature, not by name: every CA ``make_ca`` makes has the same name.
    """
    try:
        leaf = x509.load_pem_x509_certificate(leaf_pem)
    except ValueError:
        return None
    for ca in load_bundle(bundle_pem):
        try:
            leaf.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    return None


def _as_cert(ca: x509.Certificate | CertPair) -> x509.Certificate:
    return ca if isinstance(ca, x509.Certificate) else x509.load_pem_x509_certificate(ca.cert_pem)


def trust_bundle(cas: Iterable[x509.Certificate | CertPair | None], previous: bytes = b"") -> bytes:
    """A PEM bundle of ``cas`` in order (``None`` skipped), without repeats or expired ones.

    Returns ``previous`` itself when it already holds exactly these certificates, so an unchanged
    ``ca.crt`` stays byte for byte what clients copied.
    """
    now = datetime.now(UTC)
    kept: dict[bytes, x509.Certificate] = {}
    for ca in (_as_cert(c) for c in cas if c is not None):
        if ca.not_valid_after_utc > now:
            kept.setdefault(ca.fingerprint(hashes.SHA256()), ca)
    if list(kept.values()) == load_bundle(previous):
        return previous
    return b"".join(ca.public_bytes(serialization.Encoding.PEM) for ca in kept.values())


def describe(ca: x509.Certificate | CertPair) -> str:
    """A short name for a CA in messages: its SHA-256 fingerprint's start and its expiry."""
    cert = _as_cert(ca)
    return f"{cert.fingerprint(hashes.SHA256()).hex()[:16]} (until {cert.not_valid_after_utc:%Y-%m-%d})"


def renewal_reason(cert_pem: bytes, dns: Sequence[str], ips: Sequence[str], renew_before_days: int) -> str | None:
    """Why ``cert_pem`` must be replaced (expiring within the window, a name missing), or None."""
    try:
        expiry = not_after(cert_pem)
        have_dns, have_ips = set(dns_names(cert_pem)), set(ip_addresses(cert_pem))
    except ValueError:
        return "the stored tls.crt is not a PEM certificate"
    if expiry - datetime.now(UTC) < timedelta(days=renew_before_days):
        return f"it expires {expiry:%Y-%m-%d %H:%M} UTC, within {renew_before_days} days"
    missing = sorted(set(dns) - have_dns) + sorted({str(ipaddress.ip_address(i)) for i in ips} - have_ips)
    if missing:
        return f"it does not name {', '.join(missing)}"
    return None


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

    ``ca.key`` is skipped when ``ca.key_pem`` is empty (a Secret made by an older version holds no
    CA key).
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
