"""The HTTP surface: admission endpoints, error bodies, health, readiness, metrics, graceful stop."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from tests.helpers.reviews import request_review
from tests.helpers.waiting import wait_for
from webhook import metrics, server
from webhook.certs import make_ca, make_serving_cert, write_pair
from webhook.clock import ApiServerClock
from webhook.config import Config, load_config
from webhook.server import admission as admission_endpoints
from webhook.server import app as server_app

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[..., Awaitable[Client]]


def _config(**server_fields: Any) -> Config:
    config = load_config(None, env={})
    if server_fields:
        config = config.model_copy(update={"server": config.server.model_copy(update=server_fields)})
    return config


def gpu_pod(name: str = "jupyter-alice") -> dict[str, Any]:
    """What KubeSpawner creates for the GPU profile (the parts admission reads)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"component": "singleuser-server", "gpu-queue.io/profile": "gpu-enabled"},
            "annotations": {"hub.jupyter.org/username": "alice"},
        },
        "spec": {
            "containers": [
                {
                    "name": "notebook",
                    "image": "quay.io/jupyter/base-notebook:latest",
                    "resources": {
                        "limits": {"cpu": 4.0, "memory": 8589934592, "nvidia.com/gpu": 1},
                        "requests": {"cpu": 1.0, "memory": 2147483648},
                    },
                }
            ]
        },
    }


def review(pod: dict[str, Any] | None = None, operation: str = "CREATE", uid: str | None = None) -> dict[str, Any]:
    return request_review(pod or gpu_pod(), operation=operation, uid=uid)


def counted(handler: str, outcome: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "gpu_queue_admission_requests_total", {"handler": handler, "outcome": outcome}
    )
    return value or 0.0


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> Client:
    return await aiohttp_client(server.create_app(_config(max_body_bytes=64 * 1024)))


# ------------------------------------------------------------------------------------ admission


async def test_mutate_gates_a_gpu_pod_and_echoes_the_uid(client: Client) -> None:
    body = review(uid="u-1")
    resp = await client.post("/mutate", json=body)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    answer = await resp.json()
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == "u-1" and answer["response"]["allowed"] is True
    assert answer["response"]["patchType"] == "JSONPatch"
    assert "gpu-queue.io/slice" in base64.b64decode(answer["response"]["patch"]).decode()


async def test_validate_denies_an_ungated_gpu_pod_with_a_message(client: Client) -> None:
    resp = await client.post("/validate", json=review())
    answer = (await resp.json())["response"]
    assert resp.status == 200
    assert answer["allowed"] is False
    assert "scheduling gate" in answer["status"]["message"]


async def test_admission_outcomes_are_counted_by_handler(client: Client) -> None:
    before = counted("mutate", "patched"), counted("validate", "denied")
    await client.post("/mutate", json=review())
    await client.post("/validate", json=review())
    assert (counted("mutate", "patched"), counted("validate", "denied")) == (before[0] + 1, before[1] + 1)
    latency = metrics.REGISTRY.get_sample_value(
        "gpu_queue_admission_request_duration_seconds_count", {"handler": "mutate", "outcome": "patched"}
    )
    assert latency is not None and latency >= 1


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"apiVersion": "v1", "kind": "Pod"}).encode(), "AdmissionReview"),
        (json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}).encode(), "v1"),
        (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(), "no request"),
        (json.dumps({**review(), "request": {**review()["request"], "uid": ""}}).encode(), "uid"),
        (json.dumps({**review(), "request": {"kind": {"kind": "Pod"}}}).encode(), "uid"),
    ],
    ids=["garbage", "empty", "array", "pod", "v1beta1", "no-request", "empty-uid", "missing-uid"],
)
@pytest.mark.parametrize("path", ["/mutate", "/validate"])
async def test_bad_body_is_400_with_json_error_and_counted(client: Client, path: str, body: bytes, needle: str) -> None:
    handler = path.strip("/")
    before = counted(handler, "bad_request")
    resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert needle in error
    assert counted(handler, "bad_request") == before + 1


async def test_body_over_the_limit_is_413_json(client: Client) -> None:
    before = counted("mutate", "bad_request")
    resp = await client.post("/mutate", data=b"x" * (64 * 1024 + 1))
    assert resp.status == 413
    assert "maxBodyBytes" in (await resp.json())["error"]
    assert counted("mutate", "bad_request") == before + 1


