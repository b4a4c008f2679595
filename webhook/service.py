"""Wiring: the Redis store, the queue controller and the API, as server components.

Each part opens its resources in a ``cleanup_ctx`` component and never blocks start-up: admission
must answer while Redis or the API server is unreachable (I4). The API is created up front and
reaches the controller through ``ClusterProxy``, which answers "not synced" until the controller
exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from aiohttp import web

from webhook.api import create_api_app
from webhook.config import Config
from webhook.controller import QueueController
from webhook.kube import Kube, load_client
from webhook.redis_store import RedisQueueStore

log = logging.getLogger(__name__)

Component = Callable[[web.Application], AsyncIterator[None]]


class ClusterProxy:
    """``ClusterView`` for the API until (and while) the controller runs."""

    def __init__(self) -> None:
        self.controller: QueueController | None = None

    def pool_usage(self, pool: str) -> tuple[int, int]:
        return self.controller.pool_usage(pool) if self.controller else (0, 0)

    def slices_through(self, pool: str, key: str) -> int | None:
        return self.controller.slices_through(pool, key) if self.controller else None

    def pod_exists(self, namespace: str, name: str) -> bool | None:
        return self.controller.pod_exists(namespace, name) if self.controller else None

    async def delete_pod(self, namespace: str, name: str) -> bool:
        if self.controller is None:
            raise RuntimeError("the Kubernetes API is not connected yet; retry in a few seconds")
        return await self.controller.delete_pod(namespace, name)

    async def set_requested_at(self, namespace: str, name: str, when: datetime) -> None:
        if self.controller is None:
            raise RuntimeError("the Kubernetes API is not connected yet; retry in a few seconds")
        await self.controller.set_requested_at(namespace, name, when)


def build(config: Config) -> tuple[list[Component], web.Application]:
    """(components, API sub-app) for ``create_app``."""
    store = RedisQueueStore.from_config(config)
    cluster = ClusterProxy()

    async def redis_store(app: web.Application) -> AsyncIterator[None]:
        yield
        await store.aclose()

    async def queue_controller(app: web.Application) -> AsyncIterator[None]:
        if not config.controller.enabled:
            yield
            return
        task = asyncio.create_task(_run_controller(config, store, cluster), name="queue-controller")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return [redis_store, queue_controller], create_api_app(config, store, cluster)


async def _run_controller(config: Config, store: RedisQueueStore, cluster: ClusterProxy) -> None:
    """Connect to the API server (retrying: it may come up after us), then run the controller."""
    delay = 1.0
    while True:
        try:
            api = await load_client(config.kubeconfig)
            break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # no kubeconfig yet, bad file, ...: say so and keep admitting
            log.warning(
                "cannot load the Kubernetes client configuration; the queue controller waits",
                extra={"ctx": {"error": str(exc), "retry_seconds": delay}},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)
    kube = Kube(api)
    controller = QueueController(config, kube, store)
    cluster.controller = controller
    try:
        await controller.run()
    finally:
        cluster.controller = None
        await kube.aclose()
