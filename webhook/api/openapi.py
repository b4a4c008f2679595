"""The queue API's route table and the OpenAPI 3.1 document generated from it.

The same table registers the handlers and describes them, from the same models, so the document
served at ``/openapi.json`` cannot drift from what the handlers do.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from webhook.api.edits import move_queued_pod, remove_queued_pod
from webhook.api.models import (
    API_PREFIX,
    SOURCE_HEADER,
    SOURCE_TEXT,
    EditResult,
    ErrorBody,
    KeptPlaceList,
    MoveRequest,
    PodPath,
    PoolList,
    PoolPath,
    PoolPodPath,
    Position,
    QueueListing,
    QueueQuery,
    RemoveQuery,
    Role,
    UserPath,
    UserQuery,
)
from webhook.api.positions import get_kept_places, get_pod_position, get_pool_queue, get_pools, get_user_position


async def get_openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document; its server URL is wherever this app is mounted."""
    base = request.path.removesuffix("/openapi.json") or "/"
    document = {**_openapi_document(), "servers": [{"url": base}]}
    return web.json_response(document)


@dataclass(frozen=True)
class _Route:
    """One operation: how it is registered (method, path, handler, role) and how it is documented."""

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
    sourced: bool = False  # a read that answers from the watch cache during a store outage


ROUTES: Final[tuple[_Route, ...]] = (
    _Route(
        "GET",
        "/pools",
        "listPools",
        "Pools with capacity, use, queue length and holders",
        get_pools,
        PoolList,
        sourced=True,
    ),
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
        sourced=True,
    ),
    _Route(
        "GET",
        "/pools/{pool}/kept-places",
        "listKeptPlaces",
        "A pool's kept places: who gets their old place back if they ask again before it expires",
        get_kept_places,
        KeptPlaceList,
        path_params=PoolPath,
        errors=(400, 404),
    ),
    _Route(
        "GET",
        "/queue/{namespace}/{pod}",
        "getPodPosition",
        "Where a pod stands: queued with position and ETA, admitted, pending (seen, not indexed yet) or unknown",
        get_pod_position,
        Position,
        path_params=PodPath,
        errors=(400, 404),
        sourced=True,
    ),
    _Route(
        "GET",
        "/users/{user}",
        "getUserPosition",
        "Where a user's server stands, by the raw JupyterHub user name (pending: seen, not indexed yet)",
        get_user_position,
        Position,
        path_params=UserPath,
        query_params=UserQuery,
        errors=(400, 404),
        sourced=True,
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
    503: (
        "The queue store is unavailable (Retry-After): an edit, or a read before this replica's watch "
        "cache synced; or no API tokens are configured"
    ),
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
            if route.sourced:
                responses["200"]["headers"] = {
                    SOURCE_HEADER: {
                        "required": True,
                        "schema": {"type": "string", "enum": ["store", "cache"]},
                        "description": SOURCE_TEXT,
                    }
                }
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
