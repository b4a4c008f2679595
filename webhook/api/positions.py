"""The queue API's read handlers: pools, a pool's queue, and where a pod or a user's server stands.

Each answers from the queue store (Redis) as usual; while the store is unavailable it answers from
this replica's watch cache instead (``webhook.api.cached``: the same positions, an unknown ETA),
marked ``source: cache`` in the body and the ``X-Gpu-Queue-Source`` header. Only when the cache
has not synced either is the answer a 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from pydantic import BaseModel

from webhook.api import cached
from webhook.api.answers import (
    ADMITTED_ETA,
    REFRESH_NEAR_HEAD_SECONDS,
    PoolSnapshot,
    no_such_pod,
    no_such_user,
    refresh,
)
from webhook.api.errors import json_answer, parse_params, store_unavailable
from webhook.api.models import (
    SOURCE_HEADER,
    KeptPlaceList,
    PodPath,
    PoolList,
    PoolPath,
    PoolStatus,
    Position,
    QueueItem,
    QueueListing,
    QueueQuery,
    Source,
    UserPath,
    UserQuery,
)
from webhook.api.policy import policy_fields
from webhook.api.state import CLOCK_KEY, CLUSTER_KEY, CONFIG_KEY, STORE_KEY, pool_config
from webhook.config import Pool
from webhook.models import Holder, PositionState, pod_key
from webhook.protocols import StoreUnavailable

# The whole API logs under one name, whichever module logs, so one filter finds its records.
log = logging.getLogger("webhook.api")

# One warning per this many seconds of answering from the cache, not one per answer.
CACHE_WARNING_SECONDS: Final = 60.0


class _Throttle:
    """True at most once per ``seconds``: an outage is logged, not each answer given during it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last: float | None = None

    def due(self) -> bool:
        now = time.monotonic()
        if self.last is not None and now - self.last < self.seconds:
            return False
        self.last = now
        return True


_cache_warning = _Throttle(CACHE_WARNING_SECONDS)


async def _answer(
    request: web.Request,
    from_store: Callable[[], Awaitable[BaseModel]],
    from_cache: Callable[[], BaseModel | None],
) -> web.Response:
    """The store's answer; during a store outage the cache's; a 503 when neither can answer."""
    source: Source = "store"
    try:
        model = await from_store()
    except StoreUnavailable as exc:
        found = from_cache()
        if found is None:
            log.warning("queue store unavailable", extra={"ctx": {"path": request.path, "error": str(exc)}})
            raise store_unavailable(
                "the queue store (Redis) is unavailable and this replica's watch cache has not synced yet; retry later"
            ) from exc
        model, source = found, "cache"
        if _cache_warning.due():
            log.warning(
                "queue store unavailable: answering reads from the watch cache",
                extra={"ctx": {"path": request.path, "error": str(exc)}},
            )
    return json_answer(model, headers={SOURCE_HEADER: source})


async def _snapshot(request: web.Request, pool: str, config: Pool) -> PoolSnapshot:
    store = request.app[STORE_KEY]
    cluster = request.app[CLUSTER_KEY]
    capacity, in_use = cluster.pool_usage(pool)
    holders, release_times = await asyncio.gather(store.holders(pool), store.release_times(pool))
    return PoolSnapshot(pool, config, capacity, in_use, holders, cluster, release_times)


async def _queued_position(request: web.Request, pool: str, config: Pool, key: str) -> Position | None:
    """The Position of a queued key in a pool, or None when it is not queued there."""
    store = request.app[STORE_KEY]
    found = await store.position(pool, key)
    if found is None:
        return None
    position, length = found
    entries, snap = await asyncio.gather(
        store.entries(pool, position - 1, position - 1), _snapshot(request, pool, config)
    )
    # The head may have moved between the two reads; only trust an entry that is this key.
    entry = next((e for e in entries if e.key == key), None)
    now = request.app[CLOCK_KEY]()
    return Position(
        pool=pool,
        state=PositionState.QUEUED,
        namespace=entry.namespace if entry else key.partition("/")[0],
        name=entry.name if entry else key.partition("/")[2],
        user=entry.user if entry else None,
        server=entry.server if entry else None,
        position=position,
        queue_length=length,
        capacity=snap.capacity,
        in_use=snap.in_use,
        requested_at=entry.requested_at if entry else None,
        eta=snap.eta(position, key, now),
        refresh_seconds=refresh(PositionState.QUEUED, position),
        **policy_fields(request.app[CLUSTER_KEY], pool, config, key),
    )


async def _admitted_position(request: web.Request, pool: str, holder: Holder) -> Position:
    store = request.app[STORE_KEY]
    config = request.app[CONFIG_KEY].pools.get(pool) or Pool()
    capacity, in_use = request.app[CLUSTER_KEY].pool_usage(pool)
    return Position(
        pool=pool,
        state=PositionState.ADMITTED,
        namespace=holder.namespace,
        name=holder.name,
        user=holder.user,
        server=holder.server,
        position=None,
        queue_length=await store.length(pool),
        capacity=capacity,
        in_use=in_use,
        requested_at=holder.requested_at,
        granted_at=holder.granted_at,
        eta=ADMITTED_ETA,
        refresh_seconds=refresh(PositionState.ADMITTED, None),
        **policy_fields(request.app[CLUSTER_KEY], pool, config, holder.key),
    )


