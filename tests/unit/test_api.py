"""The queue API (``/api/v1``) against in-memory doubles of the store and the cluster view.

Every answer goes through ``Api.call``, which validates its body against the schema that the served
``/openapi.json`` documents for that route, method and status: an undocumented status or a body
that does not match the document fails the test that produced it.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_schema_validator import OAS31Validator

import webhook.api.answers
import webhook.api.positions
from tests.unit.fakes import FakeCluster, MemoryQueueStore, at
from webhook.api import create_api_app
from webhook.cluster_view import PodView
from webhook.config import Config
from webhook.logs import JsonFormatter
from webhook.models import Eta, Holder, QueueEntry

READ = "read-token-7f3a9c"
READ_2 = "second-read-token-1b2c"
ADMIN = "admin-token-e41d07"
NOW = at(3600)
NS = "jhub"

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def make_config(read: Sequence[str] = (READ, READ_2), admin: Sequence[str] = (ADMIN,)) -> Config:
    return Config.model_validate(
        {
            "missingProfile": "allow",
            "unknownProfile": "deny",
            "pools": {
                "gpu": {"resource": "nvidia.com/gpu", "capacity": "auto", "cullTimeoutSeconds": 3600},
                "big": {"resource": "example.com/a100", "capacity": 2, "cullTimeoutSeconds": 7200},
            },
            "api": {"readTokens": list(read), "adminTokens": list(admin)},
        }
    )


def entry(name: str, user: str, seconds: float, server: str = "") -> QueueEntry:
    return QueueEntry(namespace=NS, name=name, user=user, server=server, requested_at=at(seconds))


def holder(name: str, user: str, granted: float, node: str = "gpu-node-1", server: str = "") -> Holder:
    return Holder(
        namespace=NS,
        name=name,
        user=user,
        server=server,
        requested_at=at(granted - 60),
        granted_at=at(granted),
        node=node,
    )


@dataclass
class Answer:
    status: int
    body: Any
    headers: Mapping[str, str]


@dataclass
class Api:
    """A test client that checks every answer against the served OpenAPI document."""

    client: TestClient[Any, Any]
    sub: web.Application
    store: MemoryQueueStore
    cluster: FakeCluster
    doc: dict[str, Any] = field(default_factory=dict)

    async def openapi(self) -> dict[str, Any]:
        if not self.doc:
            response = await self.client.get("/api/v1/openapi.json")
            assert response.status == 200
            self.doc = await response.json()
        return self.doc

    async def call(
        self,
        method: str,
        template: str,
        *,
        token: str | None = READ,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        raw_path: str | None = None,
        headers: Mapping[str, str] | None = None,
        segments: Mapping[str, str] | None = None,
        **path: str,
    ) -> Answer:
        values = {**(segments or {}), **path}
        url = "/api/v1" + (raw_path or template.format(**{k: quote(v, safe="") for k, v in values.items()}))
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        kwargs: dict[str, Any] = {"headers": sent, "params": params}
        if body is not None:
            kwargs["data"] = body if isinstance(body, str | bytes) else json.dumps(body)
            sent["Content-Type"] = "application/json"
        response = await self.client.request(method, url, **kwargs)
        assert response.content_type == "application/json", await response.text()
        data = await response.json()
        await self.check(method, template, response.status, data)
        return Answer(response.status, data, response.headers)

    async def check(self, method: str, template: str, status: int, data: Any) -> None:
        doc = await self.openapi()
        operation = doc["paths"].get(template, {}).get(method.lower())
        assert operation is not None, f"{method} {template} is not in the OpenAPI document"
        responses = operation["responses"]
        assert str(status) in responses, f"{method} {template} answered {status}, not documented"
        schema = responses[str(status)]["content"]["application/json"]["schema"]
        validator = OAS31Validator(
            {**schema, "components": doc["components"]}, format_checker=OAS31Validator.FORMAT_CHECKER
        )
        validator.validate(data)


@pytest.fixture
def store() -> MemoryQueueStore:
    return MemoryQueueStore(clock=lambda: NOW)


@pytest.fixture
def cluster() -> FakeCluster:
    view = FakeCluster()
    view.usage = {"gpu": (8, 8), "big": (2, 1)}
    return view


async def _api(
    aiohttp_client: AiohttpClient, store: MemoryQueueStore, cluster: FakeCluster, config: Config | None = None
) -> Api:
    root = web.Application()
    sub = create_api_app(config or make_config(), store, cluster, clock=lambda: NOW)
    root.add_subapp("/api/v1", sub)
    return Api(await aiohttp_client(root), sub, store, cluster)


@pytest.fixture
async def api(aiohttp_client: AiohttpClient, store: MemoryQueueStore, cluster: FakeCluster) -> Api:
    return await _api(aiohttp_client, store, cluster)


async def seed(store: MemoryQueueStore, cluster: FakeCluster) -> None:
    """gpu: 8 holders of 8 slices (three released before), queue alice, bob, carol, a@b.org, erin,
    alice's train server. The cluster's watch cache has the same pods, as after a rebuild."""
    for i in range(8):
        h = holder(f"jupyter-holder{i}", f"holder{i}", granted=100 + i, node=f"gpu-node-{i % 2}")
        await store.enqueue("gpu", entry(h.name, h.user, 40 + i), 300)
        assert await store.grant("gpu", h.key, h)
        cluster.add(
            PodView(
                namespace=NS,
                name=h.name,
                pool="gpu",
                requested_at=h.requested_at,
                granted_at=h.granted_at,
                user=h.user,
                node=h.node,
                phase="Running",
                ready=True,
            )
        )
    for seconds in (1000, 2000, 3000):  # three users came, went and freed a slice each
        gone = holder(f"jupyter-gone{seconds}", f"gone{seconds}", granted=seconds - 500)
        await store.enqueue("gpu", entry(gone.name, gone.user, seconds - 900), 300)
        assert await store.grant("gpu", gone.key, gone)
        assert await store.release("gpu", gone.key, at(seconds)) is not None
    # Arrivals out of order; erin and dave arrive in the same microsecond: the key breaks the tie.
    for name, user, seconds, server in [
        ("jupyter-carol", "carol", 3000, ""),
        ("jupyter-alice", "alice", 1000, ""),
        ("jupyter-bob-smith---274c9d19", "Bob.Smith", 2000, ""),
        ("jupyter-erin", "erin", 3300, ""),
        ("jupyter-a-b-org---0c1f5f6d", "a@b.org", 3300, ""),
        ("jupyter-alice--train", "alice", 3400, "train"),
    ]:
        await store.enqueue("gpu", entry(name, user, seconds, server), 300)
        cluster.add(queued_view(name, user, seconds, server))


def queued_view(name: str, user: str, seconds: float, server: str = "", slices: int = 1) -> PodView:
    """A gated pod of the gpu pool as the watch cache has it."""
    return PodView(
        namespace=NS,
        name=name,
        pool="gpu",
        gated=True,
        requested_at=at(seconds),
        user=user,
        server=server,
        resources={"nvidia.com/gpu": Decimal(slices)},
    )


READ_ROUTES: list[tuple[str, dict[str, str]]] = [
    ("/pools", {}),
    ("/pools/{pool}/queue", {"pool": "gpu"}),
    ("/queue/{namespace}/{pod}", {"namespace": NS, "pod": "jupyter-alice"}),
    ("/users/{user}", {"user": "alice"}),
]
EDIT_ROUTES: list[tuple[str, str, dict[str, str], Any]] = [
    (
        "POST",
        "/pools/{pool}/queue/{namespace}/{pod}/move",
        {"pool": "gpu", "namespace": NS, "pod": "jupyter-carol"},
        {"position": 1},
    ),
    ("DELETE", "/pools/{pool}/queue/{namespace}/{pod}", {"pool": "gpu", "namespace": NS, "pod": "jupyter-carol"}, None),
]


# ------------------------------------------------------------------------------------- auth


@pytest.mark.parametrize(("template", "path"), READ_ROUTES)
async def test_read_routes_without_a_token_are_401_with_a_bearer_challenge(
    api: Api, template: str, path: dict[str, str]
) -> None:
    answer = await api.call("GET", template, token=None, segments=path)
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Bearer" in answer.body["error"]


@pytest.mark.parametrize("header", ["Bearer not-a-token", "Basic " + READ, READ, "Bearer", "bearer " + READ + "x"])
async def test_a_wrong_or_malformed_authorization_is_401(api: Api, header: str) -> None:
    answer = await api.call("GET", "/pools", token=None, headers={"Authorization": header})
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("token", [READ, READ_2, ADMIN])
@pytest.mark.parametrize(("template", "path"), READ_ROUTES)
async def test_read_routes_accept_any_read_token_and_the_admin_token(
    api: Api, template: str, path: dict[str, str], token: str
) -> None:
    await seed(api.store, api.cluster)
    answer = await api.call("GET", template, token=token, segments=path)
    assert answer.status == 200


async def test_the_bearer_scheme_is_case_insensitive(api: Api) -> None:
    answer = await api.call("GET", "/pools", token=None, headers={"Authorization": f"bearer {READ}"})
    assert answer.status == 200


@pytest.mark.parametrize(("method", "template", "path", "body"), EDIT_ROUTES)
async def test_edits_with_a_read_token_are_403_and_change_nothing(
    api: Api, method: str, template: str, path: dict[str, str], body: Any
) -> None:
    await seed(api.store, api.cluster)
    before = await api.store.entries("gpu")
    answer = await api.call(method, template, token=READ, body=body, segments=path)
    assert answer.status == 403
    assert "admin token" in answer.body["error"]
    assert await api.store.entries("gpu") == before
    assert api.cluster.deleted == [] and api.cluster.requested_at == {}


@pytest.mark.parametrize(("method", "template", "path", "body"), EDIT_ROUTES)
async def test_edits_without_a_token_are_401_not_403(
    api: Api, method: str, template: str, path: dict[str, str], body: Any
) -> None:
    await seed(api.store, api.cluster)
    answer = await api.call(method, template, token=None, body=body, segments=path)
    assert answer.status == 401


@pytest.mark.parametrize(("template", "path"), READ_ROUTES)
async def test_with_no_tokens_configured_every_api_request_is_503_naming_read_tokens(
    aiohttp_client: AiohttpClient, store: MemoryQueueStore, cluster: FakeCluster, template: str, path: dict[str, str]
) -> None:
    api = await _api(aiohttp_client, store, cluster, make_config(read=(), admin=()))
    for token in (None, "", "anything"):
        answer = await api.call("GET", template, token=token, segments=path)
        assert answer.status == 503
        assert "api.readTokens" in answer.body["error"]


async def test_with_no_tokens_configured_edits_are_503_too(
    aiohttp_client: AiohttpClient, store: MemoryQueueStore, cluster: FakeCluster
) -> None:
    api = await _api(aiohttp_client, store, cluster, make_config(read=(), admin=()))
    await seed(store, cluster)
    for method, template, path, body in EDIT_ROUTES:
        answer = await api.call(method, template, token="", body=body, segments=path)
        assert answer.status == 503
    assert cluster.deleted == []


async def test_an_admin_token_alone_is_enough_to_serve_reads(
    aiohttp_client: AiohttpClient, store: MemoryQueueStore, cluster: FakeCluster
) -> None:
    api = await _api(aiohttp_client, store, cluster, make_config(read=(), admin=(ADMIN,)))
    assert (await api.call("GET", "/pools", token=ADMIN)).status == 200
    assert (await api.call("GET", "/pools", token=READ)).status == 401


async def test_the_token_is_compared_in_constant_time_against_every_configured_token(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("webhook.api.auth.hmac.compare_digest", spy)
    assert (await api.call("GET", "/pools", token=ADMIN)).status == 200
    # The first token matched, yet all three were compared: no early exit to time.
    assert sorted(b for _, b in compared) == sorted(t.encode() for t in (READ, READ_2, ADMIN))


async def test_the_openapi_document_is_served_without_a_token(
    aiohttp_client: AiohttpClient, store: MemoryQueueStore, cluster: FakeCluster
) -> None:
    api = await _api(aiohttp_client, store, cluster, make_config(read=(), admin=()))
    response = await api.client.get("/api/v1/openapi.json")
    assert response.status == 200
    doc = await response.json()
    assert doc["openapi"].startswith("3.1")
    assert doc["servers"] == [{"url": "/api/v1"}]


async def test_tokens_never_reach_the_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    await seed(api.store, api.cluster)
    caplog.set_level(logging.DEBUG)
    await api.call("GET", "/pools", token="a-wrong-token-5e5e")
    await api.call("GET", "/pools", token=READ)
    move = EDIT_ROUTES[0]
    await api.call(move[0], move[1], token=ADMIN, body={"position": 1, "reason": "demo"}, segments=move[2])
    await api.call(
        "DELETE", "/pools/{pool}/queue/{namespace}/{pod}", token=ADMIN, pool="gpu", namespace=NS, pod="jupyter-erin"
    )
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert "queue edit" in text  # the edits were logged...
    for secret in (READ, READ_2, ADMIN, "a-wrong-token-5e5e"):
        assert secret not in text  # ...without any token


# ---------------------------------------------------------------------------------- reading


async def test_pools_lists_capacity_use_queue_length_and_holders_of_every_pool(api: Api) -> None:
    await seed(api.store, api.cluster)
    answer = await api.call("GET", "/pools")
    assert answer.status == 200
    by_name = {p["name"]: p for p in answer.body}
    assert set(by_name) == {"gpu", "big"}
    gpu = by_name["gpu"]
    assert (gpu["resource"], gpu["capacity"], gpu["inUse"], gpu["queued"]) == ("nvidia.com/gpu", 8, 8, 6)
    assert [h["name"] for h in gpu["holders"]] == [f"jupyter-holder{i}" for i in range(8)]
    assert gpu["holders"][0]["grantedAt"] == "2026-11-28T16:01:40Z"
    assert gpu["holders"][0]["node"] == "gpu-node-0"
    assert by_name["big"] == {
        "name": "big",
        "resource": "example.com/a100",
        "capacity": 2,
        "inUse": 1,
        "queued": 0,
        "holders": [],
        "source": "store",
    }
    assert answer.headers["X-Gpu-Queue-Source"] == "store"


async def test_pool_queue_lists_entries_head_first_with_1_based_positions_waits_and_etas(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(api.store, api.cluster)
    positions: list[int] = []

    def fake_estimate(**kwargs: Any) -> Eta:
        positions.append(kwargs["slices"])
        return Eta(known=True, min_seconds=60.0 * kwargs["slices"], max_seconds=90.0 * kwargs["slices"])

    monkeypatch.setattr(webhook.api.answers, "estimate", fake_estimate)
    answer = await api.call("GET", "/pools/{pool}/queue", pool="gpu")
    assert answer.status == 200
    body = answer.body
    assert (body["pool"], body["queueLength"], body["capacity"], body["inUse"]) == ("gpu", 6, 8, 8)
    assert [(e["position"], e["user"]) for e in body["entries"]] == [
        (1, "alice"),
        (2, "Bob.Smith"),
        (3, "carol"),
        (4, "a@b.org"),  # same microsecond as erin: jhub/jupyter-a-b-org... sorts first
        (5, "erin"),
        (6, "alice"),
    ]
    assert body["entries"][0]["waitingSeconds"] == 2600.0
    assert body["entries"][5]["server"] == "train"
    assert body["entries"][0]["requestedAt"] == "2026-11-28T16:16:40Z"
    assert positions == [1, 2, 3, 4, 5, 6]
    assert body["entries"][2]["eta"] == {"known": True, "minSeconds": 180.0, "maxSeconds": 270.0, "method": ""}


async def test_pool_queue_pages_keep_absolute_positions(api: Api) -> None:
    await seed(api.store, api.cluster)
    answer = await api.call("GET", "/pools/{pool}/queue", params={"offset": "2", "limit": "2"}, pool="gpu")
    assert answer.status == 200
    assert [(e["position"], e["user"]) for e in answer.body["entries"]] == [(3, "carol"), (4, "a@b.org")]
    assert (answer.body["offset"], answer.body["limit"], answer.body["queueLength"]) == (2, 2, 6)
    past = await api.call("GET", "/pools/{pool}/queue", params={"offset": "50"}, pool="gpu")
    assert (past.body["entries"], past.body["queueLength"]) == ([], 6)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"limit": "100000"}, "limit"),
    ],
)
async def test_bad_paging_parameters_are_400_naming_the_parameter(api: Api, params: dict[str, str], named: str) -> None:
    answer = await api.call("GET", "/pools/{pool}/queue", params=params, pool="gpu")
    assert answer.status == 400
    assert named in answer.body["error"]
    assert answer.body["detail"][0]["loc"] == [named]


async def test_an_unknown_pool_is_404_listing_the_pools(api: Api) -> None:
    answer = await api.call("GET", "/pools/{pool}/queue", pool="tpu")
    assert answer.status == 404
    assert "tpu" in answer.body["error"]
    assert answer.body["detail"] == {"pools": ["big", "gpu"]}


async def test_a_queued_pod_gets_its_1_based_position_queue_length_capacity_use_and_eta(api: Api) -> None:
    await seed(api.store, api.cluster)
    answer = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod="jupyter-alice")
    assert answer.status == 200
    body = answer.body
    assert body["pool"] == "gpu" and body["state"] == "queued"
    assert (body["position"], body["queueLength"], body["capacity"], body["inUse"]) == (1, 6, 8, 8)
    assert (body["namespace"], body["name"], body["user"], body["server"]) == (NS, "jupyter-alice", "alice", "")
    assert body["requestedAt"] == "2026-11-28T16:16:40Z"
    assert set(body["eta"]) == {"known", "minSeconds", "maxSeconds", "method"}


@pytest.mark.parametrize(
    ("pod", "position", "refresh"), [("jupyter-alice", 1, 5), ("jupyter-carol", 3, 5), ("jupyter-erin", 5, 15)]
)
async def test_refresh_is_shorter_near_the_head(api: Api, pod: str, position: int, refresh: float) -> None:
    await seed(api.store, api.cluster)
    answer = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod=pod)
    assert (answer.body["position"], answer.body["refreshSeconds"]) == (position, refresh)


async def test_the_eta_comes_from_estimate_with_the_stores_release_times_and_holders(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(api.store, api.cluster)
    seen: list[dict[str, Any]] = []

    def fake_estimate(**kwargs: Any) -> Eta:
        seen.append(kwargs)
        return Eta(known=True, min_seconds=600, max_seconds=1500, method="test")

    monkeypatch.setattr(webhook.api.answers, "estimate", fake_estimate)
    answer = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod="jupyter-carol")
    assert answer.body["eta"] == {"known": True, "minSeconds": 600.0, "maxSeconds": 1500.0, "method": "test"}
    [call] = seen
    assert call["slices"] == 3 and call["capacity"] == 8 and call["in_use"] == 8 and call["now"] == NOW
    assert call["cull_timeout_seconds"] == 3600
    assert list(call["release_times"]) == [at(3000), at(2000), at(1000)]  # newest first
    assert [h.name for h in call["holders"]] == [f"jupyter-holder{i}" for i in range(8)]


async def test_the_eta_counts_the_slices_of_those_ahead_as_the_watch_cache_has_them(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Third in line behind two two-slice users: five slices must free, not three."""
    await seed(api.store, api.cluster)
    api.cluster.through[("gpu", f"{NS}/jupyter-carol")] = 5
    seen: list[dict[str, Any]] = []

    def fake_estimate(**kwargs: Any) -> Eta:
        seen.append(kwargs)
        return Eta(known=False, method="test")

    monkeypatch.setattr(webhook.api.answers, "estimate", fake_estimate)
    answer = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod="jupyter-carol")
    assert answer.body["position"] == 3
    assert [call["slices"] for call in seen] == [5]