async def test_chunked_body_over_the_limit_is_413_json(client: Client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"y" * 8192

    resp = await client.post("/validate", data=chunks())
    assert resp.status == 413
    assert "maxBodyBytes" in (await resp.json())["error"]


async def test_get_on_an_admission_path_is_405_json_with_allow(client: Client) -> None:
    resp = await client.get("/mutate")
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"
    assert (await resp.json())["error"] == "Method Not Allowed"


async def test_unknown_path_is_404_json(client: Client) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404
    assert (await resp.json()) == {"error": "Not Found"}


async def test_crash_in_admission_is_a_denial_for_that_uid_not_a_5xx(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(admission_endpoints, "mutate", boom)
    before = counted("mutate", "error")
    resp = await client.post("/mutate", json=review(uid="u-crash"))
    assert resp.status == 200
    answer = (await resp.json())["response"]
    assert answer["uid"] == "u-crash" and answer["allowed"] is False
    assert answer["status"]["code"] == 500
    assert "u-crash" in answer["status"]["message"]
    assert counted("mutate", "error") == before + 1
    monkeypatch.undo()
    assert (await client.post("/mutate", json=review())).status == 200


async def test_crash_while_parsing_is_a_400_json_counted_as_error(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(body: bytes) -> None:
        raise RecursionError("bug")

    monkeypatch.setattr(admission_endpoints, "parse_review", boom)
    before = counted("validate", "error")
    resp = await client.post("/validate", json=review())
    assert resp.status == 400
    assert "internal error" in (await resp.json())["error"]
    assert counted("validate", "error") == before + 1


# ----------------------------------------------------------------------------- health, metrics


async def test_healthz_and_readyz_answer_once_started(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json()) == {"status": "ready"}


async def test_readyz_is_503_and_says_why_while_something_is_pending(client: Client) -> None:
    client.app[server.READINESS].hold("stopping")
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["waiting_for"] == ["stopping"]
    assert (await client.get("/healthz")).status == 200


async def test_ready_with_redis_and_api_unreachable_because_admission_does_not_need_them(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    env = {"GPU_QUEUE_REDIS__URL": "redis://127.0.0.1:1/0", "GPU_QUEUE_KUBECONFIG": str(tmp_path / "missing")}
    config = load_config(None, env=env)
    parts = server.build_components(config)
    client = await aiohttp_client(
        server.create_app(config, components=parts.components, api_app=parts.api_app, notes=parts.notes)
    )
    assert (await client.get("/readyz")).status == 200
    assert (await client.post("/mutate", json=review())).status == 200


async def test_metrics_expose_admission_series_in_prometheus_format(client: Client) -> None:
    await client.post("/mutate", json=review())
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    text = await resp.text()
    assert 'gpu_queue_admission_requests_total{handler="mutate",outcome="patched"}' in text
    assert "gpu_queue_admission_request_duration_seconds_bucket" in text
    openmetrics = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await openmetrics.text()).endswith("# EOF\n")


async def test_metrics_app_serves_health_and_metrics_but_not_admission(aiohttp_client: ClientFactory) -> None:
    readiness = server.Readiness("listening")
    client = await aiohttp_client(server.create_metrics_app(readiness))
    assert (await client.get("/metrics")).status == 200
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 503
    readiness.clear("listening")
    assert (await client.get("/readyz")).status == 200
    assert (await client.post("/mutate", json=review())).status == 404


# ------------------------------------------------------------------------ components, sub-app


async def test_components_start_before_ready_and_close_on_shutdown(aiohttp_client: ClientFactory) -> None:
    seen: list[str] = []

    async def component(app: web.Application) -> AsyncIterator[None]:
        seen.append(f"start ready={app[server.READINESS].ready}")
        yield
        seen.append("stop")

    client = await aiohttp_client(server.create_app(_config(), components=[component]))
    assert seen == ["start ready=False"]
    assert (await client.get("/readyz")).status == 200
    await client.close()
    assert seen == ["start ready=False", "stop"]


async def test_api_app_is_mounted_under_api_v1(aiohttp_client: ClientFactory) -> None:
    api = web.Application()

    async def pools(request: web.Request) -> web.Response:
        return web.json_response({"pools": []})

    api.router.add_get("/pools", pools)
    client = await aiohttp_client(server.create_app(_config(), api_app=api))
    resp = await client.get("/api/v1/pools")
    assert resp.status == 200 and (await resp.json()) == {"pools": []}


async def test_unexpected_exception_in_an_api_handler_is_a_json_500(aiohttp_client: ClientFactory) -> None:
    api = web.Application()

    async def broken(request: web.Request) -> web.Response:
        raise KeyError("bug")

    api.router.add_get("/broken", broken)
    client = await aiohttp_client(server.create_app(_config(), api_app=api))
    resp = await client.get("/api/v1/broken")
    assert resp.status == 500
    assert "error" in await resp.json()
    assert (await client.get("/healthz")).status == 200


# ------------------------------------------------------------------------------ serve() over TLS


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _until(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


@pytest.fixture
def tls_config(tmp_path: Path) -> tuple[Config, ssl.SSLContext]:
    ca = make_ca()
    write_pair(tmp_path, ca, make_serving_cert(ca, ["localhost"], ["127.0.0.1"]))
    env = {
        "GPU_QUEUE_TLS__CERTFILE": str(tmp_path / "tls.crt"),
        "GPU_QUEUE_TLS__KEYFILE": str(tmp_path / "tls.key"),
        "GPU_QUEUE_SERVER__HOST": "127.0.0.1",
        "GPU_QUEUE_SERVER__PORT": str(_free_port()),
        "GPU_QUEUE_SERVER__METRICSPORT": str(_free_port()),
        "GPU_QUEUE_REDIS__URL": "redis://127.0.0.1:1/0",
        "GPU_QUEUE_KUBECONFIG": str(tmp_path / "missing-kubeconfig"),
    }
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    return load_config(None, env=env), client_ctx


async def test_serve_admits_over_tls_with_redis_and_api_unreachable_then_drains_on_stop(
    tls_config: tuple[Config, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, client_ctx = tls_config
    release = asyncio.Event()
    entered = asyncio.Event()
    cleaned: list[str] = []
    real_build = server.build_components

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.json_response({"done": True})

    def build(config: Config, clock: ApiServerClock) -> server.Parts:
        parts = real_build(config, clock)
        api = web.Application()
        api.router.add_get("/slow", slow)

        async def marker(app: web.Application) -> AsyncIterator[None]:
            yield
            cleaned.append("cleanup")

        return server.Parts([*parts.components, marker], api, parts.notes)

    monkeypatch.setattr(server_app, "build_components", build)
    stop = asyncio.Event()
    task = asyncio.create_task(server.serve(config, stop))
    base = f"https://127.0.0.1:{config.server.port}"
    plain = f"http://127.0.0.1:{config.server.metrics_port}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as session:

        async def ready() -> bool:
            try:
                async with session.get(f"{plain}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await _until(ready)
        async with session.post(f"{base}/mutate", json=review()) as r:
            assert r.status == 200 and (await r.json())["response"]["allowed"] is True
        async with session.get(f"{base}/readyz") as r:
            assert r.status == 200

        in_flight = asyncio.ensure_future(session.get(f"{base}/api/v1/slow"))
        await asyncio.wait_for(entered.wait(), 10)
        stop.set()

        async def refusing() -> bool:
            try:
                async with (
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as fresh,
                    fresh.get(f"{base}/healthz"),
                ):
                    return False
            except aiohttp.ClientConnectionError:
                return True

        await _until(refusing)  # stopped accepting while the request is still in flight
        assert not task.done()
        release.set()
        resp = await asyncio.wait_for(in_flight, 10)
        assert resp.status == 200 and (await resp.json()) == {"done": True}
        resp.release()
    await asyncio.wait_for(task, 15)
    assert cleaned == ["cleanup"]


def test_run_serve_reports_a_bad_config_on_stderr_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("server:\n  port: not-a-port\n")
    from webhook.cli import main

    assert main(["serve", "--config", str(bad)]) == 2
    assert "server.port" in capsys.readouterr().err


def test_run_serve_without_certificate_files_says_what_to_mount(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPU_QUEUE_TLS__CERTFILE", str(tmp_path / "none.crt"))
    monkeypatch.setenv("GPU_QUEUE_TLS__KEYFILE", str(tmp_path / "none.key"))
    monkeypatch.setenv("GPU_QUEUE_SERVER__PORT", "0")
    monkeypatch.setattr("webhook.logs.setup_logging", lambda level="INFO": None)
    from webhook.cli import main

    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert "none.crt" in err and "gpu-queue certs --secret" in err


async def test_a_failed_controller_restarts_with_backoff_and_shows_in_readyz(
    aiohttp_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error no handler expects (here: the one a too-long watch line raised) ends the
    controller; the supervisor logs it, counts it, shows it in /readyz, and starts it again, while
    the replica stays ready and keeps admitting."""
    import webhook.service

    calls = 0

    async def controller_that_fails_once(*args: Any, on_running: Callable[[], None]) -> None:
        nonlocal calls
        calls += 1
        on_running()
        if calls == 1:
            raise ValueError("Chunk too big")
        await asyncio.Event().wait()

    monkeypatch.setattr(webhook.service, "_run_controller", controller_that_fails_once)
    env = {
        "GPU_QUEUE_REDIS__URL": "redis://127.0.0.1:1/0",
        "GPU_QUEUE_KUBECONFIG": str(tmp_path / "missing"),
        "GPU_QUEUE_CONTROLLER__RESTART_BACKOFF_SECONDS": "0.05",
    }
    config = load_config(None, env=env)
    restarts_before = metrics.REGISTRY.get_sample_value("gpu_queue_controller_restarts_total") or 0.0
    parts = server.build_components(config)
    client = await aiohttp_client(
        server.create_app(config, components=parts.components, api_app=parts.api_app, notes=parts.notes)
    )

    async def restarted() -> dict[str, Any] | None:
        resp = await client.get("/readyz")
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body  # admission never waits for the controller
        controller: dict[str, Any] = body["components"]["controller"]
        return controller if controller["state"] == "running" and calls == 2 else None

    status = await wait_for(restarted, within=10, what="the controller to run again")
    assert status["restarts"] == 1 and status["lastError"] == "ValueError: Chunk too big"
    assert metrics.REGISTRY.get_sample_value("gpu_queue_controller_restarts_total") == restarts_before + 1
    assert metrics.REGISTRY.get_sample_value("gpu_queue_controller_up") == 1
    assert (await client.post("/mutate", json=review())).status == 200


async def test_mutate_stamps_arrival_on_the_api_servers_clock(aiohttp_client: ClientFactory) -> None:
    """A replica whose clock runs 30 s fast stamps requested-at as the API server's clock reads."""
    local = 1_796_000_030.0  # 2026-11-30T00:53:50Z on this replica
    clock = ApiServerClock(wall=lambda: local)
    clock.observe(local - 0.004, local, "Mon, 30 Nov 2026 00:53:20 GMT")  # the server read :20
    client = await aiohttp_client(server.create_app(_config(), clock=clock))
    answer = await (await client.post("/mutate", json=review())).json()
    patch = json.loads(base64.b64decode(answer["response"]["patch"]))
    stamps = [op["value"] for op in patch if op["path"].endswith("requested-at")]
    stamps += [
        op["value"]["gpu-queue.io/requested-at"]
        for op in patch
        if isinstance(op.get("value"), dict) and "gpu-queue.io/requested-at" in op["value"]
    ]
    assert len(stamps) == 1
    # The server read :20 somewhere between send and receive: the stamp is within that second
    # (corrected by the least the evidence demands), not at :50, the local clock's reading.
    assert "2026-11-30T00:53:20" <= stamps[0] <= "2026-11-30T00:53:21.1", stamps


class RecordingNotes:
    """``AdmissionNotes`` that records each note and the clock reading when it was stored."""

    def __init__(self, clock: list[float], ok: bool = True) -> None:
        self.clock = clock
        self.ok = ok
        self.stored: list[tuple[str, Any, float]] = []

    async def note(self, pool: str, admitted: Any) -> bool:
        self.clock[0] += 0.010  # storing it takes 10 ms
        if self.ok:
            self.stored.append((pool, admitted, self.clock[0]))
        return self.ok


def _stamp_of(answer: dict[str, Any]) -> str:
    patch = json.loads(base64.b64decode(answer["response"]["patch"]))
    for op in patch:
        if op["path"].endswith("requested-at"):
            return str(op["value"])
        if isinstance(op.get("value"), dict) and "gpu-queue.io/requested-at" in op["value"]:
            return str(op["value"]["gpu-queue.io/requested-at"])
    raise AssertionError(f"no requested-at in {patch}")


def _fake_clock(now: list[float]) -> ApiServerClock:
    return ApiServerClock(wall=lambda: now[0])


async def test_mutate_notes_a_gpu_pod_before_it_stamps_it_and_a_cpu_pod_not_at_all(
    aiohttp_client: ClientFactory,
) -> None:
    """The note's ``since`` is no later than the stamp, which is taken once the note is stored
    (the leader's early grant relies on it: webhook.grants.due_grants)."""
    now = [1_796_000_000.0]
    notes = RecordingNotes(now)
    client = await aiohttp_client(server.create_app(_config(), clock=_fake_clock(now), notes=notes))
    stamp = _stamp_of(await (await client.post("/mutate", json=review())).json())
    assert len(notes.stored) == 1
    pool, admitted, stored_at = notes.stored[0]
    assert (pool, admitted.namespace, admitted.name, admitted.slices) == ("gpu", "jhub", "jupyter-alice", 1)
    assert admitted.since.timestamp() < stored_at
    assert stamp == "2026-11-30T00:53:20.010000Z"  # the clock after the note was stored, not before
    cpu = gpu_pod("jupyter-bob")
    cpu["metadata"]["labels"]["gpu-queue.io/profile"] = "cpu-only"
    assert (await client.post("/mutate", json=review(cpu))).status == 200
    assert len(notes.stored) == 1


async def test_a_pod_that_could_not_be_noted_is_stamped_a_settle_window_later(aiohttp_client: ClientFactory) -> None:
    """So no early grant can overtake it; even a recent incoming stamp is replaced."""
    now = [1_796_000_000.0]
    notes = RecordingNotes(now, ok=False)
    missed = metrics.REGISTRY.get_sample_value("gpu_queue_admission_notes_missed_total") or 0.0
    client = await aiohttp_client(server.create_app(_config(), clock=_fake_clock(now), notes=notes))
    pod = gpu_pod()
    pod["metadata"]["annotations"]["gpu-queue.io/requested-at"] = "2026-11-30T00:53:19.000000Z"  # 1 s ago
    answer = await (await client.post("/mutate", json=review(pod))).json()
    assert answer["response"]["allowed"] is True
    assert _stamp_of(answer) == "2026-11-30T00:53:21.010000Z"  # now + orderSettleSeconds (1 s)
    assert metrics.REGISTRY.get_sample_value("gpu_queue_admission_notes_missed_total") == missed + 1


async def test_store_notes_rest_after_a_failure_so_an_outage_adds_no_wait() -> None:
    from tests.unit.fakes import MemoryQueueStore
    from webhook.models import Admitted
    from webhook.service import StoreNotes

    store = MemoryQueueStore()
    notes = StoreNotes(store, timeout=0.25, rest=60.0)
    note = Admitted(namespace="jhub", name="jupyter-alice", since=store.clock())
    assert await notes.note("gpu", note) is True
    store.down = True
    assert await notes.note("gpu", note) is False
    store.down = False
    calls = len(store.calls)
    assert await notes.note("gpu", note) is False  # resting: Redis is not even asked
    assert len(store.calls) == calls
    notes.resting_until = 0.0
    assert await notes.note("gpu", note) is True
    assert [a.name for a in await store.admitted("gpu", note.since)] == ["jupyter-alice"]


async def test_serve_puts_the_enabled_dashboard_on_its_own_plain_port_behind_the_hubs_login(
    tls_config: tuple[Config, ssl.SSLContext],
) -> None:
    config, _ = tls_config
    port = _free_port()
    dashboard = {"enabled": True, "port": port, "hub_api_url": "http://hub.example:8081/hub/api"}
    dashboard["api_token"] = SecretStr("t" * 64)
    config = config.model_copy(update={"dashboard": config.dashboard.model_copy(update=dashboard)})
    stop = asyncio.Event()
    task = asyncio.create_task(server.serve(config, stop))
    try:
        async with aiohttp.ClientSession() as session:

            async def answering() -> bool:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/services/gpu-queue/", allow_redirects=False) as r:
                        return r.status == 302 and "/hub/api/oauth2/authorize?" in r.headers["Location"]
                except aiohttp.ClientConnectionError:
                    return False

            await _until(answering)
            async with session.get(f"http://127.0.0.1:{port}/mutate") as r:
                assert r.status == 404, "the dashboard's port serves the dashboard only"
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
