"""The app factory and the process around it: ``create_app``, ``build_components``, ``serve``.

``create_app`` holds only what admission needs; everything that needs Redis or the Kubernetes API
(store, controller, API) is plugged in by ``build_components`` as ``cleanup_ctx`` components that
must not block startup on an outage, so the server starts, is ready and admits pods without them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from webhook.clock import ApiServerClock
from webhook.config import Config, ConfigError, load_config
from webhook.server.admission import CONFIG, AdmissionNotes, add_admission_routes
from webhook.server.errors import json_errors
from webhook.server.health import READINESS, Readiness, add_health_routes, create_metrics_app
from webhook.server.parts import Component, Parts
from webhook.server.tls import CertReloader, TlsError

log = logging.getLogger("gpu_queue.server")


def create_app(
    config: Config,
    *,
    components: Sequence[Component] = (),
    api_app: web.Application | None = None,
    clock: ApiServerClock | None = None,
    notes: AdmissionNotes | None = None,
) -> web.Application:
    """The main (HTTPS) application: admission, health, metrics and, when given, the API."""
    app = web.Application(client_max_size=config.server.max_body_bytes, middlewares=[json_errors])
    app[CONFIG] = config
    readiness = Readiness("startup")
    app[READINESS] = readiness
    add_admission_routes(app, (clock or ApiServerClock()).now, notes)
    add_health_routes(app, readiness)
    if api_app is not None:
        app.add_subapp("/api/v1", api_app)
    app.cleanup_ctx.extend(components)

    async def started(app: web.Application) -> None:
        # on_startup runs after every cleanup_ctx component has started.
        readiness.clear("startup")

    app.on_startup.append(started)
    return app


def build_components(config: Config, clock: ApiServerClock | None = None) -> Parts:
    """The parts that need Redis or the Kubernetes API: cleanup_ctx components, the API sub-app
    and the admission notes (``webhook.server.admission``).

    This is the one place where the Redis store, the queue controller (leader election, watches,
    gate removal) and the queue API are wired into the server. Each component opens its resources
    before ``yield`` and closes them after; none may block or fail startup on an outage, because
    admission must stay available without Redis or the API server (see ``webhook.service``).
    """
    from webhook.service import build

    return build(config, clock or ApiServerClock())


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT): then stop accepting, drain, clean up."""
    reloader = CertReloader(config.tls)
    reloader.load()
    clock = ApiServerClock()  # learnt by the controller's API calls, used by admission's stamps
    parts = build_components(config, clock)
    app = create_app(
        config,
        components=[reloader.component(), *parts.components],
        api_app=parts.api_app,
        clock=clock,
        notes=parts.notes,
    )
    readiness = app[READINESS]
    readiness.hold("listening")

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10.0)
    side_runner: web.AppRunner | None = None
    # No access log: the OAuth callback's URL carries the hub's one-time code.
    dashboard_runner = web.AppRunner(parts.dashboard_app, access_log=None) if parts.dashboard_app else None
    try:
        await runner.setup()
        await web.TCPSite(runner, config.server.host, config.server.port, ssl_context=reloader.context).start()
        if config.server.metrics_port:
            side_runner = web.AppRunner(create_metrics_app(readiness), access_log=None)
            await side_runner.setup()
            await web.TCPSite(side_runner, config.server.host, config.server.metrics_port).start()
        if dashboard_runner is not None:
            await dashboard_runner.setup()
            await web.TCPSite(dashboard_runner, config.server.host, config.dashboard.port).start()
        # Everything loaded at start (modules, config, pydantic schemas) lives for the whole run:
        # move it out of the collector's reach. Otherwise each (rare) full collection scans it
        # all, about 30 ms on a small node, stalling every in-flight admission: the far tail.
        gc.collect()
        gc.freeze()
        readiness.clear("listening")
        log.info(
            "serving",
            extra={
                "ctx": {
                    "https": f"{config.server.host}:{config.server.port}",
                    "metrics": config.server.metrics_port or None,
                    "dashboard": config.dashboard.port if dashboard_runner is not None else None,
                }
            },
        )
        await stop.wait()
        log.info("shutting down: draining in-flight requests")
        readiness.hold("stopping")
    finally:
        # The main site (stop accepting, finish in-flight, run cleanups); metrics last.
        await runner.cleanup()
        if side_runner is not None:
            await side_runner.cleanup()
        if dashboard_runner is not None:
            await dashboard_runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    log.info("stopped")


def run_serve(args: argparse.Namespace) -> int:
    """``gpu-queue serve``: exit 2 on a bad config, 1 when TLS or the port fails, 0 on a clean stop."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    from webhook.logs import setup_logging

    setup_logging(config.log_level)
    try:
        asyncio.run(serve(config))
    except TlsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"error: cannot listen on {config.server.host} (server.port {config.server.port}, "
            f"server.metricsPort {config.server.metrics_port}, dashboard.port {config.dashboard.port}): "
            f"{exc.strerror or exc}; "
            "another process may hold the port",
            file=sys.stderr,
        )
        return 1
    return 0
