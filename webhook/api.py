"""The queue API under ``/api/v1``: positions and ETAs for the hub, listings and edits for admins.

Every answer and request body is a pydantic model, and the OpenAPI document served at
``/openapi.json`` is generated from the same models and the same route table that registers the
handlers, so the document cannot drift from what the handlers do.

Auth is a bearer token compared in constant time against every configured token: read tokens see,
admin tokens also edit. With no token configured the API refuses everything (503) rather than run
open. A store outage answers 503 with ``Retry-After`` so the hub falls back to stock behaviour.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Final, Literal, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints, ValidationError
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from webhook.config import Config, Pool
from webhook.eta import estimate
from webhook.models import Eta, Holder, PoolStatus, Position, PositionState, QueueEntry, pod_key
from webhook.protocols import ClusterView, QueueStore, StoreUnavailable

log = logging.getLogger("webhook.api")

API_PREFIX: Final = "/api/v1"
RETRY_AFTER_SECONDS: Final = 5
MAX_PAGE: Final = 1000

# Suggested polling: the head of the queue changes fastest and matters most to its users.
REFRESH_NEAR_HEAD_SECONDS: Final = 5.0
REFRESH_QUEUED_SECONDS: Final = 15.0
REFRESH_ADMITTED_SECONDS: Final = 30.0
# "unknown" is nearly always a pod created a moment ago that the watch indexes within seconds.
REFRESH_UNKNOWN_SECONDS: Final = 10.0
NEAR_HEAD: Final = 3

Role = Literal["public", "read", "admin"]
_M = TypeVar("_M", bound=BaseModel)


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------
# Wire models (answers, request bodies, parameters)
# --------------------------------------------------------------------------------------------


class _Answer(BaseModel):
    """camelCase on the wire like ``webhook.models``'s models, so every answer reads alike."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")


class ErrorBody(_Answer):
    """Every non-2xx answer: a sentence that says what went wrong and what to do, plus data."""

    error: str
    detail: Any = None


class PoolList(RootModel[list[PoolStatus]]):
    """``GET /pools``: every configured pool with its holders."""


class QueueItem(QueueEntry):
    """One queued pod as an admin sees it: where it stands, how long it waited, when it may go."""

    position: int = Field(ge=1, description="1-based")
    waiting_seconds: float = Field(alias="waitingSeconds", ge=0)
    eta: Eta


class QueueListing(_Answer):
    """``GET /pools/{pool}/queue``: one page of a pool's FIFO, head first."""

    pool: str
    resource: str
    capacity: int
    in_use: int = Field(alias="inUse")
    queue_length: int = Field(alias="queueLength", description="All queued entries, not just this page")
    offset: int
    limit: int | None
    entries: list[QueueItem]