async def test_a_failing_estimate_still_answers_the_position_with_an_unknown_eta(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(api.store, api.cluster)

    def broken(**kwargs: Any) -> Eta:
        raise ZeroDivisionError("no samples")

    monkeypatch.setattr(webhook.api.answers, "estimate", broken)
    answer = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod="jupyter-carol")
    assert (answer.status, answer.body["position"], answer.body["eta"]["known"]) == (200, 3, False)


async def test_a_pod_holding_a_slice_is_admitted_with_its_grant_time(api: Api) -> None:
    await seed(api.store, api.cluster)
    answer = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod="jupyter-holder3")
    body = answer.body
    assert answer.status == 200
    assert (body["pool"], body["state"], body["position"]) == ("gpu", "admitted", None)
    assert body["grantedAt"] == "2026-11-28T16:01:43Z"
    assert body["queueLength"] == 6 and body["refreshSeconds"] == 30


async def test_a_pod_the_cluster_knows_but_the_store_has_not_indexed_is_unknown_not_404(api: Api) -> None:
    await seed(api.store, api.cluster)
    api.cluster.pods.add((NS, "jupyter-frank"))
    answer = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod="jupyter-frank")
    assert answer.status == 200
    assert (answer.body["state"], answer.body["pool"], answer.body["position"]) == ("unknown", None, None)


