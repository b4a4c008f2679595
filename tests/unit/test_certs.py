"""Certificate primitives and ``gpu-queue certs``: SANs, chains, key permissions, Secret and caBundle.

The Secret/webhook half runs against a small fake of the Kubernetes API on 127.0.0.1 (only the
endpoints the command uses), served from its own thread because the command runs its own loop.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import ssl
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
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


SVC = DNSName("gpu-queue.gpu-queue.svc")


def _handshake(tmp_path: Path, bundle: bytes, serving: CertPair) -> None:
    """A TLS handshake (OpenSSL, like the hub's client) of a server with ``serving`` and a client
    that trusts ``bundle``; raises ssl.SSLCertVerificationError when the client does not verify."""
    (tmp_path / "hs.crt").write_bytes(serving.cert_pem)
    (tmp_path / "hs.key").write_bytes(serving.key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "hs.crt", tmp_path / "hs.key")
    client_ctx = ssl.create_default_context(cadata=bundle.decode())
    bios = [ssl.MemoryBIO() for _ in range(4)]  # client in/out, server in/out
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname="gpu-queue.gpu-queue.svc")
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, obj in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        bios[2].write(bios[1].read())
        bios[0].write(bios[3].read())
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


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


def test_issuer_of_tells_same_named_cas_apart_by_signature(ca: CertPair) -> None:
    other = make_ca()
    assert _cert(other.cert_pem).subject == _cert(ca.cert_pem).subject
    leaf = make_serving_cert(other, ["x"])
    assert certs.issuer_of(leaf.cert_pem, ca.cert_pem + other.cert_pem) == _cert(other.cert_pem)
    assert certs.issuer_of(leaf.cert_pem, ca.cert_pem) is None
    assert certs.issuer_of(b"not pem", ca.cert_pem) is None


def test_ca_pair_finds_the_ca_of_a_key_and_refuses_other_keys(ca: CertPair) -> None:
    other = make_ca()
    assert certs.ca_pair(other.cert_pem + ca.cert_pem, ca.key_pem) == ca
    assert certs.ca_pair(other.cert_pem, ca.key_pem) is None
    assert certs.ca_pair(ca.cert_pem, b"") is None
    assert certs.ca_pair(ca.cert_pem, b"garbage") is None
    leaf = make_serving_cert(ca, ["x"])  # a leaf's own key does not make it a CA
    assert certs.ca_pair(leaf.cert_pem, leaf.key_pem) is None


def test_trust_bundle_drops_repeats_and_expired_cas_and_keeps_unchanged_bytes(ca: CertPair) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpu-queue-ca")])
    now = datetime.now(UTC)
    expired = (
        x509.CertificateBuilder(name, name, key.public_key(), x509.random_serial_number(), now - timedelta(2), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    other = make_ca()
    previous = ca.cert_pem + other.cert_pem
    assert certs.trust_bundle([ca, None, _cert(other.cert_pem), ca], previous) is previous
    assert certs.trust_bundle([other, expired, ca]) == other.cert_pem + ca.cert_pem


def test_handshake_helper_fails_for_a_client_that_trusts_another_ca(tmp_path: Path, ca: CertPair) -> None:
    pair = make_serving_cert(ca, ["gpu-queue.gpu-queue.svc"])
    _handshake(tmp_path, ca.cert_pem, pair)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tmp_path, make_ca().cert_pem, pair)


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
        # Another writer that gets in first, once: called with the stored Secret before a PUT.
        self.interfere: Callable[[dict[str, Any]], None] | None = None

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
        if self.interfere is not None:
            interfere, self.interfere = self.interfere, None
            interfere(self.secrets[key])
            self.secrets[key]["metadata"]["resourceVersion"] = self._rv()
            self.writes.append(f"other writer {key[0]}/{key[1]}")
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


def _serving(fake: FakeKube) -> CertPair:
    return CertPair(_secret_data(fake, "tls.crt"), _secret_data(fake, "tls.key"))


def _keys(fake: FakeKube) -> list[str]:
    return sorted(fake.secrets[("gpu-queue", "tls")]["data"])


def _store_old_format(fake: FakeKube, days: int) -> tuple[CertPair, CertPair]:
    """A Secret as an older gpu-queue made it: tls.crt, tls.key, ca.crt, and no ca.key."""
    ca = make_ca()
    pair = make_serving_cert(ca, certs.service_dns_names("gpu-queue", "gpu-queue"), days=days)
    data = {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem, "ca.crt": ca.cert_pem}
    fake.secrets[("gpu-queue", "tls")] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "tls", "namespace": "gpu-queue", "resourceVersion": fake._rv()},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }
    return ca, pair


def test_secret_is_created_as_tls_type_with_ca_and_its_key(
    fake_kube: tuple[FakeKube, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, kubeconfig = fake_kube
    assert _run(kubeconfig) == 0
    secret = fake.secrets[("gpu-queue", "tls")]
    assert secret["type"] == "kubernetes.io/tls"
    assert sorted(secret["data"]) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    bundle = base64.b64decode(capsys.readouterr().out.strip())
    assert bundle == _secret_data(fake, "ca.crt")
    assert certs.ca_pair(bundle, _secret_data(fake, "ca.key")) == CertPair(bundle, _secret_data(fake, "ca.key"))
    _verify_server(bundle, _secret_data(fake, "tls.crt"), SVC)


def test_secret_still_valid_is_kept_and_its_ca_printed(
    fake_kube: tuple[FakeKube, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, kubeconfig = fake_kube
    assert _run(kubeconfig) == 0
    first = capsys.readouterr().out
    assert _run(kubeconfig, "--renew-before-days", "30") == 0
    assert capsys.readouterr().out == first
    assert fake.writes == ["create secret gpu-queue/tls"]


def test_renewal_keeps_the_ca_so_a_copy_of_the_old_ca_crt_verifies_the_new_certificate(
    fake_kube: tuple[FakeKube, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake, kubeconfig = fake_kube
    assert _run(kubeconfig, "--days", "10") == 0
    hub_copy, old_tls = _secret_data(fake, "ca.crt"), _secret_data(fake, "tls.crt")
    old_key = fake.secrets[("gpu-queue", "tls")]["data"].get("ca.key")
    fake.add_webhooks("MutatingWebhookConfiguration", "gpu-queue", "mutate.gpu-queue.io")
    capsys.readouterr()
    assert _run(kubeconfig, "--days", "10", "--renew-before-days", "30", "--patch-webhooks", "gpu-queue") == 0
    new_tls = _secret_data(fake, "tls.crt")
    _verify_server(hub_copy, new_tls, SVC)  # the point: the hub's copy of ca.crt still verifies
    _handshake(tmp_path, hub_copy, _serving(fake))
    assert fake.writes[:2] == ["create secret gpu-queue/tls", "replace secret gpu-queue/tls"]
    captured = capsys.readouterr()
    assert "renewing Secret gpu-queue/tls: it expires" in captured.err and "WARNING" not in captured.err
    assert _cert(new_tls).serial_number != _cert(old_tls).serial_number
    assert _secret_data(fake, "ca.crt") == hub_copy and _secret_data(fake, "ca.key") == base64.b64decode(old_key)
    hook = fake.webhooks[("mutatingwebhookconfigurations", "gpu-queue")]["webhooks"][0]
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == hub_copy


def test_renewal_for_a_new_name_keeps_the_ca(fake_kube: tuple[FakeKube, Path]) -> None:
    fake, kubeconfig = fake_kube
    assert _run(kubeconfig) == 0
    hub_copy = _secret_data(fake, "ca.crt")
    assert _run(kubeconfig, "--dns", "webhook.example.org") == 0
    new_tls = _secret_data(fake, "tls.crt")
    assert "webhook.example.org" in certs.dns_names(new_tls)
    assert _secret_data(fake, "ca.crt") == hub_copy
    _verify_server(hub_copy, new_tls, DNSName("webhook.example.org"))


def test_old_format_secret_without_ca_key_gets_a_new_ca_with_overlap_and_a_loud_warning(
    fake_kube: tuple[FakeKube, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, kubeconfig = fake_kube
    old_ca, old_pair = _store_old_format(fake, days=10)
    fake.add_webhooks("MutatingWebhookConfiguration", "gpu-queue", "mutate.gpu-queue.io")
    assert _run(kubeconfig, "--patch-webhooks", "gpu-queue") == 0
    captured = capsys.readouterr()
    assert "WARNING: Secret gpu-queue/tls gets a NEW CA" in captured.err
    assert "no usable ca.key" in captured.err and "hub.extraFiles.gpu-queue-ca" in captured.err
    bundle, new_tls = _secret_data(fake, "ca.crt"), _secret_data(fake, "tls.crt")
    cas = x509.load_pem_x509_certificates(bundle)
    assert len(cas) == 2 and cas[1] == _cert(old_ca.cert_pem)  # the overlap
    _verify_server(bundle, new_tls, SVC)  # the new certificate, for pods that reloaded
    _verify_server(bundle, old_pair.cert_pem, SVC)  # the old one, for pods that have not yet
    with pytest.raises(VerificationError):  # why the warning: the hub's old copy does not verify
        _verify_server(old_ca.cert_pem, new_tls, SVC)
    hook = fake.webhooks[("mutatingwebhookconfigurations", "gpu-queue")]["webhooks"][0]
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == bundle
    assert certs.ca_pair(bundle, _secret_data(fake, "ca.key")) is not None  # renewals keep it from now on
    assert (
        "copy ca.crt to the hub"
        in fake.secrets[("gpu-queue", "tls")]["metadata"]["annotations"]["gpu-queue.io/ca-notice"]
    )


def test_old_format_secret_still_valid_is_kept_with_a_note_on_rotating_it(
    fake_kube: tuple[FakeKube, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, kubeconfig = fake_kube
    _store_old_format(fake, days=365)
    assert _run(kubeconfig) == 0
    assert fake.writes == []
    assert "has no ca.key" in (err := capsys.readouterr().err) and "--rotate-ca" in err


def test_rotate_ca_step_1_stages_a_trusted_next_ca_and_serves_on(
    fake_kube: tuple[FakeKube, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake, kubeconfig = fake_kube
    fake.add_webhooks("ValidatingWebhookConfiguration", "gpu-queue", "validate.gpu-queue.io")
    assert _run(kubeconfig) == 0
    before, served, ca_key = (_secret_data(fake, k) for k in ("ca.crt", "tls.crt", "ca.key"))
    capsys.readouterr()
    assert _run(kubeconfig, "--rotate-ca", "--patch-webhooks", "gpu-queue") == 0
    err = capsys.readouterr().err
    assert "step 1 of 2" in err and "--rotate-ca" in err and "gpu-queue-ca.stringData" in err
    assert _keys(fake) == ["ca-next.crt", "ca-next.key", "ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert _secret_data(fake, "tls.crt") == served and _secret_data(fake, "ca.key") == ca_key
    after, staged = _secret_data(fake, "ca.crt"), _secret_data(fake, "ca-next.crt")
    assert x509.load_pem_x509_certificates(after) == [_cert(before), _cert(staged)]  # old + new
    _verify_server(before, _secret_data(fake, "tls.crt"), SVC)  # a client from before the step
    _handshake(tmp_path, before, _serving(fake))
    hook = fake.webhooks[("validatingwebhookconfigurations", "gpu-queue")]["webhooks"][0]
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == after


def test_rotate_ca_step_2_signs_with_the_staged_ca_and_keeps_trusting_the_old_one(
    fake_kube: tuple[FakeKube, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake, kubeconfig = fake_kube
    assert _run(kubeconfig, "--dns", "webhook.example.org") == 0
    original = _secret_data(fake, "ca.crt")
    assert _run(kubeconfig, "--rotate-ca") == 0
    hub_copy, staged, staged_key = (_secret_data(fake, k) for k in ("ca.crt", "ca-next.crt", "ca-next.key"))
    old_served = _serving(fake)
    capsys.readouterr()
    assert _run(kubeconfig, "--rotate-ca") == 0  # no --dns: the names of the served certificate stay
    assert "step 2 of 2" in capsys.readouterr().err
    assert _keys(fake) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert _secret_data(fake, "ca.key") == staged_key
    bundle, new_tls = _secret_data(fake, "ca.crt"), _secret_data(fake, "tls.crt")
    assert x509.load_pem_x509_certificates(bundle) == [_cert(staged), _cert(original)]  # new + old
    assert certs.issuer_of(new_tls, bundle) == _cert(staged)
    assert "webhook.example.org" in certs.dns_names(new_tls)
    _verify_server(hub_copy, new_tls, SVC)  # a client with the bundle of step 1
    _handshake(tmp_path, hub_copy, _serving(fake))
    _verify_server(bundle, old_served.cert_pem, SVC)  # pods that have not reloaded yet
    with pytest.raises(VerificationError):  # a copy from before step 1 had to be replaced
        _verify_server(original, new_tls, SVC)


def test_drop_old_ca_ends_the_overlap_once_and_then_has_nothing_to_drop(
    fake_kube: tuple[FakeKube, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, kubeconfig = fake_kube
    assert _run(kubeconfig) == 0
    assert _run(kubeconfig, "--rotate-ca") == 0
    staged = _secret_data(fake, "ca-next.crt")
    assert _run(kubeconfig, "--drop-old-ca") == 0  # step 1 pending: both CAs are needed
    assert "nothing to drop" in capsys.readouterr().err
    assert _run(kubeconfig, "--rotate-ca") == 0
    hub_copy, served = _secret_data(fake, "ca.crt"), _secret_data(fake, "tls.crt")
    writes = len(fake.writes)
    assert _run(kubeconfig, "--drop-old-ca") == 0
    assert _secret_data(fake, "ca.crt") == staged and _secret_data(fake, "tls.crt") == served
    _verify_server(hub_copy, served, SVC)
    assert _run(kubeconfig, "--drop-old-ca") == 0
    assert "nothing to drop" in capsys.readouterr().err and len(fake.writes) == writes + 1


def test_ordinary_renewal_after_a_rotation_drops_the_old_ca_and_between_steps_keeps_the_staged_one(
    fake_kube: tuple[FakeKube, Path],
) -> None:
    fake, kubeconfig = fake_kube
    assert _run(kubeconfig) == 0
    assert _run(kubeconfig, "--rotate-ca") == 0
    between = _secret_data(fake, "ca.crt")
    assert _run(kubeconfig, "--dns", "a.example.org") == 0  # renewal between the steps
    assert _secret_data(fake, "ca.crt") == between and "ca-next.crt" in _keys(fake)
    _verify_server(between, _secret_data(fake, "tls.crt"), DNSName("a.example.org"))
    assert _run(kubeconfig, "--rotate-ca", "--dns", "a.example.org") == 0
    staged = x509.load_pem_x509_certificates(_secret_data(fake, "ca.crt"))[0]
    assert _run(kubeconfig, "--dns", "a.example.org", "--dns", "b.example.org") == 0
    assert x509.load_pem_x509_certificates(_secret_data(fake, "ca.crt")) == [staged]
    _verify_server(between, _secret_data(fake, "tls.crt"), DNSName("b.example.org"))


def test_a_concurrent_renewal_wins_and_the_command_keeps_what_it_wrote(
    fake_kube: tuple[FakeKube, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, kubeconfig = fake_kube
    assert _run(kubeconfig, "--days", "10") == 0
    their_ca = make_ca()
    theirs = make_serving_cert(their_ca, certs.service_dns_names("gpu-queue", "gpu-queue"))

    def renew(secret: dict[str, Any]) -> None:  # another run of the command, a moment earlier
        data = {"tls.crt": theirs.cert_pem, "tls.key": theirs.key_pem, "ca.crt": their_ca.cert_pem}
        secret["data"] = {k: base64.b64encode(v).decode() for k, v in data.items()}

    fake.interfere = renew
    assert _run(kubeconfig, "--renew-before-days", "30") == 0  # 409, read again, decide again: keep
    assert fake.writes == ["create secret gpu-queue/tls", "other writer gpu-queue/tls"]
    assert _secret_data(fake, "tls.crt") == theirs.cert_pem and _secret_data(fake, "ca.crt") == their_ca.cert_pem
    assert "keeping Secret gpu-queue/tls" in capsys.readouterr().err


def test_a_concurrent_rotation_step_stops_the_command_instead_of_taking_the_next_step(
    fake_kube: tuple[FakeKube, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, kubeconfig = fake_kube
    assert _run(kubeconfig) == 0
    other = make_ca()

    def stage(secret: dict[str, Any]) -> None:  # another admin's step 1, a moment earlier
        secret["data"]["ca-next.crt"] = base64.b64encode(other.cert_pem).decode()
        secret["data"]["ca-next.key"] = base64.b64encode(other.key_pem).decode()

    fake.interfere = stage
    assert _run(kubeconfig, "--rotate-ca") == 1
    assert "changed during --rotate-ca" in capsys.readouterr().err
    assert _secret_data(fake, "ca-next.crt") == other.cert_pem  # not promoted: no step skipped


def test_rotate_and_drop_need_a_secret_and_are_separate_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "--out", str(tmp_path), "--rotate-ca"]) == 2
    assert "give --secret" in capsys.readouterr().err
    assert main(["certs", "--secret", "a/b", "--rotate-ca", "--drop-old-ca"]) == 2
    assert "one at a time" in capsys.readouterr().err


def test_out_with_secret_writes_the_kept_ca_key(fake_kube: tuple[FakeKube, Path], tmp_path: Path) -> None:
    fake, kubeconfig = fake_kube
    assert _run(kubeconfig) == 0
    assert _run(kubeconfig, "--out", str(tmp_path / "o")) == 0
    assert (tmp_path / "o" / "ca.key").read_bytes() == _secret_data(fake, "ca.key")
    assert (tmp_path / "o" / "tls.crt").read_bytes() == _secret_data(fake, "tls.crt")


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