async def get_pools(request: web.Request) -> web.Response:
    """Every configured pool: capacity and use as the controller last saw them, and its holders."""

    async def from_store() -> PoolList:
        store = request.app[STORE_KEY]
        cluster = request.app[CLUSTER_KEY]
        out: list[PoolStatus] = []
        for name, pool in request.app[CONFIG_KEY].pools.items():
            capacity, in_use = cluster.pool_usage(name)
            holders, queued = await asyncio.gather(store.holders(name), store.length(name))
            out.append(
                PoolStatus(
                    name=name, resource=pool.resource, capacity=capacity, in_use=in_use, queued=queued, holders=holders
                )
            )
        return PoolList(out)

    return await _answer(request, from_store, lambda: cached.pools(request))


async def get_kept_places(request: web.Request) -> web.Response:
    """A pool's kept places (the tombstones of I5), for admins to see who may come back where."""
    path = parse_params(PoolPath, request.match_info, "path")
    pool_config(request, path.pool)
    places = await request.app[STORE_KEY].kept_places(path.pool)
    return json_answer(KeptPlaceList(pool=path.pool, kept_places=places))


async def get_pool_queue(request: web.Request) -> web.Response:
    """One page of a pool's FIFO with 1-based positions, waits and ETAs."""
    path = parse_params(PoolPath, request.match_info, "path")
    query = parse_params(QueueQuery, request.query, "query parameter")
    config = pool_config(request, path.pool)

    async def from_store() -> QueueListing:
        store = request.app[STORE_KEY]
        stop = -1 if query.limit is None else query.offset + query.limit - 1
        entries, length, snap = await asyncio.gather(
            store.entries(path.pool, query.offset, stop),
            store.length(path.pool),
            _snapshot(request, path.pool, config),
        )
        now = request.app[CLOCK_KEY]()
        cluster = request.app[CLUSTER_KEY]
        items = [
            QueueItem(
                **entry.model_dump(),
                position=query.offset + i + 1,
                waiting_seconds=max(0.0, (now - entry.requested_at).total_seconds()),
                eta=snap.eta(query.offset + i + 1, entry.key, now),
                **policy_fields(cluster, path.pool, config, entry.key),
            )
            for i, entry in enumerate(entries)
        ]
        return QueueListing(
            pool=path.pool,
            resource=config.resource,
            capacity=snap.capacity,
            in_use=snap.in_use,
            queue_length=length,
            offset=query.offset,
            limit=query.limit,
            entries=items,
        )

    return await _answer(
        request, from_store, lambda: cached.pool_queue(request, path.pool, config, query.offset, query.limit)
    )


async def get_pod_position(request: web.Request) -> web.Response:
    """Where a pod stands: queued (with position and ETA), admitted, pending (in the cache, not
    indexed yet) or unknown."""
    path = parse_params(PodPath, request.match_info, "path")

    async def from_store() -> Position:
        key = pod_key(path.namespace, path.pod)
        store = request.app[STORE_KEY]
        pools = request.app[CONFIG_KEY].pools
        for name, pool in pools.items():
            queued = await _queued_position(request, name, pool, key)
            if queued is not None:
                return queued
        for name in pools:
            holder = next((h for h in await store.holders(name) if h.key == key), None)
            if holder is not None:
                return await _admitted_position(request, name, holder)
        seen = cached.pending(request, cached.of_pod(path.namespace, path.pod))
        if seen is not None:
            return seen
        if request.app[CLUSTER_KEY].pod_exists(path.namespace, path.pod) is False:
            raise no_such_pod(path.namespace, path.pod)
        # The pod exists but in no pool's queue (or this replica's cache is not synced yet).
        return Position(
            pool=None,
            state=PositionState.UNKNOWN,
            namespace=path.namespace,
            name=path.pod,
            refresh_seconds=refresh(PositionState.UNKNOWN, None),
        )

    return await _answer(request, from_store, lambda: cached.pod_position(request, path.namespace, path.pod))


async def get_user_position(request: web.Request) -> web.Response:
    """Where a user's server stands, by the raw JupyterHub name (the pod name is a lossy slug)."""
    path = parse_params(UserPath, request.match_info, "path")
    query = parse_params(UserQuery, request.query, "query parameter")

    async def from_store() -> Position:
        store = request.app[STORE_KEY]
        pools = request.app[CONFIG_KEY].pools
        found = await store.find_user(path.user, query.server)
        queued = [(pool, e) for pool, e in found if not isinstance(e, Holder)]
        held = [(pool, e) for pool, e in found if isinstance(e, Holder)]
        for pool, entry in queued:
            answer = await _queued_position(request, pool, pools.get(pool) or Pool(), entry.key)
            if answer is not None:
                return answer
        for pool, holder in held:
            return await _admitted_position(request, pool, holder)
        if queued:  # granted or removed between the two reads: the next poll sees which
            return Position(
                pool=queued[0][0],
                state=PositionState.UNKNOWN,
                user=path.user,
                server=query.server,
                refresh_seconds=REFRESH_NEAR_HEAD_SECONDS,
            )
        # The hub asks right after creating the pod: a 404 before the index has it would read as
        # "not queued", so the cache's sighting answers "pending" instead.
        seen = cached.pending(request, cached.of_user(path.user, query.server))
        if seen is not None:
            return seen
        raise no_such_user(path.user, query.server)

    return await _answer(request, from_store, lambda: cached.user_position(request, path.user, query.server))