async def test_before_the_cluster_cache_syncs_an_unindexed_pod_is_unknown_not_404(api: Api) -> None:
    api.cluster.synced = False
    answer = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod="jupyter-frank")
    assert (answer.status, answer.body["state"]) == (200, "unknown")


async def test_a_pod_nobody_knows_is_404_with_a_json_error(api: Api) -> None:
    await seed(api.store, api.cluster)
    answer = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod="jupyter-ghost")
    assert answer.status == 404
    assert "jhub/jupyter-ghost" in answer.body["error"]
    assert answer.body["detail"] == {"namespace": NS, "pod": "jupyter-ghost"}


@pytest.mark.parametrize(
    ("namespace", "pod"),
    [("jhub", "Jupyter-Alice"), ("jhub", "jupyter_alice"), ("JHub", "jupyter-alice"), ("jhub", "x" * 254)],
)
async def test_names_that_cannot_be_kubernetes_names_are_400(api: Api, namespace: str, pod: str) -> None:
    answer = await api.call("GET", "/queue/{namespace}/{pod}", namespace=namespace, pod=pod)
    assert answer.status == 400
    assert answer.body["error"].startswith("bad path")


@pytest.mark.parametrize(
    ("user", "server", "pod", "position"),
    [
        ("alice", None, "jupyter-alice", 1),
        ("Bob.Smith", None, "jupyter-bob-smith---274c9d19", 2),
        ("a@b.org", None, "jupyter-a-b-org---0c1f5f6d", 4),
        ("alice", "train", "jupyter-alice--train", 6),
    ],
)
async def test_user_lookup_by_raw_hub_name_and_server(
    api: Api, user: str, server: str | None, pod: str, position: int
) -> None:
    await seed(api.store, api.cluster)
    params = {"server": server} if server is not None else None
    answer = await api.call("GET", "/users/{user}", params=params, user=user)
    assert answer.status == 200
    body = answer.body
    assert (body["state"], body["name"], body["position"], body["user"]) == ("queued", pod, position, user)
    assert body["server"] == (server or "")


