"""Leader election without trusting other machines' clocks, and the fence on every write.

Two electors share an in-memory Lease (with resourceVersion conflicts, as the API server does).
Each has its own wall clock (what it writes into the Lease) and its own monotonic clock (what it
decides by), driven by the test: skew and freezes are exact, and nothing sleeps."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from webhook.cluster_view import PodView
from webhook.controller.events import EventWriter
from webhook.election import FencedKube, LeaderElector, NotLeader
from webhook.kube import Kube, KubeError

DURATION = 15.0
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LEASE = "/apis/coordination.k8s.io/v1/namespaces/gpu-queue/leases/gpu-queue-leader"


class LeaseServer(Kube):
    """The Lease part of an API server, and a record of every other write."""

    def __init__(self) -> None:
        super().__init__(None, timeout=1.0)  # type: ignore[arg-type]  # no client: nothing is sent
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.writes: list[tuple[str, str]] = []

    async def request(self, method: str, path: str, *, body: Any = None, **_: Any) -> dict[str, Any]:
        if path.startswith(LEASE.rsplit("/", 1)[0]):
            return self._lease(method, body)
        self.writes.append((method, path))
        return {}

    def _lease(self, method: str, body: Any) -> dict[str, Any]:
        if method == "GET":
            if self.lease is None:
                raise KubeError(404, "not found")
            return copy.deepcopy(self.lease)
        if method == "POST" and self.lease is not None:
            raise KubeError(409, "already exists")
        if method == "PUT" and body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise KubeError(409, "the object has been modified")
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)


class Replica:
    """One elector with its own clocks: ``skew`` shifts its wall clock, ``frozen`` stops it."""

    def __init__(self, server: LeaseServer, identity: str, skew: timedelta = timedelta(0)) -> None:
        self.mono = 1000.0
        self.skew = skew
        self.elector = LeaderElector(
            server, "gpu-queue", "gpu-queue-leader", identity, DURATION, monotonic=lambda: self.mono, wall=self.wall
        )

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.mono - 1000.0) + self.skew

    async def tick(self, seconds: float, *, frozen: bool = False) -> None:
        self.mono += seconds
        if not frozen:
            try:
                await self.elector._try()
            except KubeError as exc:
                assert exc.status == 409, exc


async def run(replicas: list[Replica], seconds: float, step: float, frozen: Replica | None = None) -> list[str]:
    """Advance every replica by ``step`` until ``seconds`` passed; who led after each step."""
    leaders = []
    for _ in range(round(seconds / step)):
        for replica in replicas:
            await replica.tick(step, frozen=replica is frozen)
        now = [r.elector.identity for r in replicas if r.elector.is_leader()]
        assert len(now) <= 1, f"two leaders at once: {now}"
        leaders.append(now[0] if now else "")
    return leaders


async def test_a_candidate_whose_clock_is_a_minute_ahead_never_steals_a_renewed_lease() -> None:
    server = LeaseServer()
    a = Replica(server, "a")
    b = Replica(server, "b", skew=timedelta(seconds=60))  # sees a's renewTime as a minute old
    await a.tick(0)
    assert a.elector.is_leader()
    leaders = await run([a, b], 120, DURATION / 4)
    assert set(leaders) == {"a"}, "the skewed candidate took a lease its holder kept renewing"


async def test_a_dead_leader_whose_clock_ran_an_hour_ahead_is_replaced_within_one_duration() -> None:
    server = LeaseServer()
    a = Replica(server, "a", skew=timedelta(hours=1))  # writes renewTimes an hour in b's future
    b = Replica(server, "b")
    await a.tick(0)
    await run([a, b], 30, DURATION / 4)
    assert a.elector.is_leader()
    leaders = await run([a, b], 2 * DURATION, DURATION / 4, frozen=a)  # a stops renewing
    took_over = leaders.index("b") * DURATION / 4
    assert took_over <= DURATION + DURATION / 2, f"b waited {took_over}s for a dead lease"


async def test_a_leader_frozen_past_its_lease_writes_nothing_when_it_thaws() -> None:
    server = LeaseServer()
    a = Replica(server, "a")
    b = Replica(server, "b")
    await a.tick(0)
    await run([a, b], 10, DURATION / 4)
    writer = FencedKube(server, a.elector.is_leader)
    events = EventWriter(writer, "a")
    view = PodView(namespace="jhub", name="jupyter-alice")
    events.emit(view, "Queued", "Waiting for a GPU slice: position 1 of 1")
    events.emit(view, "Queued", "Waiting for a GPU slice: position 1 of 1")

    leaders = await run([a, b], 2 * DURATION, DURATION / 4, frozen=a)  # SIGSTOP: a's clock runs on
    assert leaders[-1] == "b"
    # SIGCONT: before a's elector runs again, its queued Events and any other write are refused.
    assert not a.elector.is_leader()
    while not events.queue.empty():
        item = events.queue.get_nowait()
        await events.post(*item[:3], kind=item[3])
    with pytest.raises(NotLeader):
        await writer.patch_json("/api/v1/namespaces/jhub/pods/jupyter-bob", [])
    assert server.writes == [], f"the thawed old leader wrote {server.writes}"
    assert writer.refused == 3


async def test_the_fence_lets_the_leader_write_and_every_read_through() -> None:
    server = LeaseServer()
    a = Replica(server, "a")
    writer = FencedKube(server, a.elector.is_leader)
    await writer.request("GET", "/api/v1/namespaces/jhub/pods/x")  # a read: no leadership needed
    await a.tick(0)
    await writer.patch_json("/api/v1/namespaces/jhub/pods/x", [])
    assert server.writes == [("GET", "/api/v1/namespaces/jhub/pods/x"), ("PATCH", "/api/v1/namespaces/jhub/pods/x")]


async def test_a_write_whose_fence_fails_before_it_is_sent_never_reaches_the_api_server(
    aiohttp_server: Any,
) -> None:
    """The fence is checked again when the request is ready to leave, after the client found or
    made its connection: leadership lost in between (a freeze during a TLS handshake, a wait for a
    free connection) sends nothing. Here the lease "expires" between the entry check and the send."""
    from aiohttp import web
    from kubernetes_asyncio import client as k8s

    received: list[str] = []

    async def record(request: web.Request) -> web.Response:
        received.append(f"{request.method} {request.path}")
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    server = await aiohttp_server(app)
    configuration = k8s.Configuration(host=str(server.make_url("")).rstrip("/"))
    kube = Kube(k8s.ApiClient(configuration))
    answers = iter([True, True, True])  # 1st write: entry, send; 2nd: entry; then lost

    def leading() -> bool:
        return next(answers, False)

    writer = FencedKube(kube, leading)
    try:
        await writer.request("POST", "/api/v1/namespaces/jhub/events", body={"reason": "Granted"})
        with pytest.raises(NotLeader):  # passed at entry (True), refused at the send (False)
            await writer.request("POST", "/api/v1/namespaces/jhub/events", body={"reason": "Queued"})
        await writer.request("GET", "/api/v1/namespaces/jhub/pods")  # reads are never fenced
    finally:
        await kube.aclose()
    assert received == ["POST /api/v1/namespaces/jhub/events", "GET /api/v1/namespaces/jhub/pods"]
    assert writer.refused == 1
