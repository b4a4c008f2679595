"""Position Events stay in step with the queue: one per pod per interval, changes inside it
coalesced into the newest position, sent as soon as the interval allows."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.helpers.pod_views import queued_view
from webhook.cluster_view import NodeView, PodView
from webhook.config import load_config
from webhook.controller import positions as positions_module
from webhook.controller.positions import PositionEvents
from webhook.controller.store_breaker import StoreBreaker
from webhook.grants import plan

CONFIG = load_config(env={})
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
GPU = NodeView("gpu-1", {"nvidia.com/gpu.present": "true"}, {"nvidia.com/gpu": Decimal(0)})


@dataclass
class Said:
    """An EventWriter that keeps what it was asked to say."""

    messages: list[tuple[str, str]] = field(default_factory=list)

    def emit(self, view: PodView, reason: str, message: str, *, kind: str = "Normal") -> None:
        self.messages.append((view.name, message.split(",")[0]))


def queued(name: str, seconds: float, slices: int = 1) -> PodView:
    return queued_view(name, T0 + timedelta(seconds=seconds), slices)


async def test_changes_inside_the_interval_are_coalesced_and_sent_when_it_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(positions_module.time, "monotonic", lambda: clock[0])
    said = Said()
    events: Any = said
    told = PositionEvents(CONFIG, StoreBreaker(None), events)  # eventMinIntervalSeconds: 10
    pods = [queued(n, i) for i, n in enumerate(["a", "b", "c", "d"])]

    async def tell(queue: list[PodView]) -> float | None:
        return await told.tell("gpu", plan("gpu", CONFIG.pools["gpu"], queue, [GPU]), T0)

    assert await tell(pods) is None
    assert said.messages[-1] == ("d", "Waiting for a GPU slice: position 4 of 4")
    said.messages.clear()
    clock[0] += 2
    due = await tell(pods[1:])  # a left: b, c, d move up, but they heard 2 s ago
    assert said.messages == [] and due == 1010.0
    clock[0] += 3
    assert await tell(pods[2:]) == 1010.0  # b left too: still held back, the same moment
    clock[0] = 1010.0
    assert await tell(pods[2:]) is None
    assert said.messages == [  # the newest positions, not the ones in between
        ("c", "Waiting for a GPU slice: position 1 of 2"),
        ("d", "Waiting for a GPU slice: position 2 of 2"),
    ]
    clock[0] += 30
    assert await tell(pods[2:]) is None and len(said.messages) == 2  # nothing changed: nothing said


@dataclass
class SaidInFull:
    messages: dict[str, str] = field(default_factory=dict)

    def emit(self, view: PodView, reason: str, message: str, *, kind: str = "Normal") -> None:
        self.messages[view.name] = message


async def test_a_user_held_back_by_a_group_limit_or_behind_a_priority_group_is_told_so() -> None:
    base = CONFIG.model_dump(by_alias=True, mode="json")
    base["pools"]["gpu"].update({"capacity": 1, "groupPriority": ["instructors"], "groupLimits": {"course-a": 0}})
    config = type(CONFIG).model_validate(base)
    pool = config.pools["gpu"]
    said = SaidInFull()
    events: Any = said
    told = PositionEvents(config, StoreBreaker(None), events)
    pods = [
        replace(queued("inst", 5), groups=("instructors",), rank=0),
        replace(queued("stu", 1), groups=("course-a",), rank=1),
        replace(queued("guest", 2), rank=1),
    ]
    await told.tell("gpu", plan("gpu", pool, pods, [GPU]), T0)
    assert "ahead of you" not in said.messages["inst"]
    assert said.messages["stu"] == (
        "Waiting for a GPU slice: position 2 of 3; your group course-a holds 0 of its 0 slices, so you go when one "
        "of them is free (others go meanwhile)"
    )
    assert said.messages["guest"].endswith("; ahead of you by priority: 1 in instructors (groupPriority goes first)")
