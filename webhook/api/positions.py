"""The queue API's read handlers: pools, a pool's queue, and where a pod or a user's server stands.

Positions are 1-based and come with an ETA and a suggested polling interval, so the hub can show a
waiting user where they are without polling harder than the queue moves.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from aiohttp import web

from webhook.api.errors import ApiError, json_answer, parse_params
from webhook.api.models import PodPath, PoolList, PoolPath, QueueItem, QueueListing, QueueQuery, UserPath, UserQuery
from webhook.api.state import CLOCK_KEY, CLUSTER_KEY, CONFIG_KEY, STORE_KEY, pool_config
from webhook.config import Pool
from webhook.eta import estimate
from webhook.models import Eta, Holder, PoolStatus, Position, PositionState, pod_key
from webhook.protocols import ClusterView

# The whole API logs under one name, whichever module logs, so one filter finds its records.
log = logging.getLogger("webhook.api")

# Suggested polling: the head of the queue changes fastest and matters most to its users.
REFRESH_NEAR_HEAD_SECONDS: Final = 5.0
REFRESH_QUEUED_SECONDS: Final = 15.0
REFRESH_ADMITTED_SECONDS: Final = 30.0
# "unknown" is nearly always a pod created a moment ago that the watch indexes within seconds.
REFRESH_UNKNOWN_SECONDS: Final = 10.0
NEAR_HEAD: Final = 3


def _refresh(state: PositionState, position: int | None) -> float:
    if state is PositionState.QUEUED and position is not None:
        return REFRESH_NEAR_HEAD_SECONDS if position <= NEAR_HEAD else REFRESH_QUEUED_SECONDS
    if state is PositionState.ADMITTED:
        return REFRESH_ADMITTED_SECONDS
    return REFRESH_UNKNOWN_SECONDS


@dataclass(frozen=True)
class _PoolSnapshot:
    """What every ETA of one pool needs, read once per answer."""

    name: str
    config: Pool
    capacity: int
    in_use: int
    holders: list[Holder]
    release_times: list[datetime]
    cluster: ClusterView

    def eta(self, position: int, key: str, now: datetime) -> Eta:
        """The estimate, or "unknown" if estimating fails: a position without an ETA still helps.
        It counts the slices the pod and those ahead ask for (as the cache has them), else one each."""
        try:
            return estimate(
                slices=self.cluster.slices_through(self.name, key) or position,
                capacity=self.capacity,
                in_use=self.in_use,
                holders=self.holders,
                release_times=self.release_times,
                cull_timeout_seconds=float(self.config.cull_timeout_seconds),
                now=now,
            )
        except Exception:
            log.exception("ETA estimate failed", extra={"ctx": {"pool": self.name, "position": position}})
            return Eta(known=False, method="error")


async def _snapshot(request: web.Request, pool: str, config: Pool) -> _PoolSnapshot:
    store = request.app[STORE_KEY]
    cluster = request.app[CLUSTER_KEY]
    capacity, in_use = cluster.pool_usage(pool)
    holders, release_times = await asyncio.gather(store.holders(pool), store.release_times(pool))
    return _PoolSnapshot(pool, config, capacity, in_use, holders, release_times, cluster)


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
        refresh_seconds=_refresh(PositionState.QUEUED, position),
    )


async def _admitted_position(request: web.Request, pool: str, holder: Holder) -> Position:
    store = request.app[STORE_KEY]
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
        eta=Eta(known=True, min_seconds=0.0, max_seconds=0.0, method="admitted"),
        refresh_seconds=_refresh(PositionState.ADMITTED, None),
    )


async def get_pools(request: web.Request) -> web.Response:
    """Every configured pool: capacity and use as the controller last saw them, and its holders."""
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
    return json_answer(PoolList(out))


async def get_pool_queue(request: web.Request) -> web.Response:
    """One page of a pool's FIFO with 1-based positions, waits and ETAs."""
    path = parse_params(PoolPath, request.match_info, "path")
    query = parse_params(QueueQuery, request.query, "query parameter")
    config = pool_config(request, path.pool)
    store = request.app[STORE_KEY]
    stop = -1 if query.limit is None else query.offset + query.limit - 1
    entries, length, snap = await asyncio.gather(
        store.entries(path.pool, query.offset, stop), store.length(path.pool), _snapshot(request, path.pool, config)
    )
    now = request.app[CLOCK_KEY]()
    items = [
        QueueItem(
            **entry.model_dump(),
            position=query.offset + i + 1,
            waiting_seconds=max(0.0, (now - entry.requested_at).total_seconds()),
            eta=snap.eta(query.offset + i + 1, entry.key, now),
        )
        for i, entry in enumerate(entries)
    ]
    listing = QueueListing(
        pool=path.pool,
        resource=config.resource,
        capacity=snap.capacity,
        in_use=snap.in_use,
        queue_length=length,
        offset=query.offset,
        limit=query.limit,
        entries=items,
    )
    return json_answer(listing)


async def get_pod_position(request: web.Request) -> web.Response:
    """Where a pod stands: queued (with position and ETA), admitted, or unknown (not indexed yet)."""
    path = parse_params(PodPath, request.match_info, "path")
    key = pod_key(path.namespace, path.pod)
    store = request.app[STORE_KEY]
    pools = request.app[CONFIG_KEY].pools
    for name, pool in pools.items():
        queued = await _queued_position(request, name, pool, key)
        if queued is not None:
            return json_answer(queued)
    for name in pools:
        holder = next((h for h in await store.holders(name) if h.key == key), None)
        if holder is not None:
            return json_answer(await _admitted_position(request, name, holder))
    exists = request.app[CLUSTER_KEY].pod_exists(path.namespace, path.pod)
    if exists is False:
        raise ApiError(
            404,
            f"pod {key} is neither queued nor holding a slice, and the cluster has no such pod",
            {"namespace": path.namespace, "pod": path.pod},
        )
    # The pod exists (or this replica's cache is not synced yet): the index will catch up.
    return json_answer(
        Position(
            pool=None,
            state=PositionState.UNKNOWN,
            namespace=path.namespace,
            name=path.pod,
            refresh_seconds=_refresh(PositionState.UNKNOWN, None),
        )
    )


async def get_user_position(request: web.Request) -> web.Response:
    """Where a user's server stands, by the raw JupyterHub name (the pod name is a lossy slug)."""
    path = parse_params(UserPath, request.match_info, "path")
    query = parse_params(UserQuery, request.query, "query parameter")
    store = request.app[STORE_KEY]
    pools = request.app[CONFIG_KEY].pools
    found = await store.find_user(path.user, query.server)
    queued = [(pool, e) for pool, e in found if not isinstance(e, Holder)]
    held = [(pool, e) for pool, e in found if isinstance(e, Holder)]
    for pool, entry in queued:
        answer = await _queued_position(request, pool, pools.get(pool) or Pool(), entry.key)
        if answer is not None:
            return json_answer(answer)
    for pool, holder in held:
        return json_answer(await _admitted_position(request, pool, holder))
    if queued:  # granted or removed between the two reads: the next poll sees which
        return json_answer(
            Position(
                pool=queued[0][0],
                state=PositionState.UNKNOWN,
                user=path.user,
                server=query.server,
                refresh_seconds=REFRESH_NEAR_HEAD_SECONDS,
            )
        )
    label = f"{path.user!r}" + (f" server {query.server!r}" if query.server else " (default server)")
    raise ApiError(
        404,
        f"user {label} has no server queued or holding a slice",
        {"user": path.user, "server": query.server},
    )
