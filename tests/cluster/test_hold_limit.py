"""The hold limit while others wait, on the dev cluster with a real JupyterHub: the service's
replicas run with ``maxHoldSecondsWhenQueued`` and the hub's API (a service token with the
``servers`` scope), the hub starts the servers. One slice: Hana holds it past the limit while
nobody waits and is left alone; Abe queues, Hana is warned (an Event, the queue API, her hub home
page), and after the warning period the hub stops her server (so the hub knows), and Abe gets the
slice. Then Abe holds past the limit with nobody waiting: nothing happens to him."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gpu_queue_dev.cluster import DevCluster
from tests.helpers.cluster import reconfigured
from tests.helpers.real_hub import RealHub, running_hub
from tests.helpers.waiting import wait_for
from tests.scenarios import Target, gated

pytestmark = pytest.mark.timeout(240)
TEMPLATES = Path(__file__).resolve().parents[2] / "webhook" / "hub_templates"
LIMIT = 8  # seconds a holder may keep the slice while others wait
WARNING = 10  # seconds between the warning and the stop (time enough to read the warning)
SERVICE_ROLE = {"name": "gpu-queue-hold-limit", "scopes": ["servers", "read:users"], "services": ["gpu-queue"]}


async def _start(hub: RealHub, user: str) -> None:
    async with hub.api() as api:
        async with api.post(hub.url(f"/hub/api/users/{user}")) as response:
            assert response.status in (201, 409), await response.text()
        async with api.post(hub.url(f"/hub/api/users/{user}/server"), json={"profile": "gpu-enabled"}) as response:
            assert response.status in (201, 202), await response.text()


async def _hub_server(hub: RealHub, user: str) -> dict[str, Any] | None:
    """The user's default server as the hub has it (None: the hub has none)."""
    async with hub.api() as api, api.get(hub.url(f"/hub/api/users/{user}")) as response:
        assert response.status == 200, await response.text()
        servers: dict[str, Any] = (await response.json()).get("servers") or {}
    return servers.get("")


async def _holding(target: Target, name: str) -> bool:
    pod = await target.pod(name)
    return pod is not None and not gated(pod) and not pod["metadata"].get("deletionTimestamp")


async def _left_alone(target: Target, name: str, seconds: float) -> None:
    """Watch ``name`` for ``seconds``: it keeps its slice and hears nothing of the hold limit."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert await _holding(target, name), f"{name} lost its slice while nobody waited"
        told = [m for m in await target.events(name) if "stopped" in m]
        assert not told, f"{name} was warned while nobody waited: {told}"
        await asyncio.sleep(0.25)  # a pace between checks of an absence, not a wait for a condition


@pytest.fixture
async def hold_limited(clean_cluster: DevCluster, target: Target, tmp_path: Path) -> AsyncIterator[RealHub]:
    """A hub (with gpu-queue's page templates and its service), the replicas reconfigured to use it."""
    await clean_cluster.set_gpu_slices(1)
    token = secrets.token_hex(32)
    async with running_hub(
        clean_cluster,
        tmp_path / "hub",
        template_paths=[TEMPLATES],
        services=[{"name": "gpu-queue", "api_token": token}],
        roles=[SERVICE_ROLE],
        http_timeout=200,  # the dev cluster's pods never answer: keep the hub's servers the test's length
    ) as hub:
        overrides = {
            "pools": {"gpu": {"maxHoldSecondsWhenQueued": LIMIT, "holdWarningSeconds": WARNING}},
            "policy": {"hubApiUrl": hub.url("/hub/api"), "hubApiToken": token},
        }
        async with reconfigured(clean_cluster, overrides):
            yield hub


async def test_a_holder_past_the_limit_is_warned_then_stopped_through_the_hub_only_while_others_wait(
    hold_limited: RealHub, target: Target
) -> None:
    hub = hold_limited
    await _start(hub, "hana")
    await wait_for(lambda: _holding(target, "jupyter-hana"), 30, "hana's server (started by the hub) to hold the slice")
    await _left_alone(target, "jupyter-hana", LIMIT + WARNING + 2)

    # The hub answers a spawn request only after its slow_spawn_timeout (10 s) for a spawn that
    # waits: ask in the background and time from abe's pod queueing.
    asking = asyncio.create_task(_start(hub, "abe"))

    async def abe_waits() -> bool:
        pod = await target.pod("jupyter-abe")
        return pod is not None and gated(pod)

    await wait_for(abe_waits, 30, "abe's server to queue behind hana")
    queued_at = time.monotonic()

    async def warned() -> list[str]:
        return [m for m in await target.events("jupyter-hana") if "will be stopped at" in m]

    (warning,) = await wait_for(warned, 15, "hana's hold-limit warning")
    warned_after = time.monotonic() - queued_at
    assert "1 person is waiting" in warning and "Save your work" in warning, warning
    answer = await target.position("jupyter-hana")
    assert answer.get("holdLimit"), answer
    stop_at = datetime.fromisoformat(answer["holdLimit"]["stopAt"].replace("Z", "+00:00"))
    assert answer["holdLimit"]["limitSeconds"] == LIMIT
    async with hub.browser("hana") as browser, browser.get(hub.url("/hub/home")) as page:
        home = await page.text()
    assert f"this server will be stopped at {stop_at:%H:%M} UTC" in home, "her hub home page says when"
    assert gated(await target.pod("jupyter-abe") or {}), "abe waits until hana's server is stopped"

    async def stopped_by_the_hub() -> bool:
        return await target.pod("jupyter-hana") is None and await _hub_server(hub, "hana") is None

    await wait_for(stopped_by_the_hub, 30, "the hub to stop hana's server")
    stopped_after = time.monotonic() - queued_at
    assert stopped_after - warned_after >= WARNING - 1, "the whole warning period between warning and stop"
    await wait_for(lambda: _holding(target, "jupyter-abe"), 15, "abe to get the freed slice")
    await asking
    assert any("Stopped through the hub" in m for m in await target.events("jupyter-hana"))

    await _left_alone(target, "jupyter-abe", LIMIT + WARNING + 2)
    print(f"[hold limit] warned {warned_after:.1f} s after abe queued, stopped {stopped_after:.1f} s after")