async def test_user_names_arrive_unencoded_or_percent_encoded(api: Api) -> None:
    await seed(api.store, api.cluster)
    for raw in ("/users/a@b.org", "/users/a%40b.org", "/users/Bob%2ESmith"):
        answer = await api.call("GET", "/users/{user}", raw_path=raw)
        assert answer.status == 200, raw
    assert (await api.call("GET", "/users/{user}", raw_path="/users/bob.smith")).status == 404  # names are exact


async def test_a_named_server_is_not_the_default_server(api: Api) -> None:
    await seed(api.store, api.cluster)
    assert (await api.call("GET", "/users/{user}", params={"server": "other"}, user="alice")).status == 404
    assert (await api.call("GET", "/users/{user}", params={"server": "train"}, user="Bob.Smith")).status == 404


async def test_a_user_holding_a_slice_is_admitted(api: Api) -> None:
    await seed(api.store, api.cluster)
    answer = await api.call("GET", "/users/{user}", user="holder5")
    assert (answer.status, answer.body["state"], answer.body["name"]) == (200, "admitted", "jupyter-holder5")


async def test_an_unknown_user_is_404_with_the_user_and_server_in_detail(api: Api) -> None:
    await seed(api.store, api.cluster)
    answer = await api.call("GET", "/users/{user}", params={"server": "x"}, user="zoe")
    assert answer.status == 404
    assert answer.body["detail"] == {"user": "zoe", "server": "x"}


# A pod the hub just created: the watch cache has it (gated, of the gpu pool), the store not yet.
FRANK = "jupyter-frank--ml"


async def _frank_in_the_cache_only(api: Api) -> None:
    await seed(api.store, api.cluster)
    api.cluster.add(queued_view(FRANK, "frank", 3500, server="ml"))


async def test_a_pod_the_cache_has_queued_but_the_store_has_not_indexed_is_pending_not_404(api: Api) -> None:
    await _frank_in_the_cache_only(api)
    user = await api.call("GET", "/users/{user}", params={"server": "ml"}, user="frank")
    assert user.status == 200
    assert user.body == {
        "pool": "gpu",
        "state": "pending",
        "namespace": NS,
        "name": FRANK,
        "user": "frank",
        "server": "ml",
        "position": None,
        "queueLength": 0,
        "capacity": 0,
        "inUse": 0,
        "requestedAt": None,
        "grantedAt": None,
        "eta": {"known": False, "minSeconds": None, "maxSeconds": None, "method": ""},
        "refreshSeconds": 1.0,
        "heldBack": None,
        "priority": None,
        "holdLimit": None,
        "source": "store",
    }
    assert user.headers[SOURCE] == "store"  # the store answered; the cache only saw the pod
    pod = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod=FRANK)
    assert (pod.status, pod.body["state"], pod.body["pool"], pod.body["refreshSeconds"]) == (200, "pending", "gpu", 1)
    assert (pod.body["position"], pod.body["user"], pod.body["server"]) == (None, "frank", "ml")


