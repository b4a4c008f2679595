"""The hub side (``webhook.hub``) with real JupyterHub ``User`` objects, a real (in-memory) hub
database, real ``QueueAwareKubeSpawner`` instances, and a fake queue API served by aiohttp on
127.0.0.1. Only the Kubernetes edges are replaced: the kube config loader, the event reflector's
watch (a list the test fills) and the pod-creating ``_start`` body."""

from __future__ import annotations

import ast
import asyncio
import logging
import socket
import ssl
import sys
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jupyterhub.user
import kubespawner.spawner
import pytest
import yaml
from aiohttp import web
from jupyterhub import orm, roles
from jupyterhub.objects import Hub
from jupyterhub.user import User
from jupyterhub.utils import maybe_future
from kubespawner import KubeSpawner
from tornado import web as tornado_web
from traitlets.config import Config

import webhook.hub
from tests.helpers.spawner_pods import profile_list
from webhook.certs import make_ca, make_serving_cert
from webhook.config import load_config
from webhook.hub import (
    PlaceHistory,
    QueueApiError,
    QueueAwareKubeSpawner,
    QueueStatus,
    format_eta,
    friendly_scheduler_message,
    joined_ahead,
    queue_fields,
    queue_message,
    unreadable_message,
)
from webhook.quantity import parse_quantity

NAMESPACE = "jhub"
NO_ESTIMATE = "unknown: 1 of 3 release intervals observed; "  # the queue API's eta.method
TOKEN = "s3cret-read-token-never-logged"
pytestmark = pytest.mark.timeout(30)


# --------------------------------------------------------------------------- fakes


class FakeQueueApi:
    """``GET /api/v1/users/{user}?server=``: answers set per (user, server); counts requests."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self.requests: list[dict[str, str]] = []
        self._changed = asyncio.Condition()
        self.url = ""

    def queued(self, user: str, server: str, position: int, length: int, eta: tuple[float, float] | None) -> None:
        self.answers[(user, server)] = (
            200,
            {
                "pool": "gpu",
                "state": "queued",
                "user": user,
                "server": server,
                "position": position,
                "queueLength": length,
                "capacity": 8,
                "inUse": 8,
                "eta": {"known": True, "minSeconds": eta[0], "maxSeconds": eta[1]}
                if eta
                else {"known": False, "minSeconds": None, "maxSeconds": None, "method": NO_ESTIMATE},
                "refreshSeconds": 0.001,
            },
        )

    def admitted(self, user: str, server: str) -> None:
        self.answers[(user, server)] = (
            200,
            {
                "pool": "gpu",
                "state": "admitted",
                "user": user,
                "server": server,
                "position": None,
                "queueLength": 0,
                "capacity": 8,
                "inUse": 8,
                "eta": {"known": True, "minSeconds": 0, "maxSeconds": 0},
                "refreshSeconds": 0.001,
            },
        )

    def failing(self, user: str, server: str, status: int) -> None:
        self.answers[(user, server)] = (status, {"error": "store unavailable"})

    async def handle(self, request: web.Request) -> web.Response:
        user = request.match_info["user"]
        server = request.query.get("server", "")
        async with self._changed:
            self.requests.append({"user": user, "server": server, "auth": request.headers.get("Authorization", "")})
            self._changed.notify_all()
        status, body = self.answers.get((user, server), (404, {"error": "no server queued"}))
        return web.json_response(body, status=status)

    async def wait_for_requests(self, count: int) -> None:
        """Until ``count`` requests have arrived in total (no sleeping: woken by each request)."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.requests) >= count)


class FakeEventReflector:
    """Stands in for KubeSpawner's EventReflector: the events the watch would have delivered."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.first_load_future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.first_load_future.set_result(None)

    def add(
        self, pod: str, message: str, *, type_: str = "Normal", reason: str = "Scheduled", component: str = "scheduler"
    ) -> None:
        n = len(self.events)
        self.events.append(
            {
                "source": {"component": component},
                "reportingComponent": component,
                "metadata": {"uid": f"uid-{n}", "name": f"{pod}.{n}", "namespace": NAMESPACE},
                "involvedObject": {"kind": "Pod", "name": pod, "namespace": NAMESPACE},
                "reason": reason,
                "type": type_,
                "message": message,
                "lastTimestamp": f"2026-11-28T16:0{n}:00Z",
                "eventTime": None,
            }
        )


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def no_kube_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """KubeSpawner loads a kube config in __init__; there is no cluster here."""
    monkeypatch.setattr(kubespawner.spawner, "load_config", lambda **kwargs: None)


@pytest.fixture
async def reflector() -> AsyncIterator[FakeEventReflector]:
    fake = FakeEventReflector()
    key = ("events", NAMESPACE)
    KubeSpawner.reflectors[key] = fake
    yield fake
    KubeSpawner.reflectors.pop(key, None)


@pytest.fixture
async def queue_api(aiohttp_server: Callable[..., Awaitable[Any]]) -> FakeQueueApi:
    fake = FakeQueueApi()
    app = web.Application()
    app.router.add_get("/api/v1/users/{user}", fake.handle)
    server = await aiohttp_server(app)
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


@pytest.fixture
def hub_db() -> Iterator[Any]:
    """The hub's own database (in memory) with its default roles and OAuth client."""
    db = orm.new_session_factory("sqlite:///:memory:")()
    for role in roles.get_default_roles():
        roles.create_role(db, role)
    db.add(orm.OAuthClient(identifier="jupyterhub"))
    db.commit()
    yield db
    db.close()


def hub_config(**spawner: Any) -> Config:
    """What zero-to-jupyterhub renders: the seed profiles, start_timeout 300, our spawner settings."""
    config = Config()
    config.KubeSpawner.namespace = NAMESPACE
    config.KubeSpawner.start_timeout = 300
    config.KubeSpawner.profile_list = profile_list()
    config.QueueAwareKubeSpawner.queue_api_token = TOKEN
    config.QueueAwareKubeSpawner.queue_min_refresh_seconds = 0.0
    config.QueueAwareKubeSpawner.queue_max_refresh_seconds = 0.001
    for name, value in spawner.items():
        setattr(config.QueueAwareKubeSpawner, name, value)
    return config


MakeUser = Callable[..., User]