class MoveRequest(_Answer):
    """Body of an admin move: the target place and why (the reason is logged with the edit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    position: int = Field(ge=1, description="1-based target position; past the end means last")
    reason: str = Field("", max_length=500)


class EditResult(_Answer):
    """What an admin edit did, so the CLI can say it in one line."""

    action: Literal["moved", "removed"]
    pool: str
    namespace: str
    name: str
    reason: str
    previous_position: int = Field(alias="previousPosition")
    position: int | None = Field(None, description="The new 1-based position (moved); null when removed")
    queue_length: int = Field(alias="queueLength")
    requested_at: datetime | None = Field(None, alias="requestedAt")
    pod_deleted: bool | None = Field(None, alias="podDeleted", description="removed: false if the pod was gone")


Namespace = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63),
    Field(description="A Kubernetes namespace (DNS-1123 label)"),
]
PodName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253),
    Field(description="A pod name (DNS-1123 subdomain)"),
]
PoolName = Annotated[str, StringConstraints(min_length=1, max_length=253), Field(description="A configured pool")]
Reason = Annotated[str, Field(max_length=500, description="Why; logged with the edit")]


class _Params(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class PoolPath(_Params):
    pool: PoolName


class PodPath(_Params):
    namespace: Namespace
    pod: PodName


class PoolPodPath(_Params):
    pool: PoolName
    namespace: Namespace
    pod: PodName


class UserPath(_Params):
    user: str = Field(
        min_length=1, max_length=1024, description="The raw JupyterHub user name, URL-encoded (may hold @ . capitals)"
    )


class UserQuery(_Params):
    server: str = Field("", max_length=255, description="The named server; empty for the default server")


class QueueQuery(_Params):
    limit: int | None = Field(None, ge=1, le=MAX_PAGE, description="At most this many entries")
    offset: int = Field(0, ge=0, description="Skip this many entries from the head")


class RemoveQuery(_Params):
    reason: Reason = ""


# --------------------------------------------------------------------------------------------
# Errors and app state
# --------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than 200, raised from anywhere in a handler and rendered as ErrorBody."""

    def __init__(self, status: int, error: str, detail: Any = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class _Tokens:
    read: tuple[bytes, ...]
    admin: tuple[bytes, ...]

    @property
    def empty(self) -> bool:
        return not self.read and not self.admin


@dataclass(frozen=True)
class Principal:
    """Who made a request, for the audit log: the role and which configured token (never the token)."""

    role: Literal["read", "admin"]
    token_index: int

    @property
    def label(self) -> str:
        return f"{self.role} token #{self.token_index + 1}"


CONFIG_KEY: Final = web.AppKey("gpu_queue_api_config", Config)
STORE_KEY: Final = web.AppKey[QueueStore]("gpu_queue_api_store")
CLUSTER_KEY: Final = web.AppKey[ClusterView]("gpu_queue_api_cluster")
CLOCK_KEY: Final = web.AppKey[Callable[[], datetime]]("gpu_queue_api_clock")
_TOKENS_KEY: Final = web.AppKey("gpu_queue_api_tokens", _Tokens)
_ROLES_KEY: Final = web.AppKey[dict[str, Role]]("gpu_queue_api_roles")
PRINCIPAL_KEY: Final = web.RequestKey[Principal]("gpu_queue_principal")


def _json(model: BaseModel, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=model.model_dump_json(by_alias=True).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(exc: ApiError) -> web.Response:
    return _json(ErrorBody(error=exc.error, detail=exc.detail), exc.status, exc.headers)


def _parse(model: type[_M], data: Mapping[str, Any], what: str) -> _M:
    """Validate path/query parameters; a bad one is the caller's mistake (400), named in detail."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ApiError(400, f"bad {what}: {_summary(exc)}", _errors(exc)) from None


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": [str(p) for p in err["loc"]], "msg": err["msg"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def _summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors(include_url=False)
    )


# --------------------------------------------------------------------------------------------
# Middlewares: JSON errors outermost, then auth
# --------------------------------------------------------------------------------------------


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes an ErrorBody, so clients (the hub, the CLI) parse one shape."""
    try:
        response = await handler(request)
    except ApiError as exc:
        response = _error(exc)
    except StoreUnavailable as exc:
        log.warning("queue store unavailable", extra={"ctx": {"path": request.path, "error": str(exc)}})
        response = _error(
            ApiError(
                503,
                "the queue store (Redis) is unavailable; retry later",
                {"retryAfterSeconds": RETRY_AFTER_SECONDS},
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        )
    except web.HTTPException as exc:
        if exc.status == 404:
            message = f"no such API route: {request.method} {request.path}; see {API_PREFIX}/openapi.json"
        else:
            message = f"{exc.reason}: {request.method} {request.path}"
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        response = _error(ApiError(exc.status, message, None, headers))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("API handler failed", extra={"ctx": {"path": request.path, "method": request.method}})
        response = _error(ApiError(500, "internal error in the gpu-queue API; see the service log"))
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _check_token(presented: str, tokens: _Tokens) -> Principal | None:
    """Compare against every token with hmac.compare_digest, never stopping early (constant time)."""
    given = presented.encode("utf-8", "surrogateescape")  # a header that is not UTF-8 is just wrong
    admin_hit = -1
    read_hit = -1
    for i, token in enumerate(tokens.admin):
        if hmac.compare_digest(given, token):
            admin_hit = i
    for i, token in enumerate(tokens.read):
        if hmac.compare_digest(given, token):
            read_hit = i
    if admin_hit >= 0:
        return Principal("admin", admin_hit)
    if read_hit >= 0:
        return Principal("read", read_hit)
    return None


_CHALLENGE = 'Bearer realm="gpu-queue"'


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer auth by route role: public (the OpenAPI document), read, or admin (edits)."""
    app = request.app
    name = request.match_info.route.name
    role: Role = app[_ROLES_KEY].get(name or "", "read")
    if role == "public":
        return await handler(request)
    tokens = app[_TOKENS_KEY]
    if tokens.empty:
        raise ApiError(
            503,
            "the gpu-queue API has no tokens configured and refuses to run open: set api.readTokens "
            "(and api.adminTokens for edits), e.g. env GPU_QUEUE_API__READ_TOKENS",
        )
    scheme, _, presented = request.headers.get("Authorization", "").strip().partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise ApiError(
            401,
            "missing bearer token: send Authorization: Bearer <token> (api.readTokens or api.adminTokens)",
            headers={"WWW-Authenticate": _CHALLENGE},
        )
    principal = _check_token(presented, tokens)
    if principal is None:
        raise ApiError(
            401,
            "the token is not valid for this API",
            headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
        )
    if role == "admin" and principal.role != "admin":
        raise ApiError(403, "this edit needs an admin token (api.adminTokens); a read token only reads")
    request[PRINCIPAL_KEY] = principal
    return await handler(request)


# --------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------


def _pool_config(request: web.Request, pool: str) -> Pool:
    pools = request.app[CONFIG_KEY].pools
    if pool not in pools:
        raise ApiError(404, f"no pool named {pool!r}", {"pools": sorted(pools)})
    return pools[pool]


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

    def eta(self, position: int, now: datetime) -> Eta:
        """The estimate, or "unknown" if estimating fails: a position without an ETA still helps."""
        try:
            return estimate(
                position=position,
                capacity=self.capacity,
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
    capacity, in_use = request.app[CLUSTER_KEY].pool_usage(pool)
    holders, release_times = await asyncio.gather(store.holders(pool), store.release_times(pool))
    return _PoolSnapshot(pool, config, capacity, in_use, holders, release_times)


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
        eta=snap.eta(position, now),
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
    return _json(PoolList(out))


async def get_pool_queue(request: web.Request) -> web.Response:
    """One page of a pool's FIFO with 1-based positions, waits and ETAs."""
    path = _parse(PoolPath, request.match_info, "path")
    query = _parse(QueueQuery, request.query, "query parameter")
    config = _pool_config(request, path.pool)
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
            eta=snap.eta(query.offset + i + 1, now),
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
    return _json(listing)


async def get_pod_position(request: web.Request) -> web.Response:
    """Where a pod stands: queued (with position and ETA), admitted, or unknown (not indexed yet)."""
    path = _parse(PodPath, request.match_info, "path")
    key = pod_key(path.namespace, path.pod)
    store = request.app[STORE_KEY]
    pools = request.app[CONFIG_KEY].pools
    for name, pool in pools.items():
        queued = await _queued_position(request, name, pool, key)
        if queued is not None:
            return _json(queued)
    for name in pools:
        holder = next((h for h in await store.holders(name) if h.key == key), None)
        if holder is not None:
            return _json(await _admitted_position(request, name, holder))
    exists = request.app[CLUSTER_KEY].pod_exists(path.namespace, path.pod)
    if exists is False:
        raise ApiError(
            404,
            f"pod {key} is neither queued nor holding a slice, and the cluster has no such pod",
            {"namespace": path.namespace, "pod": path.pod},
        )
    # The pod exists (or this replica's cache is not synced yet): the index will catch up.
    return _json(
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
    path = _parse(UserPath, request.match_info, "path")
    query = _parse(UserQuery, request.query, "query parameter")
    store = request.app[STORE_KEY]
    pools = request.app[CONFIG_KEY].pools
    found = await store.find_user(path.user, query.server)
    queued = [(pool, e) for pool, e in found if not isinstance(e, Holder)]
    held = [(pool, e) for pool, e in found if isinstance(e, Holder)]
    for pool, entry in queued:
        answer = await _queued_position(request, pool, pools.get(pool) or Pool(), entry.key)
        if answer is not None:
            return _json(answer)
    for pool, holder in held:
        return _json(await _admitted_position(request, pool, holder))
    if queued:  # granted or removed between the two reads: the next poll sees which
        return _json(
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


def _audit(request: web.Request) -> dict[str, Any]:
    principal = request[PRINCIPAL_KEY]
    return {
        "by": principal.label,
        "actor": request.headers.get("X-Gpu-Queue-Actor", "")[:100],
        "remote": request.remote or "",
    }


async def move_queued_pod(request: web.Request) -> web.Response:
    """Admin: put a queued pod at a position, and persist it on the pod so a rebuild keeps it (I2)."""
    path = _parse(PoolPodPath, request.match_info, "path")
    _pool_config(request, path.pool)
    try:
        body = MoveRequest.model_validate_json(await request.read())
    except ValidationError as exc:
        raise ApiError(400, f"bad request body: {_summary(exc)}", _errors(exc)) from None
    key = pod_key(path.namespace, path.pod)
    store = request.app[STORE_KEY]
    previous = await _find_queued(request, path.pool, key)
    length = await store.length(path.pool)
    target = min(body.position, max(length, 1))
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
    return _json(
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


async def remove_queued_pod(request: web.Request) -> web.Response:
    """Admin: drop a queued pod from the index (no place kept) first, then delete the pod.

    In that order, the controller seeing the deletion finds nothing to tombstone (I5 is for users
    who left, not for pods an admin removed).
    """
    path = _parse(PoolPodPath, request.match_info, "path")
    query = _parse(RemoveQuery, request.query, "query parameter")
    _pool_config(request, path.pool)
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
    return _json(
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


async def get_openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document; its server URL is wherever this app is mounted."""
    base = request.path.removesuffix("/openapi.json") or "/"
    document = {**_openapi_document(), "servers": [{"url": base}]}
    return web.json_response(document)


# --------------------------------------------------------------------------------------------
# The route table: registers the handlers and generates the OpenAPI document
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Route:
    method: Literal["GET", "POST", "DELETE"]
    path: str
    name: str
    summary: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    answer: type[BaseModel] | None
    role: Role = "read"
    path_params: type[BaseModel] | None = None
    query_params: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()


ROUTES: Final[tuple[_Route, ...]] = (
    _Route("GET", "/pools", "listPools", "Pools with capacity, use, queue length and holders", get_pools, PoolList),
    _Route(
        "GET",
        "/pools/{pool}/queue",
        "listPoolQueue",
        "A pool's queue in order, with 1-based positions, waiting times and ETAs",
        get_pool_queue,
        QueueListing,
        path_params=PoolPath,
        query_params=QueueQuery,
        errors=(400, 404),
    ),
    _Route(
        "GET",
        "/queue/{namespace}/{pod}",
        "getPodPosition",
        "Where a pod stands: queued with position and ETA, admitted, or unknown (not indexed yet)",
        get_pod_position,
        Position,
        path_params=PodPath,
        errors=(400, 404),
    ),
    _Route(
        "GET",
        "/users/{user}",
        "getUserPosition",
        "Where a user's server stands, by the raw JupyterHub user name",
        get_user_position,
        Position,
        path_params=UserPath,
        query_params=UserQuery,
        errors=(400, 404),
    ),
    _Route(
        "POST",
        "/pools/{pool}/queue/{namespace}/{pod}/move",
        "moveQueuedPod",
        "Admin: move a queued pod to a 1-based position (logged, kept across rebuilds)",
        move_queued_pod,
        EditResult,
        role="admin",
        path_params=PoolPodPath,
        body=MoveRequest,
        errors=(400, 403, 404, 409, 413, 502),
    ),
    _Route(
        "DELETE",
        "/pools/{pool}/queue/{namespace}/{pod}",
        "removeQueuedPod",
        "Admin: remove a queued pod (no place kept) and delete it (logged)",
        remove_queued_pod,
        EditResult,
        role="admin",
        path_params=PoolPodPath,
        query_params=RemoveQuery,
        errors=(400, 403, 404, 409, 502),
    ),
    _Route("GET", "/openapi.json", "getOpenApi", "This OpenAPI document", get_openapi, None, role="public"),
)

_ERROR_TEXT: Final[Mapping[int, str]] = {
    400: "Bad parameters or body",
    401: "Missing or invalid bearer token",
    403: "A read token on an admin edit",
    404: "No such pool, pod or user",
    409: "The pod holds a slice; only queued pods can be edited",
    413: "The request body is too large",
    500: "Internal error",
    502: "The Kubernetes write of the edit failed",
    503: "The queue store is unavailable (Retry-After), or no API tokens are configured",
}


def _package_version() -> str:
    try:
        return version("gpu-queue")
    except PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        return "0.0.0"


def _parameters(model: type[BaseModel], where: Literal["path", "query"]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(by_alias=True)
    required = set(schema.get("required", []))
    out: list[dict[str, Any]] = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", "")
        prop.pop("title", None)
        param: dict[str, Any] = {"name": name, "in": where, "required": where == "path" or name in required}
        if description:
            param["description"] = description
        param["schema"] = prop
        out.append(param)
    return out


@functools.cache
def _openapi_document() -> dict[str, Any]:
    """Built once: the route table plus the models' JSON schemas under components/schemas."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    for route in ROUTES:
        if route.answer is not None:
            wanted.append((route.answer, "serialization"))
        if route.body is not None:
            wanted.append((route.body, "validation"))
    unique = list(dict.fromkeys(wanted))
    refs, defs = models_json_schema(unique, by_alias=True, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = defs.get("$defs", {})
    # Answers are dumped whole (defaults and nulls included), so the document promises every
    # field: a client may rely on e.g. ``position`` being present, even when it is null.
    inputs = {refs[(route.body, "validation")]["$ref"].rsplit("/", 1)[1] for route in ROUTES if route.body}
    for name, schema in schemas.items():
        if name not in inputs and "properties" in schema:
            schema["required"] = list(schema["properties"])

    def content(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return {"application/json": {"schema": refs[(model, mode)]}}

    error = content(ErrorBody, "serialization")
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        responses: dict[str, Any] = {}
        if route.answer is not None:
            responses["200"] = {"description": "OK", "content": content(route.answer, "serialization")}
        else:
            responses["200"] = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
        codes = set(route.errors) | {500}
        if route.role != "public":
            codes |= {401, 503}
        for code in sorted(codes):
            answer: dict[str, Any] = {"description": _ERROR_TEXT[code], "content": error}
            if code == 401:
                answer["headers"] = {
                    "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer challenge"}
                }
            if code == 503:
                answer["headers"] = {
                    "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds (store outage only)"}
                }
            responses[str(code)] = answer
        operation: dict[str, Any] = {
            "operationId": route.name,
            "summary": route.summary,
            "tags": ["admin" if route.role == "admin" else "queue"],
            "responses": responses,
        }
        params: list[dict[str, Any]] = []
        if route.path_params is not None:
            params += _parameters(route.path_params, "path")
        if route.query_params is not None:
            params += _parameters(route.query_params, "query")
        if params:
            operation["parameters"] = params
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": content(route.body, "validation")}
        if route.role == "public":
            operation["security"] = []
        elif route.role == "admin":
            operation["description"] = "Needs an admin token (api.adminTokens)."
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gpu-queue API",
            "version": _package_version(),
            "description": "Queue positions, ETAs and admin edits of gpu-queue's per-pool GPU slice FIFOs.",
        },
        "servers": [{"url": API_PREFIX}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from api.readTokens (reads) or api.adminTokens (reads and edits)",
                }
            },
            "schemas": schemas,
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document as served (with the default mount point), e.g. for the docs build."""
    return copy.deepcopy(_openapi_document())


def _tokens(config: Config) -> _Tokens:
    def encode(values: Sequence[Any]) -> tuple[bytes, ...]:
        return tuple(v.get_secret_value().encode() for v in values if v.get_secret_value())

    return _Tokens(read=encode(config.api.read_tokens), admin=encode(config.api.admin_tokens))


def create_api_app(
    config: Config,
    store: QueueStore,
    cluster: ClusterView,
    *,
    clock: Callable[[], datetime] = _utcnow,
) -> web.Application:
    """The API as an aiohttp sub-app; the server mounts it at ``/api/v1``."""
    app = web.Application(middlewares=[_errors_middleware, _auth_middleware])
    app[CONFIG_KEY] = config
    app[STORE_KEY] = store
    app[CLUSTER_KEY] = cluster
    app[CLOCK_KEY] = clock
    app[_TOKENS_KEY] = _tokens(config)
    app[_ROLES_KEY] = {route.name: route.role for route in ROUTES}
    if app[_TOKENS_KEY].empty:
        log.warning("no API tokens configured: every /api/v1 request is refused; set api.readTokens")
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler, name=route.name)
    return app