async def test_a_pod_the_cache_has_holding_but_the_store_has_not_indexed_is_pending(api: Api) -> None:
    await seed(api.store, api.cluster)
    api.cluster.add(
        PodView(namespace=NS, name="jupyter-gina", pool="gpu", requested_at=at(3500), granted_at=at(3550), user="gina")
    )
    user = await api.call("GET", "/users/{user}", user="gina")
    assert (user.status, user.body["state"], user.body["pool"]) == (200, "pending", "gpu")
    assert (user.body["name"], user.body["position"], user.body["refreshSeconds"]) == ("jupyter-gina", None, 1)
    pod = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod="jupyter-gina")
    assert (pod.body["state"], pod.body["grantedAt"]) == ("pending", None)


async def test_a_user_neither_the_store_nor_the_cache_knows_is_still_404_while_another_is_pending(api: Api) -> None:
    await _frank_in_the_cache_only(api)
    assert (await api.call("GET", "/users/{user}", params={"server": "ml"}, user="frank")).body["state"] == "pending"
    zoe = await api.call("GET", "/users/{user}", user="zoe")
    assert (zoe.status, zoe.body["detail"]) == (404, {"user": "zoe", "server": ""})
    # The same user with another server, or the default one, is another server: not pending.
    assert (await api.call("GET", "/users/{user}", user="frank")).status == 404
    assert (await api.call("GET", "/users/{user}", params={"server": "cv"}, user="frank")).status == 404
    ghost = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod="jupyter-ghost")
    assert ghost.status == 404


async def test_before_the_cache_syncs_an_unindexed_user_is_404_and_its_pod_unknown_then_pending(api: Api) -> None:
    await _frank_in_the_cache_only(api)
    api.cluster.synced = False
    user = await api.call("GET", "/users/{user}", params={"server": "ml"}, user="frank")
    assert (user.status, user.body["detail"]) == (404, {"user": "frank", "server": "ml"})
    pod = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod=FRANK)
    assert (pod.status, pod.body["state"], pod.body["pool"], pod.body["refreshSeconds"]) == (200, "unknown", None, 10)
    api.cluster.synced = True
    synced = await api.call("GET", "/users/{user}", params={"server": "ml"}, user="frank")
    assert (synced.status, synced.body["state"]) == (200, "pending")


async def test_a_pending_pod_is_queued_with_its_position_once_the_store_indexes_it(api: Api) -> None:
    await _frank_in_the_cache_only(api)
    before = await api.call("GET", "/users/{user}", params={"server": "ml"}, user="frank")
    assert (before.body["state"], before.body["position"]) == ("pending", None)
    await api.store.enqueue("gpu", entry(FRANK, "frank", 3500, server="ml"), 300)
    after = await api.call("GET", "/users/{user}", params={"server": "ml"}, user="frank")
    assert (after.status, after.body["state"], after.body["pool"]) == (200, "queued", "gpu")
    assert (after.body["position"], after.body["queueLength"], after.body["refreshSeconds"]) == (7, 7, 15)
    pod = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod=FRANK)
    assert (pod.body["state"], pod.body["position"]) == ("queued", 7)


async def test_the_openapi_document_names_and_explains_the_pending_state(api: Api) -> None:
    schemas = (await api.openapi())["components"]["schemas"]
    assert schemas["PositionState"]["enum"] == ["queued", "admitted", "pending", "unknown"]
    assert "pending: this replica has seen a pod" in schemas["Position"]["properties"]["state"]["description"]


# ------------------------------------------------------------------------------------ edits

MOVE = "/pools/{pool}/queue/{namespace}/{pod}/move"
REMOVE = "/pools/{pool}/queue/{namespace}/{pod}"


