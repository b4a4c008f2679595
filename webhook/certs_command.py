"""``gpu-queue certs``: issue or keep the webhook's certificate in a Secret, patch ``caBundle``.

Run by the chart's hook Jobs (pre-install: the Secret; post-install: the caBundle) and by admins
who manage certificates by hand (``--out``). The certificates themselves come from ``webhook.certs``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from webhook.certs import (
    CertPair,
    ca_bundle_b64,
    dns_names,
    ip_addresses,
    make_ca,
    make_serving_cert,
    not_after,
    service_dns_names,
    write_pair,
)


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
