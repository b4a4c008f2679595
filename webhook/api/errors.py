"""How the queue API fails: ``ApiError``, JSON answers, parameter parsing and the errors middleware.

Every failure leaves as an ``ErrorBody``, so the clients (the hub, the CLI) parse one shape. A
store outage the handler could not answer around (an admin edit, or a read before this replica's
watch cache synced) is a 503 with ``Retry-After``, so the hub falls back to stock behaviour.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Final, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ValidationError

from webhook.api.models import API_PREFIX, ErrorBody
from webhook.protocols import StoreUnavailable

# The whole API logs under one name, whichever module logs, so one filter finds its records.
log = logging.getLogger("webhook.api")

RETRY_AFTER_SECONDS: Final = 5

_M = TypeVar("_M", bound=BaseModel)


class ApiError(Exception):
    """An answer other than 200, raised from anywhere in a handler and rendered as ErrorBody."""

    def __init__(self, status: int, error: str, detail: Any = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})


def store_unavailable(error: str) -> ApiError:
    """The 503 of a store (Redis) outage, with ``Retry-After``; ``error`` says what it stops."""
    return ApiError(503, error, {"retryAfterSeconds": RETRY_AFTER_SECONDS}, {"Retry-After": str(RETRY_AFTER_SECONDS)})


def json_answer(model: BaseModel, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A model as the JSON body, with its camelCase aliases, as every answer is sent."""
    return web.Response(
        body=model.model_dump_json(by_alias=True).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(exc: ApiError) -> web.Response:
    return json_answer(ErrorBody(error=exc.error, detail=exc.detail), exc.status, exc.headers)


def parse_params(model: type[_M], data: Mapping[str, Any], what: str) -> _M:
    """Validate path/query parameters; a bad one is the caller's mistake (400), named in detail."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ApiError(400, f"bad {what}: {_summary(exc)}", _errors(exc)) from None


def parse_body(model: type[_M], raw: bytes) -> _M:
    """Validate a JSON request body; a bad one is the caller's mistake (400), named in detail."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise ApiError(400, f"bad request body: {_summary(exc)}", _errors(exc)) from None


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": [str(p) for p in err["loc"]], "msg": err["msg"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def _summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors(include_url=False)
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes an ErrorBody, so clients (the hub, the CLI) parse one shape."""
    try:
        response = await handler(request)
    except ApiError as exc:
        response = _error(exc)
    except StoreUnavailable as exc:
        log.warning("queue store unavailable", extra={"ctx": {"path": request.path, "error": str(exc)}})
        response = _error(store_unavailable("the queue store (Redis) is unavailable; retry later"))
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