@pytest.fixture
def make_user(hub_db: Any, no_kube_config: None) -> MakeUser:
    def make(name: str = "alice", config: Config | None = None) -> User:
        orm_user = orm.User(name=name)
        hub_db.add(orm_user)
        hub_db.commit()
        roles.assign_default_roles(hub_db, orm_user)
        settings = {
            "spawner_class": QueueAwareKubeSpawner,
            "config": config or hub_config(),
            "hub": Hub(),
            "domain": "",
            "base_url": "/",
            "internal_ssl": False,
            "allow_named_servers": True,
            "statsd": types.SimpleNamespace(incr=lambda *a, **k: None),  # JupyterHub 5.x's spawn error path
        }
        return User(orm_user, settings)

    return make


def named_spawner(user: User, server: str) -> QueueAwareKubeSpawner:
    create = getattr(user, "get_or_create_spawner", None)  # JupyterHub 6; 5.x creates on first access
    spawner = create(server, server) if create is not None and server else user.spawners[server]
    assert isinstance(spawner, QueueAwareKubeSpawner)
    return spawner


async def prepared(user: User, profile: str, server: str = "") -> QueueAwareKubeSpawner:
    """A spawner the hub has prepared for start(): user_options set, pre-spawn hook run."""
    spawner = named_spawner(user, server)
    spawner.user_options = {"profile": profile}
    await spawner.run_pre_spawn_hook()
    spawner._start_future = asyncio.get_running_loop().create_future()  # start() is running
    return spawner


async def take(progress: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    return await anext(progress)


async def line(progress: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """The next event as the stock page shows it (without the ``gpu_queue`` data)."""
    return {k: v for k, v in (await anext(progress)).items() if k != "gpu_queue"}


def live_tasks() -> list[str]:
    return sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("gpu-queue-") and not t.done())


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("low", "high", "words"),
    [
        (300, 600, "about 5-10 min"),
        (240, 240, "about 4 min"),
        (10, 40, "less than a minute"),
        (0, 300, "under 5 min"),
        (3600, 7200, "about 1-2 h"),
        (900, 600, "about 15 min"),  # an inverted range still reads as one value
    ],
)
def test_format_eta_reads_like_the_spawn_page(low: float, high: float, words: str) -> None:
    assert format_eta(True, low, high) == words


def test_format_eta_words_match_the_controllers_events() -> None:
    """The live line and the controller's Events use the same words (hub.py cannot import the
    service's module: it must run in a hub image without gpu-queue installed)."""
    from webhook.eta import format_eta as controller_format_eta
    from webhook.models import Eta

    points = [0, 1, 30, 59, 60, 61, 119, 300, 599, 600, 1799, 3599, 3600, 3601, 5400, 7200, 30000]
    for low in points:
        for high in points:
            ours = format_eta(True, low, high)
            theirs = controller_format_eta(Eta(known=True, min_seconds=low, max_seconds=high))
            assert ours == theirs, (low, high)
    assert format_eta(False, None, None) == controller_format_eta(Eta(known=False))


def test_queue_message_names_position_length_and_eta() -> None:
    status = QueueStatus.from_json(
        {
            "state": "queued",
            "position": 2,
            "queueLength": 4,
            "eta": {"known": True, "minSeconds": 300, "maxSeconds": 600},
        }
    )
    assert queue_message(status) == "Waiting for a GPU slice: position 2 of 4, about 5-10 min"


def test_queue_message_without_enough_data_says_there_is_no_estimate() -> None:
    status = QueueStatus.from_json({"state": "queued", "position": 1, "queueLength": 1, "eta": {"known": False}})
    assert queue_message(status) == "Waiting for a GPU slice: position 1 of 1, wait time unknown"


def test_queue_message_is_silent_while_the_controller_has_not_seen_the_pod() -> None:
    assert queue_message(QueueStatus(state="unknown")) is None


@pytest.mark.parametrize(
    ("raw", "expected_start"),
    [
        ("0/3 nodes are available: 3 Insufficient nvidia.com/gpu.", "All GPU slices are in use right now"),
        (
            "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, "
            "2 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: 1 Preemption is not helpful for "
            "scheduling, 2 No preemption victims found for incoming pod.",
            "All GPU slices are in use right now",
        ),
        (
            "0/2 nodes are available: 2 Insufficient memory. preemption: 0/2 nodes are available: "
            "2 No preemption victims found for incoming pod.",
            "The cluster has no free memory for this profile",
        ),
        (
            "0/4 nodes are available: 4 Insufficient cpu, 4 Insufficient memory.",
            "The cluster has no free CPU and memory",
        ),
        (
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
            "No node is set up to run this profile",
        ),
        ("0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims.", "Your storage volume"),
    ],
)
def test_scheduler_text_is_rewritten_into_plain_words(raw: str, expected_start: str) -> None:
    friendly = friendly_scheduler_message(raw)
    assert friendly is not None
    assert friendly.startswith(expected_start)
    assert "nodes are available" not in friendly


def test_messages_that_are_not_scheduling_failures_are_left_alone() -> None:
    assert friendly_scheduler_message("Successfully assigned jhub/jupyter-alice to gpu-1") is None
    assert friendly_scheduler_message('Pulling image "quay.io/jupyter/pytorch-notebook"') is None


# --------------------------------------------------------------------------- which spawns queue


async def test_gpu_profile_is_queued_and_cpu_profile_is_not(make_user: MakeUser) -> None:
    user = make_user()
    spawner = named_spawner(user, "")
    spawner.user_options = {"profile": "gpu-enabled"}
    assert await spawner.is_queued_spawn()
    spawner.user_options = {"profile": "cpu-only"}
    assert not await spawner.is_queued_spawn()
    spawner.user_options = {}  # the default profile (cpu-only)
    assert not await spawner.is_queued_spawn()


async def test_the_waiting_rooms_fallback_is_the_configured_profile_with_its_name_or_label(
    make_user: MakeUser,
) -> None:
    spawner = named_spawner(make_user("alice", hub_config(queue_fallback_profile="cpu-only")), "")
    assert await spawner.queue_fallback() == {"slug": "cpu-only", "label": "CPU Only - Data Exploration"}
    labelled = hub_config(queue_fallback_profile="cpu-only", queue_fallback_label="a CPU server")
    spawner = named_spawner(make_user("bob", labelled), "")
    assert await spawner.queue_fallback() == {"slug": "cpu-only", "label": "a CPU server"}


async def test_no_fallback_is_offered_when_unset_unknown_or_itself_queued(make_user: MakeUser) -> None:
    assert await named_spawner(make_user("alice"), "").queue_fallback() is None
    unknown = hub_config(queue_fallback_profile="no-such-profile")
    assert await named_spawner(make_user("bob", unknown), "").queue_fallback() is None
    queued = hub_config(queue_fallback_profile="gpu-enabled")
    assert await named_spawner(make_user("carol", queued), "").queue_fallback() is None, (
        "a profile that waits in the queue is no way out of the queue"
    )