async def test_move_reorders_and_writes_the_new_requested_at_onto_the_pod(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    await seed(api.store, api.cluster)
    caplog.set_level(logging.INFO, logger="webhook.api")
    body = {"position": 1, "reason": "course deadline"}
    answer = await api.call("POST", MOVE, token=ADMIN, body=body, pool="gpu", namespace=NS, pod="jupyter-erin")
    assert answer.status == 200
    assert answer.body["action"] == "moved"
    assert (answer.body["previousPosition"], answer.body["position"], answer.body["queueLength"]) == (5, 1, 6)
    assert [e.name for e in await api.store.entries("gpu")][:2] == ["jupyter-erin", "jupyter-alice"]
    moved = (await api.store.entries("gpu", 0, 0))[0]
    # A rebuild from the pods keeps the new order: the pod carries the store's new time.
    assert api.cluster.requested_at == {(NS, "jupyter-erin"): moved.requested_at}
    assert answer.body["requestedAt"] == moved.model_dump(mode="json", by_alias=True)["requestedAt"]
    [record] = [r for r in caplog.records if "queue edit" in r.getMessage()]
    ctx = record.ctx  # type: ignore[attr-defined]
    assert ctx["action"] == "move" and ctx["reason"] == "course deadline"
    assert (ctx["from_position"], ctx["to_position"], ctx["pod"], ctx["pool"]) == (5, 1, "jupyter-erin", "gpu")
    assert ctx["by"] == "admin token #1"


async def test_move_past_the_end_puts_the_pod_last(api: Api) -> None:
    await seed(api.store, api.cluster)
    answer = await api.call(
        "POST", MOVE, token=ADMIN, body={"position": 99}, pool="gpu", namespace=NS, pod="jupyter-alice"
    )
    assert (answer.status, answer.body["position"], answer.body["queueLength"]) == (200, 6, 6)
    assert (await api.store.entries("gpu", -1, -1))[0].name == "jupyter-alice"


@pytest.mark.parametrize(
    "body",
    [
        {"position": 0},
        {"position": -2},
        {},
        {"position": "first"},
        "not json",
        {"position": 1, "reason": "x" * 501},
        {"position": 1, "who": "me"},
    ],
)
async def test_a_bad_move_body_is_400_and_moves_nothing(api: Api, body: Any) -> None:
    await seed(api.store, api.cluster)
    before = await api.store.entries("gpu")
    answer = await api.call("POST", MOVE, token=ADMIN, body=body, pool="gpu", namespace=NS, pod="jupyter-erin")
    assert answer.status == 400
    assert answer.body["error"].startswith("bad request body")
    assert await api.store.entries("gpu") == before and api.cluster.requested_at == {}


async def test_editing_a_pod_that_holds_a_slice_is_409(api: Api) -> None:
    await seed(api.store, api.cluster)
    moved = await api.call(
        "POST", MOVE, token=ADMIN, body={"position": 1}, pool="gpu", namespace=NS, pod="jupyter-holder0"
    )
    removed = await api.call("DELETE", REMOVE, token=ADMIN, pool="gpu", namespace=NS, pod="jupyter-holder0")
    assert (moved.status, removed.status) == (409, 409)
    assert api.cluster.deleted == []


async def test_editing_a_pod_not_queued_in_that_pool_is_404(api: Api) -> None:
    await seed(api.store, api.cluster)
    moved = await api.call(
        "POST", MOVE, token=ADMIN, body={"position": 1}, pool="big", namespace=NS, pod="jupyter-alice"
    )
    removed = await api.call("DELETE", REMOVE, token=ADMIN, pool="gpu", namespace=NS, pod="jupyter-ghost")
    unknown_pool = await api.call("DELETE", REMOVE, token=ADMIN, pool="tpu", namespace=NS, pod="jupyter-alice")
    assert (moved.status, removed.status, unknown_pool.status) == (404, 404, 404)
    assert api.cluster.deleted == [] and await api.store.length("gpu") == 6


async def test_remove_drops_the_entry_without_a_tombstone_then_deletes_the_pod(api: Api) -> None:
    await seed(api.store, api.cluster)
    order: list[str] = []
    real_delete = api.cluster.delete_pod

    async def delete_pod(namespace: str, name: str) -> bool:
        # Removed from the index first, so the controller seeing the deletion keeps no place.
        order.append("queued" if await api.store.position("gpu", f"{namespace}/{name}") else "gone")
        return await real_delete(namespace, name)

    api.cluster.delete_pod = delete_pod  # type: ignore[method-assign]
    answer = await api.call(
        "DELETE",
        REMOVE,
        token=ADMIN,
        params={"reason": "left the course"},
        pool="gpu",
        namespace=NS,
        pod="jupyter-carol",
    )
    assert answer.status == 200
    assert answer.body["action"] == "removed" and answer.body["podDeleted"] is True
    assert (answer.body["previousPosition"], answer.body["queueLength"], answer.body["reason"]) == (
        3,
        5,
        "left the course",
    )
    assert order == ["gone"]
    assert api.cluster.deleted == [(NS, "jupyter-carol")]
    assert ("remove", ("gpu", "jhub/jupyter-carol", 0)) in api.store.calls
    assert api.store.pools["gpu"].tombstones == {}
    # Coming back does not restore the old place.
    again = await api.store.enqueue("gpu", entry("jupyter-carol", "carol", 3500), 300)
    assert again.requested_at == at(3500)


async def test_remove_reports_a_pod_that_was_already_gone(api: Api) -> None:
    await seed(api.store, api.cluster)
    api.cluster.pods.discard((NS, "jupyter-carol"))
    answer = await api.call("DELETE", REMOVE, token=ADMIN, pool="gpu", namespace=NS, pod="jupyter-carol")
    assert (answer.status, answer.body["podDeleted"]) == (200, False)


async def test_a_failed_kubernetes_write_is_502_saying_to_retry(api: Api) -> None:
    await seed(api.store, api.cluster)
    api.cluster.fail_writes = True
    moved = await api.call(
        "POST", MOVE, token=ADMIN, body={"position": 1}, pool="gpu", namespace=NS, pod="jupyter-erin"
    )
    removed = await api.call("DELETE", REMOVE, token=ADMIN, pool="gpu", namespace=NS, pod="jupyter-carol")
    assert (moved.status, removed.status) == (502, 502)
    assert "retry" in moved.body["error"] and "retry" in removed.body["error"]


# --------------------------------------------------------------------------- store outages


SOURCE = "X-Gpu-Queue-Source"


def _sources(body: Any) -> set[str]:
    """The ``source`` of an answer (of every pool, for ``GET /pools``)."""
    return {p["source"] for p in body} if isinstance(body, list) else {body["source"]}


@pytest.mark.parametrize(("template", "path"), READ_ROUTES)
async def test_a_store_outage_answers_every_read_route_from_the_watch_cache(
    api: Api, template: str, path: dict[str, str]
) -> None:
    await seed(api.store, api.cluster)
    assert (await api.call("GET", template, segments=path)).headers[SOURCE] == "store"
    api.store.down = True
    answer = await api.call("GET", template, segments=path)
    assert answer.status == 200
    assert answer.headers[SOURCE] == "cache" and _sources(answer.body) == {"cache"}
    assert "Retry-After" not in answer.headers


@pytest.mark.parametrize(("template", "path"), READ_ROUTES)
async def test_a_store_outage_before_the_watch_cache_synced_is_503_with_retry_after(
    api: Api, template: str, path: dict[str, str]
) -> None:
    await seed(api.store, api.cluster)
    api.store.down = True
    api.cluster.synced = False
    answer = await api.call("GET", template, segments=path)
    assert answer.status == 503
    assert int(answer.headers["Retry-After"]) > 0 and SOURCE not in answer.headers
    assert "Redis" in answer.body["error"] and "watch cache has not synced" in answer.body["error"]


def _without_source(body: Any) -> Any:
    """An answer as compared between the sources: the same but for ``source`` and the ETAs (the
    cache has no release times)."""
    if isinstance(body, list):
        return [_without_source(b) for b in body]
    out = {k: v for k, v in body.items() if k not in ("source", "eta")}
    if "entries" in out:
        out["entries"] = [_without_source(e) for e in out["entries"]]
    return out


POD_NAMES = [
    *(f"jupyter-holder{i}" for i in range(8)),
    "jupyter-alice",
    "jupyter-bob-smith---274c9d19",
    "jupyter-carol",
    "jupyter-a-b-org---0c1f5f6d",
    "jupyter-erin",
    "jupyter-alice--train",
]
USERS = [("alice", None), ("alice", "train"), ("Bob.Smith", None), ("a@b.org", None), ("erin", None), ("holder5", None)]


async def test_answers_from_the_watch_cache_equal_the_stores_in_the_normal_case(api: Api) -> None:
    """Both order by requested-at, then namespace/name (erin and a@b.org tie in the microsecond)."""
    await seed(api.store, api.cluster)
    asks: list[tuple[str, dict[str, str], dict[str, str] | None]] = [
        ("/pools", {}, None),
        ("/pools/{pool}/queue", {"pool": "gpu"}, None),
        ("/pools/{pool}/queue", {"pool": "gpu"}, {"offset": "2", "limit": "3"}),
        ("/pools/{pool}/queue", {"pool": "gpu"}, {"offset": "9"}),
        ("/pools/{pool}/queue", {"pool": "big"}, None),
        *(("/queue/{namespace}/{pod}", {"namespace": NS, "pod": name}, None) for name in POD_NAMES),
        *(("/users/{user}", {"user": u}, {"server": srv} if srv else None) for u, srv in USERS),
    ]
    for template, path, params in asks:
        api.store.down = False
        stored = await api.call("GET", template, segments=path, params=params)
        api.store.down = True
        cached = await api.call("GET", template, segments=path, params=params)
        assert (stored.status, cached.status) == (200, 200), (template, path)
        assert (_sources(stored.body), _sources(cached.body)) == ({"store"}, {"cache"})
        assert _without_source(cached.body) == _without_source(stored.body), (template, path, params)


async def test_positions_from_the_cache_follow_the_pods_order_not_the_arrival_order(api: Api) -> None:
    await seed(api.store, api.cluster)
    api.store.down = True
    listing = await api.call("GET", "/pools/{pool}/queue", pool="gpu")
    assert [(e["position"], e["user"], e["server"]) for e in listing.body["entries"]] == [
        (1, "alice", ""),
        (2, "Bob.Smith", ""),
        (3, "carol", ""),
        (4, "a@b.org", ""),  # same microsecond as erin: jhub/jupyter-a-b-org... sorts first
        (5, "erin", ""),
        (6, "alice", "train"),
    ]
    assert (listing.body["queueLength"], listing.body["capacity"], listing.body["inUse"]) == (6, 8, 8)
    erin = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod="jupyter-erin")
    assert (erin.body["state"], erin.body["position"], erin.body["refreshSeconds"]) == ("queued", 5, 15)
    held = await api.call("GET", "/users/{user}", user="holder3")
    assert (held.body["state"], held.body["grantedAt"], held.body["source"]) == (
        "admitted",
        "2026-11-28T16:01:43Z",
        "cache",
    )


