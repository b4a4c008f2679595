"""The seed scenarios on kind, with the container image and the Helm chart (shared code with the
local-control-plane tier: ``tests/scenarios.py``)."""

from __future__ import annotations

import pytest

from tests import scenarios
from tests.scenarios import Target

pytestmark = pytest.mark.timeout(300)


async def test_seed_story_on_kind(target: Target) -> None:
    await scenarios.seed_story(target)


async def test_cpu_pods_are_never_gated_on_kind(target: Target) -> None:
    await scenarios.cpu_never_gated(target)


async def test_burst_is_granted_in_order_on_kind(target: Target) -> None:
    await scenarios.burst_in_order(target, 30)


async def test_capacity_follows_the_node_on_kind(target: Target) -> None:
    await scenarios.capacity_follows_the_node(target)


async def test_cancelled_user_keeps_the_place_on_kind(target: Target) -> None:
    await scenarios.cancel_keeps_place(target)


async def test_only_the_service_account_removes_the_gate_on_kind(target: Target) -> None:
    await scenarios.user_cannot_remove_the_gate(target, target.kube)
