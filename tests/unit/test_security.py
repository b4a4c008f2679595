"""Security properties of the served endpoints: TLS versions and ciphers of a real ``serve()``, a
token on every API route, tokens never logged, bounded request sizes, constant-time token checks.

``docs/threat-model.md`` names these tests as the ones that pin each defence.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import hmac
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import rsa

import webhook.certs
from tests.helpers.redis_server import free_port
from tests.helpers.reviews import request_review
from tests.unit.conftest import minimal_pod
from tests.unit.fakes import FakeCluster, MemoryQueueStore, at
from webhook import server
from webhook.api import create_api_app
from webhook.certs import make_ca, make_serving_cert, write_pair
from webhook.config import Config, load_config
from webhook.logs import JsonFormatter

READ = "sec-read-token-0a1b2c"
READ_2 = "sec-read-token-two-3d4e"
READ_3 = "sec-read-token-three-5f6a"
ADMIN = "sec-admin-token-7b8c9d"
ADMIN_2 = "sec-admin-token-two-0e1f"
TOKENS = (READ, READ_2, READ_3, ADMIN, ADMIN_2)
LIMIT = 64 * 1024
NS = "jhub"

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def review() -> dict[str, Any]:
    """A GPU pod's AdmissionReview, as the API server sends it."""
    return request_review(minimal_pod())


def _api_config() -> Config:
    return Config.model_validate(
        {
            "missingProfile": "allow",
            "unknownProfile": "deny",
            "pools": {"gpu": {"resource": "nvidia.com/gpu", "capacity": 8}},
            "api": {"readTokens": [READ, READ_2, READ_3], "adminTokens": [ADMIN, ADMIN_2]},
            "server": {"maxBodyBytes": LIMIT},
        }
    )


# ------------------------------------------------------------------------ a real serve() over TLS


@dataclass
class Served:
    config: Config
    base: str
    side: str
    ca_file: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


async def _start(tmp_path: Path, key: str = "ec", **env: str) -> AsyncIterator[Served]:
    ca = make_ca()
    if key == "rsa":
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(webhook.certs, "_new_key", lambda: rsa.generate_private_key(65537, 2048))
            pair = make_serving_cert(ca, ["localhost"], ["127.0.0.1"])
    else:
        pair = make_serving_cert(ca, ["localhost"], ["127.0.0.1"])
    write_pair(tmp_path, ca, pair)
    config = load_config(
        None,
        env={
            "GPU_QUEUE_TLS__CERTFILE": str(tmp_path / "tls.crt"),
            "GPU_QUEUE_TLS__KEYFILE": str(tmp_path / "tls.key"),
            "GPU_QUEUE_SERVER__HOST": "127.0.0.1",
            "GPU_QUEUE_SERVER__PORT": str(free_port()),
            "GPU_QUEUE_SERVER__METRICSPORT": str(free_port()),
            "GPU_QUEUE_SERVER__MAXBODYBYTES": str(LIMIT),
            "GPU_QUEUE_REDIS__URL": "redis://127.0.0.1:1/0",
            "GPU_QUEUE_REDIS__TIMEOUTSECONDS": "0.2",
            "GPU_QUEUE_KUBECONFIG": str(tmp_path / "missing-kubeconfig"),
            "GPU_QUEUE_API__READTOKENS": f"{READ},{READ_2}",
            "GPU_QUEUE_API__ADMINTOKENS": ADMIN,
            "GPU_QUEUE_LOGLEVEL": "DEBUG",
            **env,
        },
    )
    stop = asyncio.Event()
    task = asyncio.create_task(server.serve(config, stop))
    served = Served(
        config,
        f"https://127.0.0.1:{config.server.port}",
        f"http://127.0.0.1:{config.server.metrics_port}",
        tmp_path / "ca.crt",
    )
    deadline = asyncio.get_running_loop().time() + 20
    async with aiohttp.ClientSession() as session:
        while True:
            assert not task.done(), task.exception()
            try:
                async with session.get(f"{served.side}/readyz") as answer:
                    if answer.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            assert asyncio.get_running_loop().time() < deadline, "serve() did not get ready"
            await asyncio.sleep(0.02)
    try:
        yield served
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async for s in _start(tmp_path):
        yield s


