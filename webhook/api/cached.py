"""The read answers from this replica's watch cache, while the queue store (Redis) is unavailable.

Every replica watches the pods, the durable truth the store only indexes. The plan made from them
(``ClusterView.readers_plan``) holds each pool's queue in the store's order (requested-at, then
namespace/name) and its holders, so the positions are the ones the store would give. What only
the store keeps is missing: the slice release times, so the ETA is unknown and says why. Every
answer says ``source: cache``. Each function returns None when the cache has not synced either:
there is nothing to answer from, and the caller keeps the store's 503. With the store up, ``pending``
tells a pod the cache has seen from one the store has not indexed yet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from aiohttp import web

from webhook.api.answers import ADMITTED_ETA, PoolSnapshot, no_such_pod, no_such_user, refresh
from webhook.api.models import PoolList, PoolStatus, Position, QueueItem, QueueListing
from webhook.api.policy import policy_fields
from webhook.api.state import CLOCK_KEY, CLUSTER_KEY, CONFIG_KEY
from webhook.cluster_view import PodView
from webhook.config import Pool
from webhook.grants import PoolPlan
from webhook.models import PositionState, pod_key
from webhook.records import entry_of, holder_of


def _plans(request: web.Request) -> dict[str, PoolPlan] | None:
    """Every configured pool's plan, or None while the cache has not synced."""
    cluster = request.app[CLUSTER_KEY]
    plans: dict[str, PoolPlan] = {}
    for name in request.app[CONFIG_KEY].pools:
        found = cluster.readers_plan(name)
        if found is None:
            return None
        plans[name] = found
    return plans


def _snapshot(request: web.Request, plan: PoolPlan, config: Pool) -> PoolSnapshot:
    holders = [holder_of(h) for h in plan.holders]
    cluster = request.app[CLUSTER_KEY]
    return PoolSnapshot(plan.pool, config, plan.capacity, plan.in_use, holders, cluster, source="cache")


def _queued(request: web.Request, plan: PoolPlan, config: Pool, index: int, now: datetime) -> Position:
    entry = entry_of(plan.queue[index])
    position = index + 1
    slices = plan.slices_through[index] if index < len(plan.slices_through) else None
    return Position(
        pool=plan.pool,
        state=PositionState.QUEUED,
        namespace=entry.namespace,
        name=entry.name,
        user=entry.user,
        server=entry.server,
        position=position,
        queue_length=len(plan.queue),
        capacity=plan.capacity,
        in_use=plan.in_use,
        requested_at=entry.requested_at,
        eta=_snapshot(request, plan, config).eta(position, entry.key, now, slices),
        refresh_seconds=refresh(PositionState.QUEUED, position),
        source="cache",
        **policy_fields(request.app[CLUSTER_KEY], plan.pool, config, entry.key),
    )


def _admitted(request: web.Request, plan: PoolPlan, view: PodView) -> Position:
    holder = holder_of(view)
    config = request.app[CONFIG_KEY].pools[plan.pool]
    return Position(
        pool=plan.pool,
        state=PositionState.ADMITTED,
        namespace=holder.namespace,
        name=holder.name,
        user=holder.user,
        server=holder.server,
        position=None,
        queue_length=len(plan.queue),
        capacity=plan.capacity,
        in_use=plan.in_use,
        requested_at=holder.requested_at,
        granted_at=holder.granted_at,
        eta=ADMITTED_ETA,
        refresh_seconds=refresh(PositionState.ADMITTED, None),
        source="cache",
        **policy_fields(request.app[CLUSTER_KEY], plan.pool, config, holder.key),
    )


Matcher = Callable[[PodView], bool]


def of_pod(namespace: str, name: str) -> Matcher:
    key = pod_key(namespace, name)
    return lambda view: view.key == key


def of_user(user: str, server: str) -> Matcher:
    """By the pod's hub user and server name annotations, as the store's ``find_user``."""
    return lambda view: (view.user, view.server) == (user, server)


def _locate(plans: Mapping[str, PoolPlan], matches: Matcher) -> tuple[PoolPlan, PodView, int | None] | None:
    """The first pod that ``matches`` with its plan and queue index (None: holding): queued in any
    pool first, then holding, as the store is asked."""
    for plan in plans.values():
        for index, view in enumerate(plan.queue):
            if matches(view):
                return plan, view, index
    for plan in plans.values():
        for view in plan.holders:
            if matches(view):
                return plan, view, None
    return None


