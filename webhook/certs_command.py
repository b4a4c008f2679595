"""``gpu-queue certs``: issue, renew or keep the webhook's certificate in a Secret, patch ``caBundle``.

Run by the chart's hook Jobs (pre-install: the Secret; post-install: the caBundle) and by admins
who manage certificates by hand (``--out``) or rotate the CA (``--rotate-ca``, two runs). The
certificates themselves come from ``webhook.certs``.

The Secret holds ``tls.crt``/``tls.key``, ``ca.crt`` (the trust bundle), ``ca.key`` (the signing
CA's key) and, while a CA rotation is under way, ``ca-next.crt``/``ca-next.key``. On every write
``ca.crt`` is the signing CA, the CA of the certificate the pods serve until they reload, and the
staged CA (expired ones dropped): a CA that signs nothing served leaves it at the next write.
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

from webhook.certs import (
    CertPair,
    ca_bundle_b64,
    ca_pair,
    describe,
    dns_names,
    ip_addresses,
    issuer_of,
    load_bundle,
    make_ca,
    make_serving_cert,
    not_after,
    renewal_reason,
    service_dns_names,
    trust_bundle,
    write_pair,
)


class CertsError(Exception):
    """A failure the admin can fix; the message says how."""


# The keys of the Secret; a kubernetes.io/tls Secret may carry more than tls.crt and tls.key.
_KEYS = ("tls.crt", "tls.key", "ca.crt", "ca.key", "ca-next.crt", "ca-next.key")
_NOTICE = "gpu-queue.io/ca-notice"  # annotation: what an admin must do about the CA, if anything

_GET_CA = "kubectl -n {ns} get secret {name} -o jsonpath='{{.data.ca\\.crt}}' | base64 -d > gpu-queue-ca.crt"
_HUB_CA = (
    "     the hub (queue_ca_file, hub.extraFiles.gpu-queue-ca):\n"
    f"       {_GET_CA}\n"
    "       helm upgrade HUB-RELEASE jupyterhub/jupyterhub -n HUB-NAMESPACE --reuse-values \\\n"
    "         --set-file hub.extraFiles.gpu-queue-ca.stringData=gpu-queue-ca.crt"
)
_NEW_CA = (
    "WARNING: Secret {ref} gets a NEW CA, {ca}: {why}.\n"
    "The serving certificate is now signed by it. ca.crt and caBundle still hold the previous CA\n"
    "while it is valid, but a client that verifies the queue API with a copy of the old ca.crt\n"
    "fails once the pods reload. {staged}Update those copies now:\n"
    f"{_HUB_CA}\n"
    "The Secret keeps the CA's key (ca.key) from now on, so later renewals keep this CA. To change\n"
    "a CA without a gap, use --rotate-ca (two steps)."
)
_STEP1 = (
    "CA rotation, step 1 of 2, Secret {ref}: staged the next CA, {ca}.\n"
    "ca.crt now trusts the current CA and the next one; the serving certificate is unchanged.\n"
    "Next:\n"
    "  1. give every client that verifies the queue API the new ca.crt:\n"
    f"{_HUB_CA}\n"
    "  2. then run this command again with --rotate-ca: the next CA signs the serving certificate.\n"
    "Pass --patch-webhooks NAME to both steps."
)
_STEP2 = (
    "CA rotation, step 2 of 2, Secret {ref}: the serving certificate is now signed by {ca}.\n"
    "ca.crt still trusts the old CA, so pods that have not reloaded yet keep verifying. The old CA\n"
    "leaves ca.crt at the next renewal, or now with --drop-old-ca once every pod serves the new\n"
    "certificate (gpu_queue_tls_cert_expiry_timestamp_seconds shows the new expiry on each pod)."
)


@dataclass(frozen=True)
class _Issued:
    ca: CertPair  # the signing CA; key_pem is empty when unknown (a Secret from an older version)
    serving: CertPair
    bundle: bytes  # the ca.crt / caBundle content (one or more CAs)
    kept: bool  # nothing to write
    pending: CertPair | None = None  # the staged CA of a rotation (ca-next.crt, ca-next.key)
    notice: str = ""  # stays on the Secret as the annotation _NOTICE


@dataclass(frozen=True)
class _Want:
    dns: Sequence[str]
    ips: Sequence[str]
    days: int
    renew_before_days: int
    rotate_ca: bool = False
    drop_old_ca: bool = False


def _issue(dns: Sequence[str], ips: Sequence[str], days: int) -> _Issued:
    ca = make_ca()
    return _Issued(ca, make_serving_cert(ca, dns, ips, days=days), ca.cert_pem, kept=False)


def _decide(stored: dict[str, bytes], want: _Want, ref: str) -> tuple[_Issued, list[str]]:
    """What the Secret must hold next, given what it holds (empty: no Secret); and what to tell."""
    cert, key, bundle = stored.get("tls.crt", b""), stored.get("tls.key", b""), stored.get("ca.crt", b"")
    signer = ca_pair(bundle, stored.get("ca.key", b""))
    pending = ca_pair(stored.get("ca-next.crt", b""), stored.get("ca-next.key", b""))
    say: list[str] = []
    if stored.get("ca-next.crt") and pending is None:
        say.append(f"ignoring ca-next.crt/ca-next.key of Secret {ref}: not a valid CA with its key")
    # What the certificate the pods serve now chains to: trusted until they have reloaded.
    served = issuer_of(cert, bundle) if cert else None
    current = [served] if served is not None else load_bundle(bundle)
    window, now = timedelta(days=want.renew_before_days), datetime.now(UTC)
    reason: str | None = "it lacks tls.crt, tls.key or ca.crt"
    if cert and key and bundle:
        reason = renewal_reason(cert, want.dns, want.ips, want.renew_before_days)
    ns, _, name = ref.partition("/")
    notice, staged_now = "", False
    if want.rotate_ca and pending is not None:  # step 2: the staged CA signs from now on
        signer, pending = pending, None
        names = [*want.dns, *(dns_names(cert) if served else [])]
        ips = [*want.ips, *(ip_addresses(cert) if served else [])]
        serving = make_serving_cert(signer, names, ips, days=want.days)
        say.append(_STEP2.format(ref=ref, ca=describe(signer)))
    else:
        if want.rotate_ca:  # step 1: stage the next CA, trusted next to the current one
            pending, staged_now = make_ca(), True
        if reason is None and not (staged_now or want.drop_old_ca):
            if signer is None:
                say.append(
                    f"note: Secret {ref} has no ca.key (made by an older gpu-queue): its renewal (from "
                    f"{not_after(cert) - window:%Y-%m-%d}) must make a new CA, which breaks copies of ca.crt "
                    f"such as the hub's. Avoid that: `gpu-queue certs --secret {ref} --rotate-ca` (two steps)."
                )
            return _Issued(signer or CertPair(bundle, b""), CertPair(cert, key), bundle, True, pending), say
        if reason is None:
            serving = CertPair(cert, key)
        else:
            if stored:
                say.append(f"renewing Secret {ref}: {reason}")
            if signer is None or not_after(signer.cert_pem) - now < window:
                why = (
                    f"its CA expires {not_after(signer.cert_pem):%Y-%m-%d}, within {window.days} days"
                    if signer is not None
                    else "the Secret has no usable ca.key (an older gpu-queue made it), so its CA cannot sign"
                )
                hint = "" if pending is None or staged_now else "Clients that got ca.crt after step 1 trust it. "
                signer, pending, staged_now = pending or make_ca(), None, False
                if current:  # someone may hold the old CA: say so, loudly
                    say.append(_NEW_CA.format(ref=ref, ca=describe(signer), why=why, staged=hint, ns=ns, name=name))
                    notice = f"new CA {describe(signer)}: copy ca.crt to the hub again"
            serving = make_serving_cert(signer, want.dns, want.ips, days=want.days)
            if not_after(signer.cert_pem) < now + timedelta(days=want.days):
                say.append(f"note: the CA expires {not_after(signer.cert_pem):%Y-%m-%d}; rotate it with --rotate-ca")
        if staged_now and pending is not None:
            say.append(_STEP1.format(ref=ref, ca=describe(pending), ns=ns, name=name))
    if pending is not None:
        notice = "CA rotation step 1 done: copy ca.crt to the hub, then run `gpu-queue certs --rotate-ca` again"
    new_bundle = trust_bundle([signer, *current, pending], previous=bundle)
    ca = signer or CertPair(bundle, b"")
    if want.drop_old_ca and reason is None:
        if new_bundle == bundle:
            say.append(f"nothing to drop: ca.crt of Secret {ref} holds only CAs its certificates need")
            return _Issued(ca, serving, bundle, kept=True, pending=pending), say
        left = ", ".join(describe(c) for c in load_bundle(new_bundle))
        say.append(f"dropping the CAs that sign nothing served from ca.crt of Secret {ref}; it keeps {left}")
    return _Issued(ca, serving, new_bundle, kept=False, pending=pending, notice=notice), say


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


def _secret_body(client: Any, ref: str, existing: Any, issued: _Issued) -> Any:
    namespace, name = _split_secret(ref)
    data = {"tls.crt": issued.serving.cert_pem, "tls.key": issued.serving.key_pem, "ca.crt": issued.bundle}
    if issued.ca.key_pem:
        data["ca.key"] = issued.ca.key_pem
    if issued.pending is not None:
        data["ca-next.crt"], data["ca-next.key"] = issued.pending.cert_pem, issued.pending.key_pem
    annotations = {k: v for k, v in ((existing and existing.metadata.annotations) or {}).items() if k != _NOTICE}
    annotations |= {_NOTICE: issued.notice} if issued.notice else {}
    return client.V1Secret(
        api_version="v1",
        kind="Secret",
        type="kubernetes.io/tls",
        metadata=client.V1ObjectMeta(
            name=name,
            namespace=namespace,
            labels={"app.kubernetes.io/name": "gpu-queue", "app.kubernetes.io/component": "webhook-tls"},
            annotations=annotations or None,
            resource_version=existing.metadata.resource_version if existing is not None else None,
        ),
        data={k: base64.b64encode(v).decode() for k, v in data.items()},
    )


async def _ensure_secret(api_client: Any, ref: str, want: _Want) -> _Issued:
    """Create the TLS Secret, renew or rotate it, or keep it; optimistic concurrency on races."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    namespace, name = _split_secret(ref)
    core = client.CoreV1Api(api_client)
    rotation_seen: bool | None = None  # was a CA staged when --rotate-ca first read the Secret?
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
        data = (existing.data if existing is not None else None) or {}
        stored = {k: base64.b64decode(data[k]) for k in _KEYS if data.get(k)}
        if want.rotate_ca:
            staged = "ca-next.crt" in stored
            if rotation_seen is not None and staged != rotation_seen:
                # Another writer moved the rotation on: deciding again would skip (or redo) a step.
                raise CertsError(f"Secret {ref} changed during --rotate-ca (another rotation?): check it, run again")
            rotation_seen = staged
        issued, say = _decide(stored, want, ref)
        for line in say:
            print(line, file=sys.stderr)
        if issued.kept:
            print(
                f"keeping Secret {ref}: valid until {not_after(issued.serving.cert_pem):%Y-%m-%d} UTC", file=sys.stderr
            )
            return issued
        body = _secret_body(client, ref, existing, issued)
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


