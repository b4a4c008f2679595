"""What the queue API's handlers find on the app: the config, the store, the cluster view, the clock.

The keys live here, below the handlers and the app factory, so both can use them without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final

from aiohttp import web

from webhook.api.errors import ApiError
from webhook.config import Config, Pool
from webhook.protocols import ClusterView, QueueStore

CONFIG_KEY: Final = web.AppKey("gpu_queue_api_config", Config)
STORE_KEY: Final = web.AppKey[QueueStore]("gpu_queue_api_store")
CLUSTER_KEY: Final = web.AppKey[ClusterView]("gpu_queue_api_cluster")
CLOCK_KEY: Final = web.AppKey[Callable[[], datetime]]("gpu_queue_api_clock")


def pool_config(request: web.Request, pool: str) -> Pool:
    """A configured pool, or a 404 that lists the pools there are."""
    pools = request.app[CONFIG_KEY].pools
    if pool not in pools:
        raise ApiError(404, f"no pool named {pool!r}", {"pools": sorted(pools)})
    return pools[pool]