def _find(request: web.Request, plans: Mapping[str, PoolPlan], matches: Matcher) -> Position | None:
    found = _locate(plans, matches)
    if found is None:
        return None
    plan, view, index = found
    if index is None:
        return _admitted(request, plan, view)
    config = request.app[CONFIG_KEY].pools[plan.pool]
    return _queued(request, plan, config, index, request.app[CLOCK_KEY]())


def pending(request: web.Request, matches: Matcher) -> Position | None:
    """A pod the store has not indexed yet but this replica's cache has queued or holding: "pending",
    so the hub asks again in a moment instead of hearing that nothing waits. None when the cache
    has not synced or has no such pod (the store's answer stands). The store answered, so the
    source stays ``store``."""
    plans = _plans(request)
    found = None if plans is None else _locate(plans, matches)
    if found is None:
        return None
    plan, view, _ = found
    return Position(
        pool=plan.pool,
        state=PositionState.PENDING,
        namespace=view.namespace,
        name=view.name,
        user=view.user,
        server=view.server,
        refresh_seconds=refresh(PositionState.PENDING, None),
    )


def pod_position(request: web.Request, namespace: str, name: str) -> Position | None:
    """``GET /queue/{namespace}/{pod}`` from the cache; 404 as from the store."""
    plans = _plans(request)
    if plans is None:
        return None
    found = _find(request, plans, of_pod(namespace, name))
    if found is not None:
        return found
    if request.app[CLUSTER_KEY].pod_exists(namespace, name) is False:
        raise no_such_pod(namespace, name)
    # A pod of ours that neither waits nor holds (finished, not of a pool): nothing to tell yet.
    return Position(
        pool=None,
        state=PositionState.UNKNOWN,
        namespace=namespace,
        name=name,
        refresh_seconds=refresh(PositionState.UNKNOWN, None),
        source="cache",
    )


def user_position(request: web.Request, user: str, server: str) -> Position | None:
    """``GET /users/{user}`` from the cache: the pod's hub user and server name annotations."""
    plans = _plans(request)
    if plans is None:
        return None
    found = _find(request, plans, of_user(user, server))
    if found is None:
        raise no_such_user(user, server)
    return found


def pool_queue(request: web.Request, pool: str, config: Pool, offset: int, limit: int | None) -> QueueListing | None:
    """``GET /pools/{pool}/queue`` from the cache: the same page of the same FIFO."""
    plan = request.app[CLUSTER_KEY].readers_plan(pool)
    if plan is None:
        return None
    snap = _snapshot(request, plan, config)
    now = request.app[CLOCK_KEY]()
    stop = len(plan.queue) if limit is None else offset + limit
    items: list[QueueItem] = []
    for index in range(offset, min(stop, len(plan.queue))):
        entry = entry_of(plan.queue[index])
        slices = plan.slices_through[index] if index < len(plan.slices_through) else None
        items.append(
            QueueItem(
                **entry.model_dump(),
                position=index + 1,
                waiting_seconds=max(0.0, (now - entry.requested_at).total_seconds()),
                eta=snap.eta(index + 1, entry.key, now, slices),
                **policy_fields(request.app[CLUSTER_KEY], pool, config, entry.key),
            )
        )
    return QueueListing(
        pool=pool,
        resource=config.resource,
        capacity=plan.capacity,
        in_use=plan.in_use,
        queue_length=len(plan.queue),
        offset=offset,
        limit=limit,
        entries=items,
        source="cache",
    )


def pools(request: web.Request) -> PoolList | None:
    """``GET /pools`` from the cache: capacity and use as always, the holders and queue from the pods."""
    plans = _plans(request)
    if plans is None:
        return None
    return PoolList(
        [
            PoolStatus(
                name=name,
                resource=pool.resource,
                capacity=plans[name].capacity,
                in_use=plans[name].in_use,
                queued=len(plans[name].queue),
                holders=[holder_of(h) for h in plans[name].holders],
                source="cache",
            )
            for name, pool in request.app[CONFIG_KEY].pools.items()
        ]
    )
