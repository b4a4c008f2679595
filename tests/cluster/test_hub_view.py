"""The hub's view: a real KubeSpawner, pointed at the local API server, spawns a GPU server while
the pool is full, and its ``progress()`` (what the spawn page shows) carries the queue position.

Stock KubeSpawner shows it through the controller's pod Events; the optional
``QueueAwareKubeSpawner`` also polls the queue API for live messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gpu_queue_dev.cluster import DevCluster
from gpu_queue_dev.spawnerpods import new_spawner
from tests import scenarios
from tests.scenarios import Target

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def hub_target(
    target: Target, clean_cluster: DevCluster, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Target]:
    """``target``, with KubeSpawner pointed at the dev cluster as a hub outside the cluster would be.

    The client library reads KUBECONFIG once at import, so its default path is pointed directly.
    """
    import kubernetes_asyncio.config.kube_config as kube_config
    from kubespawner import KubeSpawner
    from kubespawner.clients import load_config

    monkeypatch.setenv("KUBECONFIG", str(clean_cluster.kubeconfig))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(clean_cluster.kubeconfig))
    load_config.cache_clear()
    try:
        yield target
    finally:
        load_config.cache_clear()
        # KubeSpawner shares its pod/event reflectors per class; each test has its own event loop.
        for reflector in list(KubeSpawner.reflectors.values()):
            with contextlib.suppress(Exception):
                await reflector.stop()
        KubeSpawner.reflectors.clear()


async def _progress_until(spawner: Any, needle: str, within: float) -> list[str]:
    """Start the spawner and read its progress until a message contains ``needle``."""
    start = asyncio.ensure_future(spawner.start())
    seen: list[str] = []
    try:
        async with asyncio.timeout(within):
            while True:
                async for event in spawner.progress():
                    message = str(event.get("message", ""))
                    if message not in seen:
                        seen.append(message)
                    if needle in message:
                        return seen
                await asyncio.sleep(0.2)  # progress() ended (pod not there yet): KubeSpawner restarts it too
    except TimeoutError:
        raise AssertionError(f"progress() never said {needle!r} within {within}s; it said {seen}") from None
    finally:
        start.cancel()
        with contextlib.suppress(BaseException):
            await start
        with contextlib.suppress(Exception):
            await spawner.stop(now=True)


async def test_stock_kubespawner_progress_shows_the_queue_position(hub_target: Target) -> None:
    target = hub_target
    from kubespawner import KubeSpawner

    await scenarios.fill_pool(target, target.slices)
    spawner = await new_spawner(KubeSpawner, "stock.user", "gpu-enabled", namespace=target.namespace, start_timeout=600)
    seen = await _progress_until(spawner, "Waiting for a GPU slice: position 1 of 1", 60)
    print(f"[hub view] stock KubeSpawner progress: {seen}")


async def test_queue_aware_spawner_progress_polls_live_positions(hub_target: Target) -> None:
    target = hub_target
    await scenarios.fill_pool(target, target.slices)
    await target.spawn("ahead")  # someone is already waiting: our user is number 2
    spawner = await _queue_aware_spawner(target, "aware@example.org")
    assert os.environ["KUBECONFIG"]
    seen = await _progress_until(spawner, "position 2 of 2", 60)
    print(f"[hub view] queue-aware progress: {seen}")
    # the live line (polled from the API), not the controller's Event (which has a timestamp)
    assert seen[-1].startswith("Waiting for a GPU slice: position 2 of 2"), seen


async def _queue_aware_spawner(target: Target, user: str, **traits: Any) -> Any:
    """A ``QueueAwareKubeSpawner`` for the GPU profile, pointed at the queue API, prepared as the
    hub prepares a spawn (its pre-spawn hook decides that the spawn queues)."""
    from webhook.hub import QueueAwareKubeSpawner

    spawner = await new_spawner(
        QueueAwareKubeSpawner,
        user,
        "gpu-enabled",
        namespace=target.namespace,
        queue_api_url=target.api_url,
        queue_api_token=target.read_token,
        queue_ca_file=target.ca_file,
        **traits,
    )
    await spawner.run_pre_spawn_hook()
    return spawner


async def test_the_spawn_page_holds_its_bar_until_the_position_and_counts_slowness_from_the_grant(
    hub_target: Target,
) -> None:
    """A real KubeSpawner ``progress()`` of ``QueueAwareKubeSpawner`` against the real API server,
    read from before the pod exists: no stock event moves the bar before the queue position is
    known (the queue has not indexed a new pod at first), and after 5 s in the queue and a grant,
    KubeSpawner's "taking longer than expected ... N seconds" never counts the time spent queued."""
    target = hub_target
    holders = await scenarios.fill_pool(target, target.slices)
    spawner = await _queue_aware_spawner(
        target,
        "patient@example.org",
        slow_spawn_message_threshold=1,  # KubeSpawner's patience message after 1 s instead of 60
        slow_spawn_message_frequency=1,
    )
    seen: list[tuple[float, dict[str, Any]]] = []
    granted_at: list[float] = []
    loop = asyncio.get_running_loop()

    async def read_progress() -> None:
        while True:
            async for event in spawner.progress():
                seen.append((loop.time(), event))
                if "granted" in str(event.get("message", "")) and not granted_at:
                    granted_at.append(loop.time())
            await asyncio.sleep(0.2)  # progress() ended before the pod existed: the page asks again

    start = asyncio.ensure_future(spawner.start())
    reader = asyncio.ensure_future(read_progress())
    try:

        async def position_shown() -> bool:
            return any("position 1 of 1" in str(e.get("message", "")) for _, e in seen)

        await scenarios.wait_for(position_shown, 60, "the live position on the spawn page")
        queued_at = loop.time()
        await asyncio.sleep(5)  # the user waits in the queue (the scenario, not a wait for a condition)
        await target.logout(holders[0])
        await asyncio.wait_for(start, 60)  # granted, scheduled, Running (kwok): start() returns
        await asyncio.sleep(1.5)  # the page's last reads after the start
    finally:
        reader.cancel()
        start.cancel()
        await asyncio.gather(reader, start, return_exceptions=True)
        with contextlib.suppress(Exception):
            await spawner.stop(now=True)
    first_position = next(i for i, (_, e) in enumerate(seen) if "position" in str(e.get("message", "")))
    early = [e for _, e in seen[:first_position]]
    assert not [e for e in early if "progress" in e], f"the bar moved before the position was known: {early}"
    assert granted_at, f"the page never said the slice was granted: {seen}"
    patience = [
        (when, int(m.group(1)))
        for when, e in seen
        if (m := re.search(r"taking longer than expected.*?(\d+) seconds", str(e.get("message", ""))))
    ]
    for when, said in patience:
        assert when >= granted_at[0], f"a patience message while queued: {said} s"
        assert said <= when - granted_at[0] + 1, f"said {said} s, {when - granted_at[0]:.1f} s after the grant"
    print(
        "[hub view] bar and slowness: "
        + json.dumps(
            {
                "before_position": [e.get("message") for e in early],
                "queued_seconds": round(granted_at[0] - queued_at, 2),
                "patience_after_grant": [s for _, s in patience],
            }
        )
    )
