"""Certificate primitives and ``gpu-queue certs``: SANs, chains, key permissions, Secret and caBundle.

The Secret/webhook half runs against a small fake of the Kubernetes API on 127.0.0.1 (only the
endpoints the command uses), served from its own thread because the command runs its own loop.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store, VerificationError

from webhook import certs
from webhook.certs import CertPair, make_ca, make_client_cert, make_serving_cert, not_after, write_pair
from webhook.cli import main


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _verify_server(ca_pem: bytes, leaf_pem: bytes, subject: DNSName | IPAddress) -> None:
    store = Store(x509.load_pem_x509_certificates(ca_pem))
    verifier = PolicyBuilder().store(store).build_server_verifier(subject)
    verifier.verify(_cert(leaf_pem), [])


@pytest.fixture(scope="module")
def ca() -> CertPair:
    return make_ca()


# ------------------------------------------------------------------------------ primitives


def test_ca_is_a_leaf_only_ca(ca: CertPair) -> None:
    cert = _cert(ca.cert_pem)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gpu-queue-ca"


def test_serving_cert_carries_every_service_name_and_ip(ca: CertPair) -> None:
    names = certs.service_dns_names("gpu-queue", "hub", ["webhook.example.org"])
    pair = make_serving_cert(ca, names, ["127.0.0.1", "::1"])
    assert certs.dns_names(pair.cert_pem) == [
        "gpu-queue",
        "gpu-queue.hub",
        "gpu-queue.hub.svc",
        "gpu-queue.hub.svc.cluster.local",
        "webhook.example.org",
    ]
    assert certs.ip_addresses(pair.cert_pem) == ["127.0.0.1", "::1"]
    usage = _cert(pair.cert_pem).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_serving_cert_chain_verifies_for_its_names_and_ips(ca: CertPair) -> None:
    pair = make_serving_cert(ca, certs.service_dns_names("gpu-queue", "gpu-queue"), ["127.0.0.1"])
    _verify_server(ca.cert_pem, pair.cert_pem, DNSName("gpu-queue.gpu-queue.svc"))
    _verify_server(ca.cert_pem, pair.cert_pem, IPAddress(ipaddress.ip_address("127.0.0.1")))


def test_serving_cert_does_not_verify_for_other_names_or_cas(ca: CertPair) -> None:
    pair = make_serving_cert(ca, ["gpu-queue.gpu-queue.svc"])
    with pytest.raises(VerificationError):
        _verify_server(ca.cert_pem, pair.cert_pem, DNSName("other.gpu-queue.svc"))
    with pytest.raises(VerificationError):
        _verify_server(make_ca().cert_pem, pair.cert_pem, DNSName("gpu-queue.gpu-queue.svc"))


def test_client_cert_names_user_and_groups_for_kubernetes(ca: CertPair) -> None:
    pair = make_client_cert(ca, "system:admin", ["system:masters"])
    cert = _cert(pair.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:admin"
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["system:masters"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.issuer == _cert(ca.cert_pem).subject


def test_not_after_is_days_from_now() -> None:
    ca = make_ca(days=10)
    expected = datetime.now(UTC) + timedelta(days=10)
    assert abs((not_after(ca.cert_pem) - expected).total_seconds()) < 60


def test_leaf_never_outlives_its_ca() -> None:
    short_ca = make_ca(days=2)
    leaf = make_serving_cert(short_ca, ["x"], days=365)
    assert not_after(leaf.cert_pem) == not_after(short_ca.cert_pem)


def test_write_pair_keys_are_owner_only_even_with_a_loose_umask(tmp_path: Path, ca: CertPair) -> None:
    old = os.umask(0)
    try:
        write_pair(tmp_path / "out", ca, make_serving_cert(ca, ["x"]))
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()}
    assert modes == {"ca.crt": 0o644, "ca.key": 0o600, "tls.crt": 0o644, "tls.key": 0o600}


def test_write_pair_skips_ca_key_when_the_ca_key_is_unknown(tmp_path: Path, ca: CertPair) -> None:
    write_pair(tmp_path, CertPair(ca.cert_pem, b""), make_serving_cert(ca, ["x"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]


# ------------------------------------------------------------------------------------- CLI


def test_cli_writes_files_and_prints_a_ca_bundle_that_decodes_to_the_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "certs"
    code = main(["certs", "--out", str(out), "--service", "svc", "--namespace", "ns", "--ip", "127.0.0.1"])
    assert code == 0
    stdout = capsys.readouterr().out.strip()
    bundle = base64.b64decode(stdout, validate=True)
    assert bundle == (out / "ca.crt").read_bytes()
    tls = (out / "tls.crt").read_bytes()
    _verify_server(bundle, tls, DNSName("svc.ns.svc"))
    assert "svc.ns.svc.cluster.local" in certs.dns_names(tls)
    assert stat.S_IMODE((out / "tls.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "ca.key").stat().st_mode) == 0o600


def test_cli_without_a_destination_says_what_to_give(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs"]) == 2
    assert "--out DIR and/or --secret NAMESPACE/NAME" in capsys.readouterr().err


def test_cli_rejects_a_bad_ip_before_making_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--out", str(tmp_path / "o"), "--ip", "not-an-ip"]) == 2
    assert "--ip" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------- Secret and caBundle (fake API)


class FakeKube:
    """Just enough of the Kubernetes API: Secrets (get/create/replace) and webhook configurations."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.webhooks: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[str] = []
        self._version = 0

    def _rv(self) -> str:
        self._version += 1
        return str(self._version)

    @staticmethod
    def _not_found(kind: str, name: str) -> web.Response:
        body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
        body["message"] = f'{kind} "{name}" not found'
        return web.json_response(body, status=404)

    def app(self) -> web.Application:
        app = web.Application()
        secret = "/api/v1/namespaces/{ns}/secrets/{name}"
        app.router.add_get(secret, self.get_secret)
        app.router.add_put(secret, self.put_secret)
        app.router.add_post("/api/v1/namespaces/{ns}/secrets", self.post_secret)
        hooks = "/apis/admissionregistration.k8s.io/v1/{kind}/{name}"
        app.router.add_get(hooks, self.get_hooks)
        app.router.add_patch(hooks, self.patch_hooks)
        return app

    async def get_secret(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.secrets:
            return self._not_found("secrets", key[1])
        return web.json_response(self.secrets[key])

    async def post_secret(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = (request.match_info["ns"], body["metadata"]["name"])
        if key in self.secrets:
            return web.json_response({"kind": "Status", "code": 409, "reason": "AlreadyExists"}, status=409)
        body["metadata"]["resourceVersion"] = self._rv()
        self.secrets[key] = body
        self.writes.append(f"create secret {key[0]}/{key[1]}")
        return web.json_response(body, status=201)

    async def put_secret(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = (request.match_info["ns"], request.match_info["name"])
        if body["metadata"].get("resourceVersion") != self.secrets[key]["metadata"]["resourceVersion"]:
            return web.json_response({"kind": "Status", "code": 409, "reason": "Conflict"}, status=409)
        body["metadata"]["resourceVersion"] = self._rv()
        self.secrets[key] = body
        self.writes.append(f"replace secret {key[0]}/{key[1]}")
        return web.json_response(body)

    async def get_hooks(self, request: web.Request) -> web.Response:
        key = (request.match_info["kind"], request.match_info["name"])
        if key not in self.webhooks:
            return self._not_found(key[0], key[1])
        return web.json_response(self.webhooks[key])

    async def patch_hooks(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/json-patch+json"
        key = (request.match_info["kind"], request.match_info["name"])
        try:
            patched = jsonpatch.apply_patch(self.webhooks[key], await request.json())
        except jsonpatch.JsonPatchTestFailed:
            return web.json_response({"kind": "Status", "code": 422, "reason": "Invalid"}, status=422)
        self.webhooks[key] = patched
        self.writes.append(f"patch {key[0]}/{key[1]}")
        return web.json_response(patched)

    def add_webhooks(self, kind: str, name: str, *hook_names: str) -> None:
        plural = kind.lower() + "s"
        self.webhooks[(plural, name)] = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name, "resourceVersion": self._rv()},
            "webhooks": [
                {
                    "name": hook,
                    "clientConfig": {"service": {"name": "gpu-queue", "namespace": "gpu-queue", "path": "/mutate"}},
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                }
                for hook in hook_names
            ],
        }


@pytest.fixture
def fake_kube(tmp_path: Path) -> Iterator[tuple[FakeKube, Path]]:
    """The fake API in its own thread and loop; yields it and a kubeconfig that points at it."""
    fake = FakeKube()
    ready = threading.Event()
    port: list[int] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def run() -> None:
        runner = web.AppRunner(fake.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port.append(runner.addresses[0][1])
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert ready.wait(10), "fake API did not start"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port[0]}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
                "current-context": "fake",
            }
        )
    )
    yield fake, kubeconfig
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def _secret_data(fake: FakeKube, key: str, ns: str = "gpu-queue", name: str = "tls") -> bytes:
    return base64.b64decode(fake.secrets[(ns, name)]["data"][key])


