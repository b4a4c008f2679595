"""The queue API's admin edits: move a queued pod to a position, or remove it from the queue.

Only queued pods can be edited (a holder is 409). Each edit is written to the cluster too, so a
rebuild of the index keeps it, and is logged with who made it and why. Edits need the store: while
Redis is down they are 503 with ``Retry-After`` (the reads answer from the watch cache meanwhile).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from webhook.api.auth import PRINCIPAL_KEY
from webhook.api.errors import ApiError, json_answer, parse_body, parse_params, store_unavailable
from webhook.api.models import EditResult, MoveRequest, PoolPodPath, RemoveQuery
from webhook.api.state import CLUSTER_KEY, STORE_KEY, pool_config
from webhook.models import PositionState, pod_key
from webhook.protocols import StoreUnavailable

# The whole API logs under one name, whichever module logs, so one filter finds its records.
log = logging.getLogger("webhook.api")

EDITS_NEED_THE_STORE: Final = (
    "the queue store (Redis) is unavailable, and admin edits (queue move, queue rm) need it: retry once "
    "it is back (positions are answered from the watch cache meanwhile)"
)

_Handler = Callable[[web.Request], Awaitable[web.Response]]


def _needs_the_store(handler: _Handler) -> _Handler:
    """A store outage during an edit is a 503 that says edits (unlike reads) wait for Redis."""

    @functools.wraps(handler)
    async def edit(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except StoreUnavailable as exc:
            log.warning("queue store unavailable", extra={"ctx": {"path": request.path, "error": str(exc)}})
            raise store_unavailable(EDITS_NEED_THE_STORE) from exc

    return edit


async def _find_queued(request: web.Request, pool: str, key: str) -> int:
    """The current 1-based position of a queued key, or the right 404/409 for an edit."""
    store = request.app[STORE_KEY]
    found = await store.position(pool, key)
    if found is not None:
        return found[0]
    if any(h.key == key for h in await store.holders(pool)):
        raise ApiError(
            409,
            f"pod {key} already holds a slice in pool {pool!r}; only queued pods can be moved or removed",
            {"pool": pool, "pod": key, "state": PositionState.ADMITTED.value},
        )
    raise ApiError(404, f"pod {key} is not queued in pool {pool!r}", {"pool": pool, "pod": key})


async def _within_rank(request: web.Request, pool: str, key: str, target: int) -> int:
    """In a pool with ``groupPriority`` a move stays inside the pod's rank (the priority decides
    between ranks, the admin within one): the target clamped to where that rank's pods stand."""
    entries = await request.app[STORE_KEY].entries(pool, 0, -1)
    rank = next((e.rank for e in entries if e.key == key), 0)
    places = [i + 1 for i, e in enumerate(entries) if e.rank == rank]
    return min(max(target, places[0]), places[-1]) if places else target


def _audit(request: web.Request) -> dict[str, Any]:
    """Who made an edit, for its log line: the token's label (never the token), actor and peer."""
    principal = request[PRINCIPAL_KEY]
    return {
        "by": principal.label,
        "actor": request.headers.get("X-Gpu-Queue-Actor", "")[:100],
        "remote": request.remote or "",
    }


@_needs_the_store
async def move_queued_pod(request: web.Request) -> web.Response:
    """Admin: put a queued pod at a position, and persist it on the pod so a rebuild keeps it (I2)."""
    path = parse_params(PoolPodPath, request.match_info, "path")
    pool_config(request, path.pool)
    body = parse_body(MoveRequest, await request.read())
    key = pod_key(path.namespace, path.pod)
    store = request.app[STORE_KEY]
    previous = await _find_queued(request, path.pool, key)
    length = await store.length(path.pool)
    target = min(body.position, max(length, 1))
    if pool_config(request, path.pool).group_priority:
        target = await _within_rank(request, path.pool, key, target)
    moved = await store.move(path.pool, key, target)
    if moved is None:
        raise ApiError(404, f"pod {key} left the queue of pool {path.pool!r} during the move", {"pod": key})
    try:
        await request.app[CLUSTER_KEY].set_requested_at(path.namespace, path.pod, moved.requested_at)
    except Exception as exc:
        log.exception("queue move: writing requested-at failed", extra={"ctx": {"pool": path.pool, "pod": key}})
        raise ApiError(
            502,
            f"pod {key} was moved in the index, but its requested-at annotation could not be written, "
            "so the next rebuild would undo the move: retry",
            {"error": str(exc)},
        ) from None
    found = await store.position(path.pool, key)
    position, length = found if found is not None else (None, await store.length(path.pool))
    log.info(
        "queue edit: moved %s in pool %s from position %s to %s",
        key,
        path.pool,
        previous,
        position,
        extra={
            "ctx": {
                "action": "move",
                "pool": path.pool,
                "namespace": path.namespace,
                "pod": path.pod,
                "from_position": previous,
                "to_position": position,
                "requested_position": body.position,
                "requested_at": moved.requested_at.isoformat(),
                "reason": body.reason,
                **_audit(request),
            }
        },
    )
    return json_answer(
        EditResult(
            action="moved",
            pool=path.pool,
            namespace=path.namespace,
            name=path.pod,
            reason=body.reason,
            previous_position=previous,
            position=position,
            queue_length=length,
            requested_at=moved.requested_at,
        )
    )


@_needs_the_store
async def remove_queued_pod(request: web.Request) -> web.Response:
    """Admin: drop a queued pod from the index (no place kept) first, then delete the pod.

    In that order, the controller seeing the deletion finds nothing to tombstone (I5 is for users
    who left, not for pods an admin removed).
    """
    path = parse_params(PoolPodPath, request.match_info, "path")
    query = parse_params(RemoveQuery, request.query, "query parameter")
    pool_config(request, path.pool)
    key = pod_key(path.namespace, path.pod)
    store = request.app[STORE_KEY]
    previous = await _find_queued(request, path.pool, key)
    removed = await store.remove(path.pool, key, 0)
    if removed is None:
        raise ApiError(404, f"pod {key} left the queue of pool {path.pool!r} during the removal", {"pod": key})
    try:
        deleted = await request.app[CLUSTER_KEY].delete_pod(path.namespace, path.pod)
    except Exception as exc:
        log.exception("queue rm: deleting the pod failed", extra={"ctx": {"pool": path.pool, "pod": key}})
        raise ApiError(
            502,
            f"pod {key} was dropped from the index but could not be deleted, so the controller will "
            "queue it again at its old place: retry",
            {"error": str(exc)},
        ) from None
    length = await store.length(path.pool)
    log.info(
        "queue edit: removed %s from pool %s at position %s",
        key,
        path.pool,
        previous,
        extra={
            "ctx": {
                "action": "remove",
                "pool": path.pool,
                "namespace": path.namespace,
                "pod": path.pod,
                "from_position": previous,
                "pod_deleted": deleted,
                "user": removed.user,
                "server": removed.server,
                "reason": query.reason,
                **_audit(request),
            }
        },
    )
    return json_answer(
        EditResult(
            action="removed",
            pool=path.pool,
            namespace=path.namespace,
            name=path.pod,
            reason=query.reason,
            previous_position=previous,
            position=None,
            queue_length=length,
            requested_at=removed.requested_at,
            pod_deleted=deleted,
        )
    )
