"""The leader carrying out the hold limit (``webhook.controller.hold_limit.HoldLimit``) with test
doubles for the API server, the hub and the Event writer: a warning marks the pod and posts a
Warning Event; a stop goes through the hub once, is retried only after a minute when the hub
refuses (told once per reason), and a pod no hub user started is never stopped."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.helpers.pod_views import holder_view
from webhook.cluster_view import NodeView, PodView
from webhook.config import Config, load_config
from webhook.controller import hold_limit as module
from webhook.controller.cache import WatchCache
from webhook.controller.hold_limit import HoldLimit
from webhook.grants import plan
from webhook.hub_api import HubApiError

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
NODE = NodeView("gpu-1", {"nvidia.com/gpu.present": "true"}, {"nvidia.com/gpu": Decimal(1)})


def config() -> Config:
    base = load_config(env={}).model_dump(by_alias=True, mode="json")
    base["pools"]["gpu"].update({"capacity": 1, "maxHoldSecondsWhenQueued": 3600, "holdWarningSeconds": 600})
    base["api"] = {"readTokens": ["hub-token"]}
    return Config.model_validate(base)


@dataclass
class Patches:
    sent: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)

    async def patch_json(self, path: str, patch: list[dict[str, Any]]) -> dict[str, Any]:
        self.sent.append((path, patch))
        return {}


@dataclass
class Said:
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def emit(self, view: PodView, reason: str, message: str, *, kind: str = "Normal") -> None:
        self.events.append((view.name, reason, kind))


@dataclass
class Hub:
    refuse: str = ""
    stops: list[tuple[str, str]] = field(default_factory=list)

    async def stop(self, user: str, server: str) -> str:
        self.stops.append((user, server))
        if self.refuse:
            raise HubApiError(self.refuse)
        return "stopped"


def holder(name: str, user: str = "ann", warned: datetime | None = None) -> PodView:
    return holder_view(name, T0, user=user, warned=warned)


WAITER = PodView(
    namespace="jhub",
    name="jupyter-bob",
    pool="gpu",
    gated=True,
    requested_at=T0,
    resources={"nvidia.com/gpu": Decimal(1)},
)


def limit_with(hub: Hub) -> tuple[HoldLimit, Patches, Said]:
    cfg = config()
    patches, said = Patches(), Said()
    kube: Any = patches
    events: Any = said
    servers: Any = hub
    return HoldLimit(cfg, kube, WatchCache(cfg), events, servers), patches, said


async def test_a_warning_marks_the_pod_and_posts_a_warning_event() -> None:
    limit, patches, said = limit_with(Hub())
    pool = limit.config.pools["gpu"]
    now = T0 + timedelta(minutes=50)
    await limit.check("gpu", plan("gpu", pool, [holder("jupyter-ann"), WAITER], [NODE]), now)
    assert patches.sent[0][1] == [
        {
            "op": "add",
            "path": "/metadata/annotations/gpu-queue.io~1hold-warned-at",
            "value": "2026-12-02T09:50:00.000000Z",
        }
    ]
    assert said.events == [("jupyter-ann", "HoldLimitWarning", "Warning")]


async def test_a_refused_stop_is_told_once_and_retried_only_after_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: clock[0])
    hub = Hub(refuse="the hub refused the token (HTTP 403)")
    limit, _, said = limit_with(hub)
    pool = limit.config.pools["gpu"]
    warned = holder("jupyter-ann", warned=T0 + timedelta(minutes=50))
    due = plan("gpu", pool, [warned, WAITER], [NODE])
    now = T0 + timedelta(hours=2)
    await limit.check("gpu", due, now)
    clock[0] += 30
    await limit.check("gpu", due, now)
    assert hub.stops == [("ann", "")], "not asked again within the minute"
    clock[0] += 31
    await limit.check("gpu", due, now)
    assert len(hub.stops) == 2
    assert said.events == [("jupyter-ann", "HoldLimitStopFailed", "Warning")], "the same reason is told once"
    hub.refuse = ""
    clock[0] += 61
    await limit.check("gpu", due, now)
    assert said.events[-1] == ("jupyter-ann", "HoldLimitStop", "Warning")


async def test_a_pod_no_hub_user_started_is_never_stopped() -> None:
    hub = Hub()
    limit, _, said = limit_with(hub)
    pool = limit.config.pools["gpu"]
    orphan = replace(holder("jupyter-x", user=""), hold_warned_at=T0)
    await limit.check("gpu", plan("gpu", pool, [orphan, WAITER], [NODE]), T0 + timedelta(hours=3))
    assert hub.stops == [] and said.events == [("jupyter-x", "HoldLimitStopFailed", "Warning")]


async def test_the_warning_is_withdrawn_when_nobody_waits_any_more() -> None:
    limit, patches, said = limit_with(Hub())
    pool = limit.config.pools["gpu"]
    warned = holder("jupyter-ann", warned=T0 + timedelta(minutes=50))
    await limit.check("gpu", plan("gpu", pool, [warned], [NODE]), T0 + timedelta(hours=2))
    assert patches.sent[-1][1] == [{"op": "remove", "path": "/metadata/annotations/gpu-queue.io~1hold-warned-at"}]
    assert said.events == [("jupyter-ann", "HoldLimitWithdrawn", "Normal")]


def test_a_hold_limit_without_a_hub_token_is_a_config_error_that_says_what_to_set() -> None:
    base = load_config(env={}).model_dump(by_alias=True, mode="json")
    base["pools"]["gpu"]["maxHoldSecondsWhenQueued"] = 3600
    base["api"] = {"readTokens": []}
    base["redis"] = {"url": "redis://localhost:6379/0"}
    with pytest.raises(ValueError, match=r"policy\.hubApiToken or api\.readTokens"):
        Config.model_validate(base)