async def test_the_eta_from_the_cache_is_unknown_and_says_why(api: Api) -> None:
    await seed(api.store, api.cluster)
    api.store.down = True
    answer = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod="jupyter-carol")
    eta = answer.body["eta"]
    assert (eta["known"], eta["minSeconds"], eta["maxSeconds"]) == (False, None, None)
    assert "Redis" in eta["method"] and "release times" in eta["method"]
    assert "idle culler" in eta["method"]  # the hint the holders' grant times still give
    # A free slice needs no release times: the head hears so from the cache too.
    api.cluster.usage["gpu"] = (8, 7)
    head = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod="jupyter-alice")
    assert (head.body["eta"]["known"], head.body["eta"]["maxSeconds"]) == (True, 60.0)


async def test_the_eta_from_the_cache_counts_the_slices_of_those_ahead(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bob asks for two slices: carol, third, needs four to free, as the cache's plan counts them."""
    await seed(api.store, api.cluster)
    api.cluster.views = [v for v in api.cluster.views if v.name != "jupyter-bob-smith---274c9d19"]
    api.cluster.add(queued_view("jupyter-bob-smith---274c9d19", "Bob.Smith", 2000, slices=2))
    seen: list[int] = []

    def fake_estimate(**kwargs: Any) -> Eta:
        seen.append(kwargs["slices"])
        assert kwargs["release_times"] == []
        return Eta(known=False, method="unknown: 0 of 3 release intervals observed; idle hint")

    monkeypatch.setattr(webhook.api.answers, "estimate", fake_estimate)
    api.store.down = True
    answer = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod="jupyter-carol")
    assert (answer.body["position"], seen) == (3, [4])
    assert answer.body["eta"]["method"].endswith("; idle hint")


async def test_from_the_cache_unknown_pods_and_users_are_404_and_a_pod_of_no_pool_is_unknown(api: Api) -> None:
    await seed(api.store, api.cluster)
    api.cluster.pods.add((NS, "jupyter-cpu-only"))
    api.store.down = True
    ghost = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod="jupyter-ghost")
    assert (ghost.status, ghost.body["detail"]) == (404, {"namespace": NS, "pod": "jupyter-ghost"})
    zoe = await api.call("GET", "/users/{user}", params={"server": "x"}, user="zoe")
    assert (zoe.status, zoe.body["detail"]) == (404, {"user": "zoe", "server": "x"})
    other = await api.call("GET", "/users/{user}", params={"server": "other"}, user="alice")
    assert other.status == 404  # a named server is not the default server, from the cache too
    cpu = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod="jupyter-cpu-only")
    assert (cpu.status, cpu.body["state"], cpu.body["source"]) == (200, "unknown", "cache")
    unknown_pool = await api.call("GET", "/pools/{pool}/queue", pool="tpu")
    assert unknown_pool.status == 404