async def test_queued_profiles_setting_selects_by_slug_or_profile_label(make_user: MakeUser) -> None:
    user = make_user(config=hub_config(queued_profiles=["cpu-only"]))
    spawner = named_spawner(user, "")
    spawner.user_options = {"profile": "cpu-only"}
    assert await spawner.is_queued_spawn()
    spawner.user_options = {"profile": "gpu-enabled"}
    assert not await spawner.is_queued_spawn()


async def test_a_profile_option_choice_that_adds_a_gpu_makes_the_spawn_queue(make_user: MakeUser) -> None:
    profiles = profile_list()
    profiles[0]["profile_options"] = {
        "accelerator": {
            "display_name": "Accelerator",
            "choices": {
                "none": {"display_name": "None", "default": True, "kubespawner_override": {}},
                "gpu": {
                    "display_name": "One GPU slice",
                    "kubespawner_override": {"extra_resource_limits": {"nvidia.com/gpu": "1"}},
                },
            },
        }
    }
    config = hub_config()
    config.KubeSpawner.profile_list = profiles
    spawner = named_spawner(make_user(config=config), "")
    spawner.user_options = {"profile": "cpu-only", "accelerator": "gpu"}
    assert await spawner.is_queued_spawn()
    spawner.user_options = {"profile": "cpu-only"}
    assert not await spawner.is_queued_spawn()


# --------------------------------------------------------------------------- start timeout


async def spawn_and_capture_timeout(
    user: User, monkeypatch: pytest.MonkeyPatch, profile: str, server: str = ""
) -> tuple[float, int]:
    """Run the hub's real ``User.spawn`` and return (the timeout the hub gave its wait_for around
    start(), start_timeout as KubeSpawner's inner pod wait sees it after the profile is loaded)."""
    spawner = named_spawner(user, server)
    inner: list[int] = []

    async def start_body() -> str:  # KubeSpawner._start minus the pod: profile loading is real
        await spawner.load_user_options()
        inner.append(spawner.start_timeout)
        return "http://127.0.0.1:8888"

    spawner._start = start_body
    outer: list[float] = []
    real_wait_for = asyncio.wait_for

    async def recording_wait_for(fut: Any, timeout: float | None) -> Any:
        if fut is spawner._start_future:
            outer.append(timeout if timeout is not None else -1.0)
        return await real_wait_for(fut, timeout)

    async def no_wait_up(spawner: Any) -> None:  # the hub's HTTP check of the running server
        return None

    monkeypatch.setattr(jupyterhub.user.asyncio, "wait_for", recording_wait_for)
    monkeypatch.setattr(user, "_wait_up", no_wait_up)
    try:
        await user.spawn(server, options={"profile": profile})
    finally:
        monkeypatch.setattr(jupyterhub.user.asyncio, "wait_for", real_wait_for)
        spawner.stop_polling()
    assert len(outer) == 1, "the hub wraps start() in exactly one wait_for"
    return outer[0], inner[0]