def _run(kubeconfig: Path, *extra: str) -> int:
    return main(["certs", "--kubeconfig", str(kubeconfig), "--secret", "gpu-queue/tls", *extra])


def test_secret_is_created_as_tls_type_with_ca(
    fake_kube: tuple[FakeKube, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, kubeconfig = fake_kube
    assert _run(kubeconfig) == 0
    secret = fake.secrets[("gpu-queue", "tls")]
    assert secret["type"] == "kubernetes.io/tls"
    assert sorted(secret["data"]) == ["ca.crt", "tls.crt", "tls.key"]
    bundle = base64.b64decode(capsys.readouterr().out.strip())
    assert bundle == _secret_data(fake, "ca.crt")
    _verify_server(bundle, _secret_data(fake, "tls.crt"), DNSName("gpu-queue.gpu-queue.svc"))


def test_secret_still_valid_is_kept_and_its_ca_printed(
    fake_kube: tuple[FakeKube, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, kubeconfig = fake_kube
    assert _run(kubeconfig) == 0
    first = capsys.readouterr().out
    assert _run(kubeconfig, "--renew-before-days", "30") == 0
    assert capsys.readouterr().out == first
    assert fake.writes == ["create secret gpu-queue/tls"]


def test_secret_expiring_soon_is_renewed_and_bundle_trusts_old_and_new_ca(
    fake_kube: tuple[FakeKube, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, kubeconfig = fake_kube
    assert _run(kubeconfig, "--days", "10") == 0
    old_ca = _secret_data(fake, "ca.crt")
    capsys.readouterr()
    assert _run(kubeconfig, "--days", "10", "--renew-before-days", "30") == 0
    assert fake.writes == ["create secret gpu-queue/tls", "replace secret gpu-queue/tls"]
    bundle = _secret_data(fake, "ca.crt")
    captured = capsys.readouterr()
    assert base64.b64decode(captured.out.strip()) == bundle
    assert "renewing Secret gpu-queue/tls: it expires" in captured.err
    cas = x509.load_pem_x509_certificates(bundle)
    assert len(cas) == 2 and cas[1] == _cert(old_ca)
    _verify_server(bundle, _secret_data(fake, "tls.crt"), DNSName("gpu-queue.gpu-queue.svc"))


def test_secret_missing_a_requested_name_is_renewed(fake_kube: tuple[FakeKube, Path]) -> None:
    fake, kubeconfig = fake_kube
    assert _run(kubeconfig) == 0
    assert _run(kubeconfig, "--dns", "webhook.example.org") == 0
    assert "webhook.example.org" in certs.dns_names(_secret_data(fake, "tls.crt"))


def test_patch_webhooks_sets_ca_bundle_on_every_webhook_of_both_kinds(
    fake_kube: tuple[FakeKube, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, kubeconfig = fake_kube
    fake.add_webhooks("MutatingWebhookConfiguration", "gpu-queue", "mutate.gpu-queue.io", "second.gpu-queue.io")
    fake.add_webhooks("ValidatingWebhookConfiguration", "gpu-queue", "validate.gpu-queue.io")
    assert _run(kubeconfig, "--patch-webhooks", "gpu-queue") == 0
    printed = capsys.readouterr().out.strip()
    for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        hooks = fake.webhooks[(kind, "gpu-queue")]["webhooks"]
        assert [h["clientConfig"]["caBundle"] for h in hooks] == [printed] * len(hooks)
        assert all(h["clientConfig"]["service"]["name"] == "gpu-queue" for h in hooks)


def test_patch_webhooks_with_only_a_mutating_configuration_patches_it(fake_kube: tuple[FakeKube, Path]) -> None:
    fake, kubeconfig = fake_kube
    fake.add_webhooks("MutatingWebhookConfiguration", "only-mutating", "m.gpu-queue.io")
    assert _run(kubeconfig, "--patch-webhooks", "only-mutating") == 0
    hook = fake.webhooks[("mutatingwebhookconfigurations", "only-mutating")]["webhooks"][0]
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == _secret_data(fake, "ca.crt")


def test_patch_webhooks_unknown_name_fails_with_what_to_do(
    fake_kube: tuple[FakeKube, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, kubeconfig = fake_kube
    assert _run(kubeconfig, "--patch-webhooks", "nope") == 1
    err = capsys.readouterr().err
    assert "no MutatingWebhookConfiguration or ValidatingWebhookConfiguration named 'nope'" in err
    assert "install the chart" in err


def test_secret_reference_without_namespace_is_rejected(
    fake_kube: tuple[FakeKube, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, kubeconfig = fake_kube
    assert main(["certs", "--kubeconfig", str(kubeconfig), "--secret", "just-a-name"]) == 1
    assert "expected NAMESPACE/NAME" in capsys.readouterr().err


def test_missing_kubeconfig_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--secret", "a/b", "--kubeconfig", str(tmp_path / "none")]) == 2
    assert "no such file" in capsys.readouterr().err
