"""Certificates for the webhook: a private CA, a serving certificate, client certificates.

The API server only calls a webhook over TLS that it can verify against the ``caBundle`` of the
webhook configuration, so every install needs a CA it controls. ``gpu-queue certs`` makes one (or
keeps a still-valid one in a Secret), and patches ``caBundle``. Keys are ECDSA P-256: small, and
fast enough to make in tests and in a Helm hook Job.

Rotation is hitless: a renewed Secret's ``ca.crt`` (and the patched ``caBundle``) carries the new
CA *and* the previous one while it is valid, so the API server trusts both the old certificate
(still served until the pods' hot reload picks up the new files) and the new one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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


def _pem_certs(bundle: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(bundle)
    except ValueError:
        return []


def _rotated_bundle(new_ca_pem: bytes, old_bundle: bytes) -> bytes:
    """New CA first, then the previous CA while it is still valid: trust both during the swap."""
    now = datetime.now(UTC)
    old = _pem_certs(old_bundle)
    if old and old[0].not_valid_after_utc > now:
        return new_ca_pem + old[0].public_bytes(serialization.Encoding.PEM)
    return new_ca_pem


# ---------------------------------------------------------------------------------------------
# The ``gpu-queue certs`` command.


class CertsError(Exception):
    """A failure the admin can fix; the message says how."""


@dataclass(frozen=True)
class _Issued:
    ca: CertPair  # key_pem is empty when the CA came from an existing Secret
    serving: CertPair
    bundle: bytes  # the ca.crt / caBundle content (one or two CAs)
    kept: bool


def _issue(dns: Sequence[str], ips: Sequence[str], days: int) -> _Issued:
    ca = make_ca()
    return _Issued(ca, make_serving_cert(ca, dns, ips, days=days), ca.cert_pem, kept=False)


def _b64(data: dict[str, str] | None, key: str) -> bytes:
    raw = (data or {}).get(key)
    return base64.b64decode(raw) if raw else b""


def _needs_renewal(cert_pem: bytes, dns: Sequence[str], ips: Sequence[str], renew_before_days: int) -> str | None:
    """Why the stored certificate must be replaced, or None to keep it."""
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


async def _api_client(kubeconfig: str | None) -> Any:
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.config.config_exception import ConfigException

    configuration = client.Configuration()
    if kubeconfig:
        try:
            await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        except ConfigException as exc:
            raise CertsError(f"--kubeconfig {kubeconfig}: {exc}") from None
    else:
        try:
            load_incluster: Any = config.load_incluster_config  # untyped upstream
            load_incluster(client_configuration=configuration)
        except ConfigException:
            raise CertsError(
                "not running inside a Kubernetes pod: pass --kubeconfig FILE for --secret/--patch-webhooks"
            ) from None
    return client.ApiClient(configuration)


def _split_secret(ref: str) -> tuple[str, str]:
    namespace, sep, name = ref.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise CertsError(f"--secret {ref!r}: expected NAMESPACE/NAME, e.g. gpu-queue/gpu-queue-tls")
    return namespace, name


async def _ensure_secret(
    api_client: Any, ref: str, dns: Sequence[str], ips: Sequence[str], days: int, renew_before_days: int
) -> _Issued:
    """Create the TLS Secret, or keep it when still good; optimistic concurrency on races."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    namespace, name = _split_secret(ref)
    core = client.CoreV1Api(api_client)
    for _ in range(5):
        try:
            existing = await core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 403:
                raise CertsError(
                    f"not allowed to read Secret {ref}: grant get/create/update on secrets in {namespace}"
                ) from None
            if exc.status != 404:
                raise CertsError(f"reading Secret {ref}: {exc.status} {exc.reason}") from None
            existing = None
        if existing is not None:
            cert, key, bundle = (_b64(existing.data, k) for k in ("tls.crt", "tls.key", "ca.crt"))
            reason = (
                "it has no tls.crt, tls.key or ca.crt"
                if not (cert and key and bundle)
                else _needs_renewal(cert, dns, ips, renew_before_days)
            )
            if reason is None:
                print(f"keeping Secret {ref}: valid until {not_after(cert):%Y-%m-%d} UTC", file=sys.stderr)
                return _Issued(CertPair(bundle, b""), CertPair(cert, key), bundle, kept=True)
            print(f"renewing Secret {ref}: {reason}", file=sys.stderr)
            issued = _issue(dns, ips, days)
            issued = _Issued(issued.ca, issued.serving, _rotated_bundle(issued.ca.cert_pem, bundle), kept=False)
        else:
            issued = _issue(dns, ips, days)
        body: Any = client.V1Secret(
            api_version="v1",
            kind="Secret",
            type="kubernetes.io/tls",
            metadata=client.V1ObjectMeta(
                name=name,
                namespace=namespace,
                labels={"app.kubernetes.io/name": "gpu-queue", "app.kubernetes.io/component": "webhook-tls"},
                resource_version=existing.metadata.resource_version if existing is not None else None,
            ),
            data={
                "tls.crt": base64.b64encode(issued.serving.cert_pem).decode(),
                "tls.key": base64.b64encode(issued.serving.key_pem).decode(),
                "ca.crt": base64.b64encode(issued.bundle).decode(),
            },
        )
        try:
            if existing is None:
                await core.create_namespaced_secret(namespace, body)
            elif existing.type != "kubernetes.io/tls":
                # The type is immutable: replace the object (a rare, admin-made mistake).
                await core.delete_namespaced_secret(name, namespace)
                body.metadata.resource_version = None
                await core.create_namespaced_secret(namespace, body)
            else:
                await core.replace_namespaced_secret(name, namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                continue  # another writer won: read again and decide again
            if exc.status == 403:
                raise CertsError(
                    f"not allowed to write Secret {ref}: grant create/update on secrets in {namespace}"
                ) from None
            if exc.status == 404:
                raise CertsError(f"namespace {namespace!r} does not exist: create it first") from None
            raise CertsError(f"writing Secret {ref}: {exc.status} {exc.reason}") from None
        print(f"{'created' if existing is None else 'updated'} Secret {ref}", file=sys.stderr)
        return issued
    raise CertsError(f"Secret {ref} kept changing under us (conflicts); run the command again")


async def _patch_webhooks(api_client: Any, name: str, bundle_b64: str) -> list[str]:
    """Set caBundle on every webhook of the configurations called ``name``; returns what changed."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    api = client.AdmissionregistrationV1Api(api_client)
    kinds = (
        ("MutatingWebhookConfiguration", api.read_mutating_webhook_configuration,
         api.patch_mutating_webhook_configuration),
        ("ValidatingWebhookConfiguration", api.read_validating_webhook_configuration,
         api.patch_validating_webhook_configuration),
    )  # fmt: skip
    patched: list[str] = []
    for kind, read, patch in kinds:
        for _ in range(5):
            try:
                obj: Any = await read(name)
            except ApiException as exc:
                if exc.status == 404:
                    break
                if exc.status == 403:
                    raise CertsError(
                        f"not allowed to read {kind} {name}: grant get/patch on "
                        f"{kind.lower()}s in admissionregistration.k8s.io"
                    ) from None
                raise CertsError(f"reading {kind} {name}: {exc.status} {exc.reason}") from None
            ops: list[dict[str, Any]] = []
            for i, hook in enumerate(obj.webhooks or []):
                # The test op pins the index to the webhook we read: a concurrent edit fails the patch.
                ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook.name})
                ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle_b64})
            if ops:
                try:
                    await patch(name, ops)
                except ApiException as exc:
                    if exc.status in (409, 422):
                        continue
                    if exc.status == 403:
                        raise CertsError(f"not allowed to patch {kind} {name}: grant patch on it") from None
                    raise CertsError(f"patching {kind} {name}: {exc.status} {exc.reason}") from None
            patched.append(f"{kind} {name} ({len(obj.webhooks or [])} webhooks)")
            break
        else:
            raise CertsError(f"{kind} {name} kept changing under us; run the command again")
    if not patched:
        raise CertsError(
            f"no MutatingWebhookConfiguration or ValidatingWebhookConfiguration named {name!r}: "
            "install the chart (or apply the webhook manifests) first, or check --patch-webhooks"
        )
    return patched


async def _run_cluster(args: argparse.Namespace, dns: Sequence[str], ips: Sequence[str]) -> _Issued:
    issued: _Issued | None = None
    api_client = await _api_client(args.kubeconfig)
    async with api_client:
        if args.secret:
            issued = await _ensure_secret(api_client, args.secret, dns, ips, args.days, args.renew_before_days)
        else:
            issued = _issue(dns, ips, args.days)
        for name in args.patch_webhooks:
            for what in await _patch_webhooks(api_client, name, ca_bundle_b64(issued.bundle)):
                print(f"patched caBundle of {what}", file=sys.stderr)
    return issued


def run_certs(args: argparse.Namespace) -> int:
    """``gpu-queue certs``: make (or keep) the pair, write/store it, print the base64 caBundle."""
    dns = service_dns_names(args.service, args.namespace, args.dns)
    try:
        ips = [str(ipaddress.ip_address(ip)) for ip in args.ip]
    except ValueError as exc:
        print(f"error: --ip: {exc}", file=sys.stderr)
        return 2
    if args.days <= 0:
        print("error: --days must be positive", file=sys.stderr)
        return 2
    if not args.out and not args.secret:
        print("error: say where the certificate goes: --out DIR and/or --secret NAMESPACE/NAME", file=sys.stderr)
        return 2
    if args.kubeconfig and not Path(args.kubeconfig).is_file():
        print(f"error: --kubeconfig {args.kubeconfig}: no such file", file=sys.stderr)
        return 2
    try:
        if args.secret or args.patch_webhooks:
            issued = asyncio.run(_run_cluster(args, dns, ips))
        else:
            issued = _issue(dns, ips, args.days)
        if args.out:
            write_pair(Path(args.out), issued.ca, issued.serving, ca_bundle=issued.bundle)
            print(f"wrote ca.crt, tls.crt, tls.key{'' if issued.kept else ', ca.key'} to {args.out}", file=sys.stderr)
    except CertsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror}; check the --out directory", file=sys.stderr)
        return 1
    print(ca_bundle_b64(issued.bundle))
    return 0