async def handshake(served: Served, ctx: ssl.SSLContext) -> ssl.SSLObject:
    """A TLS handshake with the served port; the client's view of the session."""
    _, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", served.config.server.port, ssl=ctx, server_hostname="localhost"), 10
    )
    try:
        info = writer.get_extra_info("ssl_object")
        assert isinstance(info, ssl.SSLObject)
        return info
    finally:
        writer.close()
        with _quiet():
            await writer.wait_closed()


class _quiet:
    """Swallow the errors of closing a TLS stream the server may already have closed."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, OSError | ssl.SSLError)


def legacy_client(version: ssl.TLSVersion, cipher: str = "ALL:@SECLEVEL=0") -> ssl.SSLContext:
    """A client willing to speak exactly ``version`` with anything the local OpenSSL still has."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = version
    ctx.maximum_version = version
    ctx.set_ciphers(cipher)
    return ctx


async def _legacy_server_accepts(tmp_path: Path, version: ssl.TLSVersion) -> bool:
    """Control: a server that allows ``version`` completes a handshake with ``legacy_client``, so
    a refusal by ours is our policy, not a client or OpenSSL that cannot speak it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    legacy = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=ctx)
    port = legacy.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=legacy_client(version))
        writer.close()
        return True
    except (ssl.SSLError, OSError):
        return False
    finally:
        legacy.close()
        await legacy.wait_closed()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")  # on purpose: the old ones
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLSv1.0", "TLSv1.1"])
async def test_tls_1_0_and_1_1_handshakes_are_refused(served: Served, tmp_path: Path, version: ssl.TLSVersion) -> None:
    if not await _legacy_server_accepts(tmp_path, version):
        pytest.skip(f"this OpenSSL cannot speak {version.name} even when allowed: nothing to refuse")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await handshake(served, legacy_client(version))


def _tls12_suites() -> list[dict[str, Any]]:
    """Every TLS 1.2 suite (older suites included) that the local OpenSSL can offer at all."""
    ctx = legacy_client(ssl.TLSVersion.TLSv1_2)
    return [dict(c) for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"]


@pytest.mark.parametrize("key", ["ec", "rsa"])
async def test_tls_1_2_negotiates_only_forward_secret_aead_suites(tmp_path: Path, key: str) -> None:
    accepted: list[dict[str, Any]] = []
    suites = _tls12_suites()
    async for served in _start(tmp_path, key):
        for suite in suites:
            try:
                session = await handshake(served, legacy_client(ssl.TLSVersion.TLSv1_2, suite["name"]))
            except (ssl.SSLError, ConnectionResetError):
                continue
            assert session.version() == "TLSv1.2"
            accepted.append(suite)
    names = sorted(s["name"] for s in accepted)
    print(f"[tls] {key} certificate: {len(accepted)} of {len(suites)} TLS 1.2 suites accepted: {names}")
    assert len(suites) >= 30  # the client really offered the weak ones
    assert accepted, "no TLS 1.2 suite accepted at all"
    for suite in accepted:
        assert suite["kea"] == "kx-ecdhe" and suite["aead"] is True, suite["description"]
    assert f"ECDHE-{'ECDSA' if key == 'ec' else 'RSA'}-AES128-GCM-SHA256" in names


async def test_tls_1_3_is_preferred_with_an_aead_suite_and_no_compression(served: Served) -> None:
    session = await handshake(served, served.client_context())
    assert session.version() == "TLSv1.3"
    cipher = session.cipher()
    assert cipher is not None
    assert cipher[0] in ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
    assert session.compression() is None


# ------------------------------------------------------------------------------ tokens on routes


async def _api(aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    config = _api_config()
    store = MemoryQueueStore(clock=lambda: at(3600))
    cluster = FakeCluster()
    api = create_api_app(config, store, cluster, clock=lambda: at(3600))
    return await aiohttp_client(server.create_app(config, api_app=api))


SAMPLE = {"pool": "gpu", "namespace": NS, "pod": "jupyter-alice", "user": "alice"}


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, ops in document["paths"].items() for method, op in ops.items()]


async def test_every_documented_api_operation_but_the_document_requires_a_token(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await _api(aiohttp_client)
    document = await (await client.get("/api/v1/openapi.json")).json()
    public = []
    checked = 0
    for method, template, operation in _operations(document):
        url = "/api/v1" + template.format(**SAMPLE)
        if operation.get("security") == []:
            public.append(template)
            continue
        for headers in (
            {},
            {"Authorization": "Bearer not-a-configured-token"},
            {"Authorization": f"Basic {READ}"},
            {"Authorization": f"Bearer {READ} {READ}"},
            {"Authorization": f"Bearer {READ[:-1]}"},
            {"Authorization": f"Bearer {READ}x"},
        ):
            answer = await client.request(method, url, headers=headers, json={"position": 1})
            assert answer.status == 401, (method, template, headers, await answer.text())
            assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="gpu-queue"')
            checked += 1
        if "admin" in operation["tags"]:
            answer = await client.request(method, url, headers={"Authorization": f"Bearer {READ}"}, json={})
            assert answer.status == 403, (method, template)
    assert public == ["/openapi.json"]
    assert checked >= 6 * 6


async def test_every_routed_api_handler_is_in_the_document_so_none_escapes_the_token_check(
    aiohttp_client: AiohttpClient,
) -> None:
    """A route added without the route table (so without its role) would be missed above."""
    client = await _api(aiohttp_client)
    document = await (await client.get("/api/v1/openapi.json")).json()
    documented = {(method, "/api/v1" + path) for method, path, _ in _operations(document)}
    routed: set[tuple[str, str]] = set()
    for route in client.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path") or ""
        if path.startswith("/api/v1") and route.method != "HEAD":
            routed.add((route.method, path))
    assert routed == documented


async def test_a_token_that_is_not_utf_8_is_refused_not_a_server_error(aiohttp_client: AiohttpClient) -> None:
    client = await _api(aiohttp_client)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"GET /api/v1/pools HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n"
    )
    status = (await reader.read()).split(b"\r\n", 1)[0]
    writer.close()
    assert status == b"HTTP/1.1 401 Unauthorized", status


async def test_the_api_and_admission_are_not_served_on_the_plain_http_side_port(served: Served) -> None:
    async with aiohttp.ClientSession() as session:
        for method, path in [("GET", "/api/v1/pools"), ("GET", "/api/v1/openapi.json"), ("POST", "/mutate")]:
            async with session.request(method, served.side + path, headers={"Authorization": f"Bearer {READ}"}) as r:
                assert r.status == 404, (method, path)
        for path in ("/healthz", "/readyz", "/metrics"):  # what the side port is for, no token
            async with session.get(served.side + path) as r:
                assert r.status == 200, path


# ------------------------------------------------------------------------------- tokens in logs


async def test_no_token_reaches_any_log_line_on_authorised_or_failing_calls(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """Tokens where clients put them (any auth scheme, or wrongly a query parameter), on the real
    server (Redis down: store warnings name the path) and on an API with a working store (edits
    are audit-logged with who made them)."""
    caplog.set_level(logging.DEBUG)
    secrets = (READ, READ_2, ADMIN, ADMIN_2, "a-wrong-token-5e5e")

    def calls(token: str) -> list[tuple[str, str, dict[str, str], Any]]:
        out: list[tuple[str, str, dict[str, str], Any]] = []
        for scheme in ("Bearer", "bearer", "Basic", "Token"):
            auth = {"Authorization": f"{scheme} {token}", "X-Gpu-Queue-Actor": "sec-test"}
            out += [
                ("GET", "/api/v1/pools", auth, None),
                ("GET", f"/api/v1/queue/{NS}/jupyter-alice?access_token={token}", auth, None),
                ("GET", "/api/v1/users/alice?token=" + token, auth, None),
                ("GET", f"/api/v1/pools/gpu/queue?limit=0&access_token={token}", auth, None),
                ("POST", "/mutate", auth, review()),
                ("POST", "/validate", auth, {"not": "a review"}),
            ]
        out += [
            (
                "POST",
                f"/api/v1/pools/gpu/queue/{NS}/jupyter-bob/move",
                {"Authorization": f"Bearer {token}"},
                {"position": 1, "reason": "security test"},
            ),
            (
                "DELETE",
                f"/api/v1/pools/gpu/queue/{NS}/jupyter-carol?reason=test",
                {"Authorization": f"Bearer {token}"},
                None,
            ),
        ]
        return out

    statuses: set[int] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=served.client_context())) as session:
        for token in secrets:
            for method, path, headers, body in calls(token):
                async with session.request(method, served.base + path, headers=headers, json=body) as answer:
                    statuses.add(answer.status)
    config = _api_config()
    store = MemoryQueueStore(clock=lambda: at(3600))
    cluster = FakeCluster()
    from webhook.models import QueueEntry

    for i, name in enumerate(("jupyter-alice", "jupyter-bob", "jupyter-carol")):
        await store.enqueue("gpu", QueueEntry(namespace=NS, name=name, user=name[8:], requested_at=at(i)), 300)
        cluster.pods.add((NS, name))
    served_records = len(caplog.records)
    # serve() runs with no access log (a query string may hold what a client should not send):
    assert not [r for r in caplog.records if r.name == "aiohttp.access"]
    app = server.create_app(config, api_app=create_api_app(config, store, cluster))
    test_server = TestServer(app)
    await test_server.start_server(access_log=None)  # as serve() runs it
    async with TestClient(test_server) as client:
        for token in secrets:
            for method, path, headers, body in calls(token):
                answer = await client.request(method, path, headers=headers, json=body)
                statuses.add(answer.status)
    # Authorised, refused, bad request, store down: every path that logs was taken.
    assert {200, 400, 401, 403, 503} <= statuses, statuses
    assert len(caplog.records) > served_records
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert "queue edit" in text and "queue store unavailable" in text  # the logging paths ran
    for record in caplog.records:
        for line in (JsonFormatter().format(record), record.getMessage(), str(record.__dict__)):
            for secret in secrets:
                assert secret not in line, f"a token reached the log: {line[:500]}"


async def test_secrets_in_a_reviewed_pod_never_reach_the_logs(
    aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    """KubeSpawner puts the user's hub API token in the pod's env: admission sees it on every
    pod and must not log it, whether the pod is patched, denied or the body is refused."""
    secret = "hub-api-token-of-alice-9f8e7d"
    caplog.set_level(logging.DEBUG)
    client = await aiohttp_client(server.create_app(load_config(None, env={})))  # the seed's profiles
    pod = review()
    notebook = pod["request"]["object"]["spec"]["containers"][0]
    notebook["env"] = [{"name": "JUPYTERHUB_API_TOKEN", "value": secret}]
    outcomes: set[str] = set()
    for path in ("/mutate", "/validate"):
        for label, body in [
            ("gpu pod", pod),
            ("unknown profile", _relabel(pod, "gpu-queue.io/profile", "nope")),
            ("bad quantity", _with_limit(pod, "lots")),
        ]:
            answer = await client.post(path, json=body)
            data = await answer.json()
            outcomes.add(f"{path} {label}: {'allowed' if data['response']['allowed'] else 'denied'}")
        for raw in (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 1, "x": "'
            + secret.encode()
            + b'"}}',
            b"{" + secret.encode(),
        ):
            answer = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
            assert answer.status == 400
    assert {"/mutate gpu pod: allowed", "/validate gpu pod: denied", "/mutate unknown profile: denied"} <= outcomes
    assert "/mutate bad quantity: denied" in outcomes
    assert len(caplog.records) >= 6  # denials are logged, admitted pods at debug
    for record in caplog.records:
        for line in (JsonFormatter().format(record), record.getMessage(), str(record.__dict__)):
            assert secret not in line, f"a pod secret reached the log: {line[:500]}"


def _relabel(body: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out["request"]["object"]["metadata"]["labels"][key] = value
    return out


def _with_limit(body: dict[str, Any], value: str) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out["request"]["object"]["spec"]["containers"][0]["resources"] = {"limits": {"ephemeral-storage": value}}
    return out


# --------------------------------------------------------------------------------- size limits


def _gzip_bomb(size: int) -> bytes:
    return gzip.compress(b" " * size, compresslevel=9)


@pytest.mark.parametrize("path", ["/mutate", "/validate"])
async def test_admission_bodies_over_the_limit_are_413_however_they_arrive(served: Served, path: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(LIMIT // 4096 + 2):
            yield b" " * 4096

    bomb = _gzip_bomb(64 * LIMIT)  # 4 MiB of spaces in about 4 KiB
    assert len(bomb) < LIMIT // 8
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=served.client_context())) as session:
        sends: list[tuple[str, dict[str, Any]]] = [
            ("content-length", {"data": b" " * (LIMIT + 1)}),
            ("chunked", {"data": chunks()}),
            ("gzip bomb", {"data": bomb, "headers": {"Content-Encoding": "gzip"}}),
        ]
        for label, kwargs in sends:
            async with session.post(served.base + path, **kwargs) as answer:
                assert answer.status == 413, label
                assert "maxBodyBytes" in (await answer.json())["error"], label
        async with session.post(served.base + path, json=review()) as answer:
            assert answer.status == 200  # the same connection pool still serves


async def test_api_bodies_over_the_limit_are_413_and_edit_nothing(aiohttp_client: AiohttpClient) -> None:
    config = _api_config()
    store = MemoryQueueStore(clock=lambda: at(3600))
    cluster = FakeCluster()
    from webhook.models import QueueEntry

    for i, name in enumerate(("jupyter-alice", "jupyter-bob")):
        await store.enqueue("gpu", QueueEntry(namespace=NS, name=name, user=name[8:], requested_at=at(i)), 300)
    client = await aiohttp_client(server.create_app(config, api_app=create_api_app(config, store, cluster)))
    before = await store.entries("gpu")
    url = f"/api/v1/pools/gpu/queue/{NS}/jupyter-bob/move"
    auth = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    padded = b'{"position": 1, "reason": "' + b"x" * LIMIT + b'"}'
    for label, body, extra in [
        ("content-length", padded, {}),
        ("gzip bomb", _gzip_bomb(64 * LIMIT), {"Content-Encoding": "gzip"}),
    ]:
        answer = await client.post(url, data=body, headers={**auth, **extra})
        assert answer.status == 413, label
        error = await answer.json()
        assert set(error) == {"error", "detail"}, error  # the API's documented error body
    assert await store.entries("gpu") == before and cluster.requested_at == {}
    answer = await client.post(url, json={"position": 1}, headers={"Authorization": f"Bearer {ADMIN}"})
    assert answer.status == 200  # a body within the limit does the edit


async def test_oversized_request_lines_and_headers_are_refused_before_any_handler(served: Served) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=served.client_context())) as session:
        for label, path, headers in [
            ("request line", "/api/v1/users/" + "u" * 9000, {"Authorization": f"Bearer {READ}"}),
            ("one header", "/api/v1/pools", {"Authorization": f"Bearer {READ}", "X-Big": "h" * 9000}),
            ("many headers", "/api/v1/pools", {f"X-H{i}": "v" for i in range(200)}),
        ]:
            async with session.get(served.base + path, headers=headers) as answer:
                assert 400 <= answer.status < 500, label


# ------------------------------------------------------------------------- constant-time tokens


@pytest.mark.parametrize(
    "presented",
    [READ, READ_3, ADMIN, ADMIN_2, "wrong", READ[:-1], READ + "0", "é-token"],
    ids=["read-first", "read-last", "admin-first", "admin-last", "wrong", "prefix", "longer", "non-ascii"],
)
async def test_every_configured_token_is_compared_with_compare_digest_even_after_a_match(
    aiohttp_client: AiohttpClient, monkeypatch: pytest.MonkeyPatch, presented: str
) -> None:
    client = await _api(aiohttp_client)
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        assert isinstance(a, bytes) and isinstance(b, bytes)  # str would refuse non-ASCII tokens
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("webhook.api.auth.hmac.compare_digest", spy)
    answer = await client.get("/api/v1/pools", headers={"Authorization": f"Bearer {presented}"})
    assert answer.status == (200 if presented in TOKENS else 401)
    assert {a for a, _ in compared} == {presented.encode()}
    assert sorted(b for _, b in compared) == sorted(t.encode() for t in TOKENS)
