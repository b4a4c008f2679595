"""The queue API's app factory: one aiohttp sub-app with its state, middlewares and routes.

The errors middleware is outermost, so a refusal by the auth middleware is an ErrorBody too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp import web

from webhook.api.auth import ROLES_KEY, TOKENS_KEY, auth_middleware, load_tokens
from webhook.api.errors import errors_middleware
from webhook.api.openapi import ROUTES
from webhook.api.state import CLOCK_KEY, CLUSTER_KEY, CONFIG_KEY, STORE_KEY
from webhook.config import Config
from webhook.protocols import ClusterView, QueueStore

# The whole API logs under one name, whichever module logs, so one filter finds its records.
log = logging.getLogger("webhook.api")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def create_api_app(
    config: Config,
    store: QueueStore,
    cluster: ClusterView,
    *,
    clock: Callable[[], datetime] = _utcnow,
) -> web.Application:
    """The API as an aiohttp sub-app; the server mounts it at ``/api/v1``."""
    app = web.Application(middlewares=[errors_middleware, auth_middleware])
    app[CONFIG_KEY] = config
    app[STORE_KEY] = store
    app[CLUSTER_KEY] = cluster
    app[CLOCK_KEY] = clock
    app[TOKENS_KEY] = load_tokens(config)
    app[ROLES_KEY] = {route.name: route.role for route in ROUTES}
    if app[TOKENS_KEY].empty:
        log.warning("no API tokens configured: every /api/v1 request is refused; set api.readTokens")
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler, name=route.name)
    return app
