"""Health and metrics: ``/healthz``, ``/readyz``, ``/metrics``, and the plain-HTTP side app.

Liveness and readiness depend on this process alone, never on Redis or the Kubernetes API, so an
outage elsewhere neither restarts a replica nor takes it out of the Service (invariant I4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from webhook import metrics
from webhook.server.errors import Handler, json_errors


class Readiness:
    """Ready when nothing is pending: set up with ``startup`` pending, cleared when the app started.

    ``serve`` adds ``listening`` until the HTTPS site accepts, and ``stopping`` on SIGTERM so the
    endpoint is taken out of the Service while in-flight requests finish.
    """

    def __init__(self, *pending: str) -> None:
        self.pending: set[str] = set(pending)
        # Parts that report their state in /readyz without deciding readiness (the controller:
        # admission must stay in the Service while it restarts).
        self.reports: dict[str, Callable[[], dict[str, Any]]] = {}

    def report(self, name: str, status: Callable[[], dict[str, Any]]) -> None:
        self.reports[name] = status

    def details(self) -> dict[str, dict[str, Any]]:
        return {name: status() for name, status in sorted(self.reports.items())}

    @property
    def ready(self) -> bool:
        return not self.pending

    def hold(self, reason: str) -> None:
        self.pending.add(reason)

    def clear(self, reason: str) -> None:
        self.pending.discard(reason)


READINESS: web.AppKey[Readiness] = web.AppKey("readiness", Readiness)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the event loop answers. Nothing else, so an outage elsewhere never restarts us."""
    return web.json_response({"status": "ok"})


def _readyz(readiness: Readiness) -> Handler:
    async def readyz(request: web.Request) -> web.Response:
        """Readiness: started and serving TLS. Not Redis, not the API: admission works without them."""
        details = readiness.details()
        if readiness.ready:
            return web.json_response({"status": "ready", **({"components": details} if details else {})})
        body = {"status": "not ready", "waiting_for": sorted(readiness.pending), "components": details}
        return web.json_response({k: v for k, v in body.items() if v}, status=503)

    return readyz


async def metrics_handler(request: web.Request) -> web.Response:
    """Prometheus text, or OpenMetrics when the scraper asks for it."""
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encode(metrics.REGISTRY), headers={"Content-Type": content_type})


def add_health_routes(app: web.Application, readiness: Readiness) -> None:
    """The same three routes on the HTTPS app and on the side port."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", _readyz(readiness))
    app.router.add_get("/metrics", metrics_handler)


def create_metrics_app(readiness: Readiness) -> web.Application:
    """The plain-HTTP side port: /metrics, /healthz and /readyz only (no admission, no API)."""
    app = web.Application(middlewares=[json_errors])
    app[READINESS] = readiness
    add_health_routes(app, readiness)
    return app