async def test_hub_waits_hours_for_a_gpu_spawn_but_keeps_start_timeout_for_cpu(
    make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = make_user()
    assert await spawn_and_capture_timeout(user, monkeypatch, "gpu-enabled") == (3 * 3600, 3 * 3600)
    # the same Spawner object serves the next spawn (the hub keeps it after a failed spawn, and the
    # GPU profile's overrides stay merged into it): CPU must not inherit 3 h
    assert await spawn_and_capture_timeout(user, monkeypatch, "cpu-only") == (300, 300)


async def test_a_gpu_limit_from_an_earlier_spawn_does_not_ride_along_on_a_cpu_spawn(
    make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = make_user()
    await spawn_and_capture_timeout(user, monkeypatch, "gpu-enabled")
    spawner = named_spawner(user, "")
    assert spawner.extra_resource_limits == {"nvidia.com/gpu": "1"}  # KubeSpawner merged the override in
    await spawn_and_capture_timeout(user, monkeypatch, "cpu-only")
    assert "nvidia.com/gpu" not in spawner.extra_resource_limits


async def test_a_profile_start_timeout_override_cannot_shorten_the_queued_wait(
    make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = hub_config(queued_start_timeout=7200)
    profiles = profile_list()
    profiles[1]["kubespawner_override"]["start_timeout"] = 600
    config.KubeSpawner.profile_list = profiles
    user = make_user(config=config)
    assert await spawn_and_capture_timeout(user, monkeypatch, "gpu-enabled") == (7200, 7200)


# --------------------------------------------------------------------------- live progress


async def test_progress_shows_the_live_position_and_follows_it(
    make_user: MakeUser, queue_api: FakeQueueApi, reflector: FakeEventReflector
) -> None:
    user = make_user(config=hub_config(queue_api_url=queue_api.url))
    queue_api.queued("alice", "", 2, 4, (300, 600))
    spawner = await prepared(user, "gpu-enabled")
    progress = spawner.progress()
    try:
        assert await line(progress) == {"message": "Waiting for a GPU slice: position 2 of 4, about 5-10 min"}
        queue_api.queued("alice", "", 1, 3, (60, 180))
        assert await line(progress) == {"message": "Waiting for a GPU slice: position 1 of 3, about 1-3 min"}
    finally:
        await progress.aclose()
    assert queue_api.requests[0] == {"user": "alice", "server": "", "auth": f"Bearer {TOKEN}"}


async def test_progress_yields_only_changes(
    make_user: MakeUser, queue_api: FakeQueueApi, reflector: FakeEventReflector
) -> None:
    user = make_user(config=hub_config(queue_api_url=queue_api.url))
    queue_api.queued("alice", "", 3, 3, None)
    spawner = await prepared(user, "gpu-enabled")
    progress = spawner.progress()
    try:
        first = await line(progress)
        seen = len(queue_api.requests)
        await queue_api.wait_for_requests(seen + 5)  # five more identical answers arrive
        queue_api.queued("alice", "", 2, 3, None)
        second = await line(progress)
    finally:
        await progress.aclose()
    assert first == {"message": "Waiting for a GPU slice: position 3 of 3, wait time unknown"}
    assert second == {"message": "Waiting for a GPU slice: position 2 of 3, wait time unknown"}


async def test_each_queue_line_carries_its_figures_as_data_for_a_page_template(
    make_user: MakeUser, queue_api: FakeQueueApi, reflector: FakeEventReflector
) -> None:
    """``gpu_queue`` has the API's figures and nothing else: place, length, slices, the wait (its
    words as on the line), that the place is kept, and how far the place moved up since first seen."""
    user = make_user(config=hub_config(queue_api_url=queue_api.url))
    queue_api.queued("alice", "", 3, 5, (300, 600))
    spawner = await prepared(user, "gpu-enabled")
    progress = spawner.progress()
    try:
        first = await take(progress)
        queue_api.queued("alice", "", 1, 3, None)
        second = await take(progress)
        queue_api.admitted("alice", "")
        granted = await take(progress)
    finally:
        await progress.aclose()
    assert first["gpu_queue"] == {
        "state": "queued",
        "pool": "gpu",
        "position": 3,
        "queueLength": 5,
        "capacity": 8,
        "inUse": 8,
        "eta": {"known": True, "minSeconds": 300, "maxSeconds": 600, "text": "about 5-10 min", "why": ""},
        "keepsPlace": True,
        "heldBack": None,
        "stopAt": None,
        "priorityAhead": None,
        "joinedAhead": None,
        "movedUp": {"places": 0, "seconds": 0},
    }
    assert second["message"] == "Waiting for a GPU slice: position 1 of 3, wait time unknown"
    assert second["gpu_queue"]["eta"] == {
        "known": False,
        "minSeconds": None,
        "maxSeconds": None,
        "text": "wait time unknown",
        "why": NO_ESTIMATE,
    }
    assert second["gpu_queue"]["movedUp"]["places"] == 2
    assert granted["gpu_queue"]["state"] == "admitted" and granted["gpu_queue"]["keepsPlace"] is False
    assert "movedUp" not in granted["gpu_queue"]


async def test_the_controllers_grant_event_tells_the_page_at_once_without_waiting_for_a_poll(
    make_user: MakeUser, queue_api: FakeQueueApi, reflector: FakeEventReflector
) -> None:
    user = make_user(config=hub_config(queue_api_url=queue_api.url))
    queue_api.queued("alice", "", 1, 1, (60, 120))
    spawner = await prepared(user, "gpu-enabled")
    progress = spawner.progress()
    try:
        await take(progress)
        reflector.add(spawner.pod_name, "GPU slice granted after 2m5s", reason="SliceGranted", component="gpu-queue")
        told = await take(progress)  # the API still says "queued": the Event is what tells
    finally:
        await progress.aclose()
    assert told["message"] == "GPU slice granted: starting your server"
    assert told["gpu_queue"]["state"] == "admitted" and told["gpu_queue"]["capacity"] == 8
    # KubeSpawner's "taking longer than expected" now counts from this grant, not from the queue
    stock = {"message": spawner.slow_spawn_message.format(seconds=80)}
    assert spawner._present(stock, waiting=False) is None, "under a minute since the grant: not slow"


def test_moved_up_counts_the_places_gained_within_the_window_only() -> None:
    now = [0.0]
    history = PlaceHistory(window=600, clock=lambda: now[0])
    assert history.moved() == (0, 0.0)
    history.note(9)
    now[0] = 120
    history.note(7)
    assert history.moved() == (2, 120)  # up 2 in the 2 minutes since it was first seen
    now[0] = 700
    history.note(6)
    assert history.moved() == (3, 600)  # the window starts at 100 s, when it still stood at 9
    now[0] = 1400
    history.note(6)
    assert history.moved() == (0, 600)  # no move in the last 10 minutes
    history.note(8)  # an admin moved someone ahead: down is not "up"
    assert history.moved() == (0, 600)


async def test_a_queued_user_is_told_the_queue_cannot_be_read_and_shown_no_figure(
    make_user: MakeUser, queue_api: FakeQueueApi, reflector: FakeEventReflector
) -> None:
    user = make_user(config=hub_config(queue_api_url=queue_api.url))
    queue_api.queued("alice", "", 2, 4, (300, 600))
    spawner = await prepared(user, "gpu-enabled")
    progress = spawner.progress()
    try:
        await take(progress)
        queue_api.failing("alice", "", 503)
        told = await take(progress)
    finally:
        await progress.aclose()
    assert told["message"] == unreadable_message()
    assert told["gpu_queue"] == {"state": "unknown", "reason": "the queue API does not answer", "keepsPlace": True}


async def test_named_server_position_is_asked_for_that_server(
    make_user: MakeUser, queue_api: FakeQueueApi, reflector: FakeEventReflector
) -> None:
    user = make_user(name="bob.smith@example.org", config=hub_config(queue_api_url=queue_api.url))
    queue_api.queued("bob.smith@example.org", "training", 1, 1, (60, 120))
    spawner = await prepared(user, "gpu-enabled", server="training")
    progress = spawner.progress()
    try:
        assert await line(progress) == {"message": "Waiting for a GPU slice: position 1 of 1, about 1-2 min"}
    finally:
        await progress.aclose()
    # (the one-GPU-server check asked about the default server first; the progress asks about this one)
    assert (queue_api.requests[-1]["user"], queue_api.requests[-1]["server"]) == ("bob.smith@example.org", "training")


async def test_bar_stays_still_while_queued_and_moves_again_once_granted(
    make_user: MakeUser, queue_api: FakeQueueApi, reflector: FakeEventReflector
) -> None:
    user = make_user(config=hub_config(queue_api_url=queue_api.url))
    queue_api.queued("alice", "", 2, 2, (300, 600))
    spawner = await prepared(user, "gpu-enabled")
    pod = spawner.pod_name
    reflector.add(
        pod, "Waiting for a GPU slice: position 3 of 3, about 10-20 min", reason="Queued", component="gpu-queue"
    )
    reflector.add(
        pod,
        "Welcome back: your place in the GPU queue was kept (first asked 2m ago)",
        reason="PlaceKept",
        component="gpu-queue",
    )
    progress = spawner.progress()
    try:
        assert await line(progress) == {"message": "Waiting for a GPU slice: position 2 of 2, about 5-10 min"}
        held_event = await take(progress)
        # the controller's stale position Event is hidden behind the live line; the other Event
        # shows, without a progress value, so the bar does not run ahead of the queue
        assert held_event["message"].endswith("your place in the GPU queue was kept (first asked 2m ago)")
        assert "progress" not in held_event
        queue_api.admitted("alice", "")
        assert await line(progress) == {"message": "GPU slice granted: starting your server"}
        reflector.add(pod, f"Successfully assigned {NAMESPACE}/{pod} to gpu-node-1")
        scheduled = await take(progress)
        assert scheduled["message"].endswith(f"Successfully assigned {NAMESPACE}/{pod} to gpu-node-1")
        assert isinstance(scheduled["progress"], int) and scheduled["progress"] > 0
    finally:
        await progress.aclose()


async def test_a_pod_the_queue_has_not_indexed_yet_holds_the_bar_until_its_position_is_known(
    make_user: MakeUser, queue_api: FakeQueueApi, reflector: FakeEventReflector
) -> None:
    """The progress stream opens right after the pod is created: the queue API has not seen it yet
    (404). The page says it is joining the queue and keeps the stock events (and the bar) back until
    the position arrives, instead of letting the bar run to 30 % and never come back."""
    user = make_user(config=hub_config(queue_api_url=queue_api.url))
    spawner = await prepared(user, "gpu-enabled")
    reflector.add(spawner.pod_name, "0/2 nodes are available: 2 node(s) had untolerated taint", type_="Warning")
    progress = spawner.progress()
    try:
        assert await line(progress) == {"message": "Joining the queue for a GPU slice..."}
        await queue_api.wait_for_requests(len(queue_api.requests) + 3)  # still unknown: nothing more shown
        queue_api.queued("alice", "", 3, 3, None)
        assert await line(progress) == {"message": "Waiting for a GPU slice: position 3 of 3, wait time unknown"}
        held = await take(progress)
        assert "progress" not in held, "the bar stays where it was while the user waits"
    finally:
        await progress.aclose()


async def test_a_pod_the_queue_never_learns_of_gets_the_stock_progress_after_the_grace(
    make_user: MakeUser, queue_api: FakeQueueApi, reflector: FakeEventReflector
) -> None:
    user = make_user(config=hub_config(queue_api_url=queue_api.url, queue_not_indexed_grace_seconds=0.0))
    spawner = await prepared(user, "gpu-enabled")
    reflector.add(spawner.pod_name, f"Successfully assigned {NAMESPACE}/{spawner.pod_name} to node-1")
    progress = spawner.progress()
    try:
        stock = await take(progress)
    finally:
        await progress.aclose()
    assert stock["message"].endswith("to node-1") and stock["progress"] > 0


@pytest.mark.parametrize(("granted_ago", "shown"), [(5.0, None), (75.0, 75)])
async def test_the_slow_spawn_message_counts_from_the_grant_not_from_the_queue(
    make_user: MakeUser, granted_ago: float, shown: int | None
) -> None:
    """KubeSpawner's "taking longer than expected ... N seconds" counts from the spawn's start,
    queue included (it said 80 seconds right after a grant); it counts from the grant here, and
    only once the server is slow by KubeSpawner's own threshold (60 s)."""
    user = make_user()
    spawner = await prepared(user, "gpu-enabled")
    granted = datetime.now(UTC) - timedelta(seconds=granted_ago)
    spawner._note_grant(QueueStatus(state="admitted", granted_at=granted))
    stock = {"message": spawner.slow_spawn_message.format(seconds=80 + int(granted_ago))}
    presented = spawner._present(stock, waiting=False)
    if shown is None:
        assert presented is None
    else:
        assert presented == {"message": spawner.slow_spawn_message.format(seconds=shown)}


def test_the_grant_time_is_read_from_the_api_answer() -> None:
    status = QueueStatus.from_json({"state": "admitted", "grantedAt": "2026-12-01T12:00:00.5Z"})
    assert status.granted_at == datetime(2026, 12, 1, 12, 0, 0, 500000, tzinfo=UTC)
    assert not status.not_indexed_yet
    assert QueueStatus.from_json({"state": "pending"}).not_indexed_yet


async def test_closing_the_progress_generator_cancels_the_poll(
    make_user: MakeUser, queue_api: FakeQueueApi, reflector: FakeEventReflector
) -> None:
    user = make_user(config=hub_config(queue_api_url=queue_api.url))
    queue_api.queued("alice", "", 5, 5, None)
    spawner = await prepared(user, "gpu-enabled")
    progress = spawner.progress()
    await take(progress)
    assert live_tasks(), "the poll runs while a tab is open"
    await progress.aclose()  # the browser tab went away
    assert live_tasks() == []


async def test_progress_ends_when_start_finishes(
    make_user: MakeUser, queue_api: FakeQueueApi, reflector: FakeEventReflector
) -> None:
    user = make_user(config=hub_config(queue_api_url=queue_api.url))
    queue_api.queued("alice", "", 1, 1, (60, 60))
    spawner = await prepared(user, "gpu-enabled")
    progress = spawner.progress()
    await take(progress)
    spawner._start_future.set_result("http://10.0.0.7:8888")
    with pytest.raises(StopAsyncIteration):
        while True:
            await take(progress)
    assert live_tasks() == []


async def test_cpu_spawn_shows_stock_progress_without_asking_the_queue(
    make_user: MakeUser, queue_api: FakeQueueApi, reflector: FakeEventReflector
) -> None:
    user = make_user(config=hub_config(queue_api_url=queue_api.url))
    spawner = await prepared(user, "cpu-only")
    reflector.add(spawner.pod_name, f"Successfully assigned {NAMESPACE}/{spawner.pod_name} to cpu-1")
    progress = spawner.progress()
    try:
        event = await take(progress)
    finally:
        await progress.aclose()
    assert event["progress"] > 0 and event["message"].endswith("to cpu-1")
    assert queue_api.requests == []


async def test_raw_insufficient_gpu_text_is_replaced_on_the_spawn_page(
    make_user: MakeUser, reflector: FakeEventReflector
) -> None:
    user = make_user()  # no queue API at all: stock behaviour plus the rewrite
    spawner = await prepared(user, "gpu-enabled")
    raw = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    reflector.add(spawner.pod_name, raw, type_="Warning", reason="FailedScheduling")
    progress = spawner.progress()
    try:
        event = await take(progress)
    finally:
        await progress.aclose()
    assert event["message"].startswith("2026-11-28T16:00:00Z [Warning] All GPU slices are in use right now")
    assert event["raw_event"]["message"] == raw  # kept for admins


# --------------------------------------------------------------------------- API outages


async def test_api_outage_falls_back_to_stock_progress_with_one_warning_and_no_token(
    make_user: MakeUser, queue_api: FakeQueueApi, reflector: FakeEventReflector, caplog: pytest.LogCaptureFixture
) -> None:
    user = make_user(config=hub_config(queue_api_url=queue_api.url))
    queue_api.failing("alice", "", 503)
    spawner = await prepared(user, "gpu-enabled")
    reflector.add(spawner.pod_name, f"Successfully assigned {NAMESPACE}/{spawner.pod_name} to gpu-1")
    caplog.set_level(logging.DEBUG)
    progress = spawner.progress()
    try:
        event = await take(progress)
        await queue_api.wait_for_requests(5)  # it keeps trying, quietly
    finally:
        await progress.aclose()
    assert event["progress"] > 0 and event["message"].endswith("to gpu-1")  # the stock event, bar moving
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "gpu-queue API" in r.getMessage()]
    assert len(warnings) == 1
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


async def test_unreachable_api_raises_a_queue_api_error_not_a_crash(make_user: MakeUser) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    user = make_user(config=hub_config(queue_api_url=f"http://127.0.0.1:{closed_port}"))
    spawner = named_spawner(user, "")
    with pytest.raises(QueueApiError) as caught:
        await spawner.fetch_queue_status()
    assert not caught.value.permanent
    assert TOKEN not in str(caught.value)


async def test_rejected_token_stops_polling_after_one_warning(
    make_user: MakeUser, queue_api: FakeQueueApi, reflector: FakeEventReflector, caplog: pytest.LogCaptureFixture
) -> None:
    user = make_user(config=hub_config(queue_api_url=queue_api.url))
    queue_api.failing("alice", "", 401)
    spawner = await prepared(user, "gpu-enabled")
    reflector.add(spawner.pod_name, "Started container notebook")
    progress = spawner.progress()
    try:
        event = await take(progress)
        assert event["message"].endswith("Started container notebook")
        assert live_tasks() == [f"gpu-queue-progress:{spawner._log_name}"]  # the poll has ended
    finally:
        await progress.aclose()
    assert len(queue_api.requests) == 1
    assert len([r for r in caplog.records if "rejected the token" in r.getMessage()]) == 1


async def test_api_behind_tls_is_verified_with_the_configured_ca(
    make_user: MakeUser, aiohttp_server: Callable[..., Awaitable[Any]], tmp_path: Path
) -> None:
    ca = make_ca()
    serving = make_serving_cert(ca, [], ips=["127.0.0.1"])
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "tls.crt").write_bytes(serving.cert_pem)
    (tmp_path / "tls.key").write_bytes(serving.key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    fake = FakeQueueApi()
    fake.queued("alice", "", 1, 2, None)
    app = web.Application()
    app.router.add_get("/api/v1/users/{user}", fake.handle)
    server = await aiohttp_server(app, ssl=context)
    url = f"https://127.0.0.1:{server.port}"

    trusting = named_spawner(
        make_user(config=hub_config(queue_api_url=url, queue_ca_file=str(tmp_path / "ca.crt"))), ""
    )
    assert (await trusting.fetch_queue_status()).position == 1
    untrusting = named_spawner(make_user(name="bob", config=hub_config(queue_api_url=url)), "")
    with pytest.raises(QueueApiError):
        await untrusting.fetch_queue_status()  # system CAs do not know the private CA


# --------------------------------------------------------------------------- one GPU server per user


async def _first_server_waiting(user: User) -> tuple[asyncio.Task[Any], asyncio.Event]:
    """The user's default server is spawning with the GPU profile; its pod waits in the queue."""
    first = named_spawner(user, "")
    started, release = asyncio.Event(), asyncio.Event()

    async def queued_start() -> str:
        await first.load_user_options()
        started.set()
        await release.wait()
        return "http://127.0.0.1:8888"

    first._start = queued_start
    spawn = asyncio.create_task(user.spawn("", options={"profile": "gpu-enabled"}))
    await started.wait()
    return spawn, release


async def test_second_gpu_server_is_refused_while_the_first_waits(
    make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = make_user()
    spawn, _ = await _first_server_waiting(user)
    first = named_spawner(user, "")
    second = named_spawner(user, "training")

    async def no_pod_to_delete(now: bool = False) -> None:
        return None

    async def no_pod_to_poll() -> int:  # JupyterHub 5.x polls a failed spawn's server before stopping it
        return 0

    monkeypatch.setattr(second, "stop", no_pod_to_delete)
    monkeypatch.setattr(second, "poll", no_pod_to_poll)
    try:
        with pytest.raises(tornado_web.HTTPError) as refused:
            await user.spawn("training", options={"profile": "gpu-enabled"})
    finally:
        spawn.cancel()
        first._start_future.cancel()
        await asyncio.gather(spawn, return_exceptions=True)
    assert refused.value.status_code == 409  # a 4xx: the hub does not count it towards consecutiveFailureLimit
    message = getattr(refused.value, "jupyterhub_message", None) or str(refused.value)
    assert "Your default server is waiting for a GPU slice" in message
    assert "one GPU server at a time" in message


async def test_the_spawn_form_refuses_a_second_gpu_server_before_any_spawn_starts(make_user: MakeUser) -> None:
    """The form's options are checked when the hub reads them, before it starts a spawn: the hub shows
    the form again with the message, and no hub version counts a refusal that never spawned."""
    user = make_user()
    spawn, _ = await _first_server_waiting(user)
    second = named_spawner(user, "training")
    try:
        with pytest.raises(tornado_web.HTTPError) as refused:
            await second.run_options_from_form({"profile": ["gpu-enabled"]})
        with pytest.raises(tornado_web.HTTPError):
            await maybe_future(second.options_from_query({"profile": ["gpu-enabled"]}))
        cpu = await second.run_options_from_form({"profile": ["cpu-only"]})
    finally:
        spawn.cancel()
        named_spawner(user, "")._start_future.cancel()
        await asyncio.gather(spawn, return_exceptions=True)
    assert refused.value.status_code == 409
    assert "Your default server is waiting for a GPU slice" in (
        getattr(refused.value, "jupyterhub_message", None) or str(refused.value)
    )
    assert cpu["profile"] == "cpu-only", "a CPU-only server next to it is not refused"
    assert not second.active, "nothing was spawned"


class SpawnExceptionOf6(tornado_web.HTTPError):
    """JupyterHub 6's SpawnException, for the 6.x case where the installed hub is 5.x."""

    def __init__(self, message: str, *, reason: str, status_code: int) -> None:
        super().__init__(status_code, reason=reason)
        self.jupyterhub_message = message


class FakeHandler:
    """The request handler the hub hands a spawn (``spawner.handler``): its settings hold the
    hub's consecutive failure count."""

    def __init__(self, failures: int) -> None:
        self.settings: dict[str, Any] = {"failure_count": failures}


@pytest.mark.parametrize("hub", ["5.x", "6.x"])
async def test_a_refusal_inside_the_spawn_is_not_a_failure_the_hub_counts(
    make_user: MakeUser, monkeypatch: pytest.MonkeyPatch, hub: str
) -> None:
    """The REST API's spawns reach the policy only inside the spawn. JupyterHub 5.x then adds one to
    its failure count (and exits at consecutive_failure_limit): the refusal takes that one off first.
    JupyterHub 6 counts no 4xx: the count is left alone."""
    import webhook.hub as hub_module

    if hub == "5.x":
        monkeypatch.setattr(hub_module, "_SpawnException", None)
    else:
        monkeypatch.setattr(hub_module, "_SpawnException", hub_module._SpawnException or SpawnExceptionOf6)
    user = make_user()
    spawn, _ = await _first_server_waiting(user)
    second = named_spawner(user, "training")
    handler = FakeHandler(failures=2)
    second.handler = handler
    second.user_options = {"profile": "gpu-enabled"}
    try:
        with pytest.raises(tornado_web.HTTPError):
            await second.run_pre_spawn_hook()
    finally:
        spawn.cancel()
        named_spawner(user, "")._start_future.cancel()
        await asyncio.gather(spawn, return_exceptions=True)
    assert handler.settings["failure_count"] == (1 if hub == "5.x" else 2)


def pod_json(name: str, **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations},
        "status": {"phase": "Pending", "podIP": None, "containerStatuses": []},
    }


@pytest.mark.parametrize(
    ("annotations", "words"),
    [
        ({"gpu-queue.io/admitted-at": "2026-12-01T12:00:00Z", "gpu-queue.io/released": "stuck"},
         "could not start, so its GPU slice went to the next user (GPU slice granted 10m00s ago but its start "
         "keeps failing (ImagePullBackOff: Back-off pulling image))"),
        ({"gpu-queue.io/removed": "admin"}, "An administrator removed your request from the GPU queue"),
        ({}, "pod was deleted before it started"),
    ],
)  # fmt: skip
async def test_a_queued_spawn_whose_pod_went_away_ends_at_once_and_says_why(
    make_user: MakeUser, reflector: FakeEventReflector, annotations: dict[str, str], words: str
) -> None:
    """KubeSpawner polls ``is_pod_running`` until ``start_timeout``, three hours for a queued spawn:
    a pod gpu-queue released as stuck (or an admin removed) would keep the user on the page that
    long. Once the pod it saw is gone, the spawn ends with why."""
    user = make_user()
    spawner = await prepared(user, "gpu-enabled")
    reflector.add(
        spawner.pod_name,
        "GPU slice granted 10m00s ago but its start keeps failing (ImagePullBackOff: Back-off pulling image)",
        type_="Warning",
        reason="StuckAdmission",
        component="gpu-queue",
    )
    assert spawner.is_pod_running(None) is False, "a pod not seen yet is not gone"
    assert spawner.is_pod_running(pod_json(spawner.pod_name, **annotations)) is False
    with pytest.raises(RuntimeError) as gone:
        spawner.is_pod_running(None)
    assert words in str(gone.value)


async def test_a_cpu_spawn_keeps_kubespawners_own_wait(make_user: MakeUser) -> None:
    user = make_user()
    spawner = await prepared(user, "cpu-only")
    assert spawner.is_pod_running(pod_json(spawner.pod_name)) is False
    assert spawner.is_pod_running(None) is False


async def test_cpu_server_next_to_a_gpu_server_is_allowed(make_user: MakeUser) -> None:
    user = make_user()
    first = named_spawner(user, "")
    first.user_options = {"profile": "gpu-enabled"}
    first._spawn_pending = True  # as the hub's spawn handler marks a spawn in progress
    second = named_spawner(user, "explore")
    second.user_options = {"profile": "cpu-only"}
    await second.run_pre_spawn_hook()  # no exception
    assert second.start_timeout == 300


async def test_policy_can_be_switched_off(make_user: MakeUser) -> None:
    user = make_user(config=hub_config(one_gpu_server_per_user=False))
    first = named_spawner(user, "")
    first.user_options = {"profile": "gpu-enabled"}
    first._spawn_pending = True
    second = named_spawner(user, "training")
    second.user_options = {"profile": "gpu-enabled"}
    await second.run_pre_spawn_hook()
    assert second.start_timeout == 3 * 3600


async def test_a_slice_the_hub_forgot_but_the_queue_knows_also_counts(
    make_user: MakeUser, queue_api: FakeQueueApi
) -> None:
    # The hub restarted while the default server's pod was queued: the hub thinks it is stopped.
    user = make_user(config=hub_config(queue_api_url=queue_api.url))
    assert "" not in user.spawners  # not even loaded, only in the hub's database
    queue_api.queued("alice", "", 2, 6, (600, 900))
    second = named_spawner(user, "training")
    second.user_options = {"profile": "gpu-enabled"}
    with pytest.raises(tornado_web.HTTPError) as refused:
        await second.run_pre_spawn_hook()
    message = getattr(refused.value, "jupyterhub_message", None) or str(refused.value)
    assert "waiting for a GPU slice (position 2 of 6)" in message


async def test_queue_outage_does_not_block_a_spawn_through_the_policy(
    make_user: MakeUser, queue_api: FakeQueueApi
) -> None:
    user = make_user(config=hub_config(queue_api_url=queue_api.url))
    named_spawner(user, "")
    queue_api.failing("alice", "", 503)
    second = named_spawner(user, "training")
    second.user_options = {"profile": "gpu-enabled"}
    await second.run_pre_spawn_hook()
    assert second.start_timeout == 3 * 3600


async def test_the_admins_own_pre_spawn_hook_still_runs(make_user: MakeUser) -> None:
    seen: list[int] = []
    config = hub_config()
    config.KubeSpawner.pre_spawn_hook = lambda spawner: seen.append(spawner.start_timeout)
    spawner = await prepared(make_user(config=config), "gpu-enabled")
    assert seen == [3 * 3600]  # and it already sees the queued timeout
    assert spawner.start_timeout == 3 * 3600


# --------------------------------------------------------------------------- the documented setup

ROOT = Path(__file__).resolve().parents[2]
HUB_IMAGE_PACKAGES = {"jupyterhub", "kubespawner", "tornado", "traitlets"}


def test_hub_module_imports_only_what_the_hub_image_ships() -> None:
    """docs/install.md mounts webhook/hub.py into the hub as a single file: it must not import the
    rest of this package, nor anything the zero-to-jupyterhub hub image lacks."""
    tree = ast.parse((ROOT / "webhook" / "hub.py").read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the file is mounted on its own"
            imported.add((node.module or "").split(".")[0])
    outside = {name for name in imported if name not in sys.stdlib_module_names and name != "__future__"}
    assert outside <= HUB_IMAGE_PACKAGES, outside - HUB_IMAGE_PACKAGES


def _bytes_of(jupyterhub_size: str | int | float) -> float:
    """JupyterHub's byte spec: ``8G`` is 8 x 1024**3 (what KubeSpawner sends for mem_limit)."""
    from jupyterhub.traitlets import ByteSpecification

    return float(ByteSpecification().validate(None, jupyterhub_size))


async def test_z2jh_values_example_wires_the_spawner_and_matches_the_shipped_profiles(
    monkeypatch: pytest.MonkeyPatch, no_kube_config: None
) -> None:
    values = yaml.safe_load((ROOT / "docs" / "z2jh-values.yaml").read_text())
    hub = values["hub"]
    # every documented setting is a real configurable trait
    for name in hub["config"]["QueueAwareKubeSpawner"]:
        assert name in QueueAwareKubeSpawner.class_trait_names(config=True), name
    for name in hub["config"]["KubeSpawner"]:
        assert name in KubeSpawner.class_trait_names(config=True), name
    # the extraConfig snippet runs as z2jh runs it: with z2jh's module and the mounted file importable
    assert hub["extraFiles"]["gpu-queue-hub"]["mountPath"] == "/usr/local/etc/jupyterhub/gpu_queue_hub.py"
    z2jh = types.ModuleType("z2jh")
    z2jh.get_secret_value = {"hub.services.gpu-queue.apiToken": TOKEN}.__getitem__  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "z2jh", z2jh)
    monkeypatch.setitem(sys.modules, "gpu_queue_hub", webhook.hub)
    c = Config()
    exec(compile(hub["extraConfig"]["gpu-queue"], "extraConfig", "exec"), {"c": c})
    assert c.JupyterHub.spawner_class is QueueAwareKubeSpawner
    assert c.QueueAwareKubeSpawner.queue_api_token == TOKEN
    assert "gpu-queue" in hub["services"]
    # the profiles' labels and numbers agree with gpu-queue's shipped configuration
    shipped = load_config(env={})
    profiles = values["singleuser"]["profileList"]
    for profile in profiles:
        override = profile["kubespawner_override"]
        name = override["extra_labels"]["gpu-queue.io/profile"]
        expected = shipped.profiles[name]
        assert parse_quantity(str(override["cpu_limit"])) == parse_quantity(expected.limits["cpu"])
        assert parse_quantity(str(override["cpu_guarantee"])) == parse_quantity(expected.requests["cpu"])
        assert _bytes_of(override["mem_limit"]) == parse_quantity(expected.limits["memory"])
        assert _bytes_of(override["mem_guarantee"]) == parse_quantity(expected.requests["memory"])
        gpus = override.get("extra_resource_limits", {}).get("nvidia.com/gpu")
        assert (gpus is not None) == (expected.pool is not None)
    assert values["cull"]["timeout"] == shipped.pools["gpu"].cull_timeout_seconds
    # and the spawner, configured that way, queues exactly the GPU profile
    config = hub_config()
    config.KubeSpawner.profile_list = profiles
    spawner = QueueAwareKubeSpawner(_mock=True, config=config)
    queued: dict[str, bool] = {}
    for profile in profiles:
        spawner.user_options = {"profile": profile["slug"]}
        queued[profile["slug"]] = await spawner.is_queued_spawn()
    assert queued == {"cpu-only": False, "gpu-enabled": True}


async def test_the_pod_carries_the_users_hub_groups_for_gpu_queues_group_limits(
    make_user: MakeUser, hub_db: Any
) -> None:
    user = make_user("ann")
    for name in ("students", "course-a"):
        group = orm.Group(name=name)
        hub_db.add(group)
        user.orm_user.groups.append(group)
    hub_db.commit()
    spawner = await prepared(user, "gpu-enabled")
    await spawner.load_user_options()
    pod = await spawner.get_pod_manifest()
    assert pod.metadata.annotations["gpu-queue.io/groups"] == '["course-a","students"]'
    assert pod.metadata.annotations.get("hub.jupyter.org/username") == "ann", "KubeSpawner's own stay"

    loner = await prepared(make_user("lou"), "gpu-enabled")
    await loner.load_user_options()
    assert "gpu-queue.io/groups" not in ((await loner.get_pod_manifest()).metadata.annotations or {})

    off = make_user("otto", config=hub_config(queue_groups_annotation=False))
    off.orm_user.groups.append(hub_db.query(orm.Group).filter_by(name="students").one())
    hub_db.commit()
    spawner = await prepared(off, "gpu-enabled")
    await spawner.load_user_options()
    assert "gpu-queue.io/groups" not in ((await spawner.get_pod_manifest()).metadata.annotations or {})


def test_a_spawn_held_back_by_its_groups_limit_is_told_why_and_that_others_go_meanwhile() -> None:
    answer = {
        "state": "queued",
        "position": 2,
        "queueLength": 4,
        "heldBack": {"policy": "groupLimits", "group": "course-a", "limit": 4, "inUse": 4},
    }
    status = QueueStatus.from_json(answer)
    assert queue_message(status) == (
        "Waiting for a GPU slice: position 2 of 4; your group course-a holds 4 of its 4 slices, so you go when "
        "one of them is free (others go meanwhile)"
    )
    assert queue_fields(status)["heldBack"] == {"group": "course-a", "limit": 4, "inUse": 4}
    warned = QueueStatus.from_json({"state": "admitted", "holdLimit": {"stopAt": "2026-12-02T14:05:00Z"}})
    assert queue_fields(warned)["stopAt"] == "2026-12-02T14:05:00+00:00"


def test_the_spawn_page_says_who_is_ahead_by_priority_and_why_the_place_got_worse() -> None:
    before = QueueStatus.from_json({"state": "queued", "position": 1, "queueLength": 2, "priority": {"ahead": {}}})
    after = QueueStatus.from_json(
        {"state": "queued", "position": 2, "queueLength": 3, "priority": {"rank": 1, "ahead": {"instructors": 1}}}
    )
    assert queue_message(after) == (
        "Waiting for a GPU slice: position 2 of 3, wait time unknown; ahead of you by priority: 1 in instructors "
        "(groupPriority goes first)"
    )
    assert joined_ahead(before, after) == "Someone in instructors joined the queue ahead of you (groupPriority). "
    assert joined_ahead(after, after) == "", "no change, no news"
    moved_up = QueueStatus.from_json({"state": "queued", "position": 1, "priority": {"ahead": {"instructors": 1}}})
    assert joined_ahead(after, moved_up) == ""