async def test_answering_from_the_cache_is_logged_once_not_per_answer(
    api: Api, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook.api.positions, "_cache_warning", webhook.api.positions._Throttle(60))
    await seed(api.store, api.cluster)
    api.store.down = True
    caplog.set_level(logging.INFO, logger="webhook.api")
    for _ in range(3):
        assert (await api.call("GET", "/users/{user}", user="alice")).status == 200
    warned = [r for r in caplog.records if "answering reads from the watch cache" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING


@pytest.mark.parametrize(("method", "template", "path", "body"), EDIT_ROUTES)
async def test_a_store_outage_during_an_edit_is_503_and_writes_nothing_to_the_cluster(
    api: Api, method: str, template: str, path: dict[str, str], body: Any
) -> None:
    await seed(api.store, api.cluster)
    api.store.down = True
    answer = await api.call(method, template, token=ADMIN, body=body, segments=path)
    assert answer.status == 503 and int(answer.headers["Retry-After"]) > 0
    assert "Redis" in answer.body["error"] and "admin edits" in answer.body["error"]
    assert api.cluster.deleted == [] and api.cluster.requested_at == {}


# ---------------------------------------------------------------------- routing and schema


async def test_unknown_routes_and_methods_answer_json_errors(api: Api) -> None:
    missing = await api.client.get("/api/v1/nope", headers={"Authorization": f"Bearer {READ}"})
    assert missing.status == 404
    assert "openapi.json" in (await missing.json())["error"]
    wrong = await api.client.put("/api/v1/pools", headers={"Authorization": f"Bearer {READ}"})
    assert wrong.status == 405
    assert "GET" in wrong.headers["Allow"]
    assert (await wrong.json())["error"]


async def test_the_openapi_document_lists_every_route_and_path_parameter(api: Api) -> None:
    doc = await api.openapi()
    served: set[tuple[str, str]] = set()
    for route in api.sub.router.routes():
        if route.method != "HEAD":
            served.add((route.method.lower(), route.resource.canonical.removeprefix("/api/v1")))  # type: ignore[union-attr]
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented
    for path, ops in doc["paths"].items():
        names = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        for op in ops.values():
            in_path = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert in_path == names, path
            assert op["operationId"] and "200" in op["responses"]


async def test_the_openapi_document_declares_bearer_auth_and_query_parameters(api: Api) -> None:
    doc = await api.openapi()
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert doc["security"] == [{"bearerAuth": []}]
    assert doc["paths"]["/openapi.json"]["get"]["security"] == []
    queue_params = {
        p["name"]: p for p in doc["paths"]["/pools/{pool}/queue"]["get"]["parameters"] if p["in"] == "query"
    }
    assert set(queue_params) == {"limit", "offset"}
    assert not queue_params["limit"]["required"]
    server = [p for p in doc["paths"]["/users/{user}"]["get"]["parameters"] if p["in"] == "query"]
    assert [p["name"] for p in server] == ["server"]
    move = doc["paths"]["/pools/{pool}/queue/{namespace}/{pod}/move"]["post"]
    assert move["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/MoveRequest"}
    assert {"401", "403", "503"} <= set(move["responses"])
    assert "Retry-After" in move["responses"]["503"]["headers"]


async def test_every_component_schema_is_valid_json_schema_and_refs_resolve(api: Api) -> None:
    doc = await api.openapi()
    schemas = doc["components"]["schemas"]
    assert {"Position", "PoolStatus", "Holder", "Eta", "QueueListing", "ErrorBody", "MoveRequest"} <= set(schemas)
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref


async def test_the_schema_check_rejects_an_answer_that_breaks_the_document(api: Api) -> None:
    # The conformance helper itself must be able to fail.
    with pytest.raises(jsonschema.ValidationError):
        await api.check("GET", "/queue/{namespace}/{pod}", 200, {"pool": "gpu", "state": "waiting"})
    with pytest.raises(AssertionError):
        await api.check("GET", "/pools", 418, {})


async def test_a_move_request_body_is_checked_against_the_documented_schema(api: Api) -> None:
    doc = await api.openapi()
    schema = {**doc["components"]["schemas"]["MoveRequest"], "components": doc["components"]}
    OAS31Validator(schema).validate({"position": 2, "reason": "x"})
    with pytest.raises(jsonschema.ValidationError):
        OAS31Validator(schema).validate({"position": 0})


async def test_kept_places_list_who_gets_an_old_place_back_and_until_when(api: Api) -> None:
    await api.store.enqueue("gpu", entry("jupyter-alice", "alice", 10), 300)
    await api.store.enqueue("gpu", entry("jupyter-bob-ml", "bob", 20, server="ml"), 300)
    await api.store.remove("gpu", f"{NS}/jupyter-bob-ml", 300)  # bob cancelled: his place is kept
    answer = await api.call("GET", "/pools/{pool}/kept-places", pool="gpu")
    assert answer.status == 200
    (place,) = answer.body["keptPlaces"]
    assert (place["user"], place["server"], place["requestedAt"]) == ("bob", "ml", "2026-11-28T16:00:20Z")
    assert datetime.fromisoformat(place["expiresAt"]) == api.store.clock() + timedelta(seconds=300)

    assert (await api.call("GET", "/pools/{pool}/kept-places", pool="nope")).status == 404
    api.store.down = True  # kept places live in Redis only: no answer from the watch cache
    assert (await api.call("GET", "/pools/{pool}/kept-places", pool="gpu")).status == 503


# --- fair use: a group limit holding a queued user back, the hold limit's stop ------------------


def policy_config() -> Config:
    gpu = {"capacity": 8, "groupLimits": {"course-a": 1}, "maxHoldSecondsWhenQueued": 7200, "holdWarningSeconds": 600}
    return Config.model_validate(
        {"pools": {"gpu": gpu}, "missingProfile": "allow", "api": {"readTokens": [READ], "adminTokens": [ADMIN]}}
    )


async def test_positions_say_which_group_limit_holds_a_user_back_and_when_a_warned_holder_stops(
    aiohttp_client: AiohttpClient, store: MemoryQueueStore, cluster: FakeCluster
) -> None:
    config = policy_config()
    cluster.pools = dict(config.pools)
    cluster.usage = {"gpu": (8, 1)}
    api = await _api(aiohttp_client, store, cluster, config)
    held = holder("jupyter-hal", "hal", granted=0)
    await store.enqueue("gpu", entry(held.name, "hal", -60), 300)
    assert await store.grant("gpu", held.key, held)
    cluster.add(
        PodView(
            namespace=NS,
            name=held.name,
            pool="gpu",
            requested_at=held.requested_at,
            granted_at=held.granted_at,
            user="hal",
            node=held.node,
            phase="Running",
            ready=True,
            groups=("course-a",),
            hold_warned_at=at(6600),
        )
    )
    await store.enqueue("gpu", entry("jupyter-ann", "ann", 500), 300)
    cluster.add(replace(queued_view("jupyter-ann", "ann", 500), groups=("course-a", "students")))

    ann = await api.call("GET", "/users/{user}", user="ann")
    assert ann.status == 200 and ann.body["state"] == "queued" and ann.body["position"] == 1
    assert ann.body["heldBack"] == {"policy": "groupLimits", "group": "course-a", "limit": 1, "inUse": 1}
    assert ann.body["holdLimit"] is None

    hal = await api.call("GET", "/users/{user}", user="hal")
    assert hal.body["state"] == "admitted" and hal.body["heldBack"] is None
    assert hal.body["holdLimit"] == {
        "policy": "maxHoldSecondsWhenQueued",
        "warnedAt": "2026-11-28T17:50:00Z",
        "stopAt": "2026-11-28T18:00:00Z",
        "limitSeconds": 7200,
    }
    pod = await api.call("GET", "/queue/{namespace}/{pod}", namespace=NS, pod="jupyter-ann")
    assert pod.body["heldBack"]["group"] == "course-a"
