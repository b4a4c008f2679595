"""The hub's view: a real KubeSpawner, pointed at the local API server, spawns a GPU server while
the pool is full, and its ``progress()`` (what the spawn page shows) carries the queue position.

Stock KubeSpawner shows it through the controller's pod Events; the optional
``QueueAwareKubeSpawner`` also polls the queue API for live messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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
    from webhook.hub import QueueAwareKubeSpawner

    await scenarios.fill_pool(target, target.slices)
    await target.spawn("ahead")  # someone is already waiting: our user is number 2
    spawner = await new_spawner(
        QueueAwareKubeSpawner,
        "aware@example.org",
        "gpu-enabled",
        namespace=target.namespace,
        queue_api_url=target.api_url,
        queue_api_token=target.read_token,
        queue_ca_file=target.ca_file,
    )
    assert os.environ["KUBECONFIG"]
    seen = await _progress_until(spawner, "position 2 of 2", 60)
    print(f"[hub view] queue-aware progress: {seen}")