async def _run_cluster(args: argparse.Namespace, want: _Want) -> _Issued:
    issued: _Issued | None = None
    api_client = await _api_client(args.kubeconfig)
    async with api_client:
        if args.secret:
            issued = await _ensure_secret(api_client, args.secret, want)
        else:
            issued = _issue(want.dns, want.ips, want.days)
        for name in args.patch_webhooks:
            for what in await _patch_webhooks(api_client, name, ca_bundle_b64(issued.bundle)):
                print(f"patched caBundle of {what}", file=sys.stderr)
    return issued


def _usage_error(args: argparse.Namespace) -> str | None:
    if args.days <= 0:
        return "--days must be positive"
    if not args.out and not args.secret:
        return "say where the certificate goes: --out DIR and/or --secret NAMESPACE/NAME"
    if (args.rotate_ca or args.drop_old_ca) and not args.secret:
        return "--rotate-ca and --drop-old-ca work on a Secret: give --secret NAMESPACE/NAME"
    if args.rotate_ca and args.drop_old_ca:
        return "--rotate-ca and --drop-old-ca are separate steps: run them one at a time"
    if args.kubeconfig and not Path(args.kubeconfig).is_file():
        return f"--kubeconfig {args.kubeconfig}: no such file"
    return None


def run_certs(args: argparse.Namespace) -> int:
    """``gpu-queue certs``: make, renew, rotate or keep the pair; store it; print the base64 caBundle."""
    dns = service_dns_names(args.service, args.namespace, args.dns)
    try:
        ips = [str(ipaddress.ip_address(ip)) for ip in args.ip]
    except ValueError as exc:
        print(f"error: --ip: {exc}", file=sys.stderr)
        return 2
    if (usage := _usage_error(args)) is not None:
        print(f"error: {usage}", file=sys.stderr)
        return 2
    want = _Want(dns, ips, args.days, args.renew_before_days, args.rotate_ca, args.drop_old_ca)
    try:
        if args.secret or args.patch_webhooks:
            issued = asyncio.run(_run_cluster(args, want))
        else:
            issued = _issue(dns, ips, args.days)
        if args.out:
            write_pair(Path(args.out), issued.ca, issued.serving, ca_bundle=issued.bundle)
            ca_key = ", ca.key" if issued.ca.key_pem else ""
            print(f"wrote ca.crt, tls.crt, tls.key{ca_key} to {args.out}", file=sys.stderr)
    except CertsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror}; check the --out directory", file=sys.stderr)
        return 1
    print(ca_bundle_b64(issued.bundle))
    return 0
