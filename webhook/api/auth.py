"""Bearer-token auth of the queue API: read tokens see, admin tokens also edit.

A presented token is compared in constant time against every configured token, never stopping at
the first match. With no token configured the API refuses everything (503) rather than run open.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from aiohttp import web
from aiohttp.typedefs import Handler

from webhook.api.errors import ApiError
from webhook.api.models import Role
from webhook.config import Config


@dataclass(frozen=True)
class Tokens:
    """The configured tokens as bytes, so a non-ASCII token compares like any other."""

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


TOKENS_KEY: Final = web.AppKey("gpu_queue_api_tokens", Tokens)
ROLES_KEY: Final = web.AppKey[dict[str, Role]]("gpu_queue_api_roles")
PRINCIPAL_KEY: Final = web.RequestKey[Principal]("gpu_queue_principal")

_CHALLENGE = 'Bearer realm="gpu-queue"'


def load_tokens(config: Config) -> Tokens:
    """The non-empty tokens of ``api.readTokens`` and ``api.adminTokens``; an empty one opens nothing."""

    def encode(values: Sequence[Any]) -> tuple[bytes, ...]:
        return tuple(v.get_secret_value().encode() for v in values if v.get_secret_value())

    return Tokens(read=encode(config.api.read_tokens), admin=encode(config.api.admin_tokens))


def _check_token(presented: str, tokens: Tokens) -> Principal | None:
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


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer auth by route role: public (the OpenAPI document), read, or admin (edits)."""
    app = request.app
    name = request.match_info.route.name
    role: Role = app[ROLES_KEY].get(name or "", "read")
    if role == "public":
        return await handler(request)
    tokens = app[TOKENS_KEY]
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
