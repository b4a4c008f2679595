"""Wiring: the Redis store, the queue controller and the API, as server components.

Each part opens its resources in a ``cleanup_ctx`` component and never blocks start-up: admission
must answer while Redis or the API server is unreachable (I4). The API is created up front and
reaches the controller through ``ClusterProxy``, which answers "not synced" until the controller
exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from webhook import metrics
from webhook.api import create_api_app
from webhook.clock import ApiServerClock
from webhook.config import Config
from webhook.controller import QueueController
from webhook.grants import PoolPlan
from webhook.history import HistoryStore
from webhook.kube import Kube, load_client
from webhook.models import Admitted
from webhook.protocols import QueueStore, StoreUnavailable
from webhook.redis_store import RedisQueueStore
from webhook.server.health import READINESS
from webhook.server.parts import Parts

if TYPE_CHECKING:
    from webhook.dashboard.source import PoolSnapshot

log = logging.getLogger(__name__)


class ClusterProxy:
    """``ClusterView`` for the API until (and while) the controller runs."""

    def __init__(self) -> None:
        self.controller: QueueController | None = None

    def pool_usage(self, pool: str) -> tuple[int, int]:
        return self.controller.pool_usage(pool) if self.controller else (0, 0)

    def slices_through(self, pool: str, key: str) -> int | None:
        return self.controller.slices_through(pool, key) if self.controller else None

    def pod_exists(self, namespace: str, name: str) -> bool | None:
        return self.controller.pod_exists(namespace, name) if self.controller else None

    def readers_plan(self, pool: str) -> PoolPlan | None:
        return self.controller.readers_plan(pool) if self.controller else None

    async def delete_pod(self, namespace: str, name: str) -> bool:
        if self.controller is None:
            raise RuntimeError("the Kubernetes API is not connected yet; retry in a few seconds")
        return await self.controller.delete_pod(namespace, name)

    async def set_requested_at(self, namespace: str, name: str, when: datetime) -> None:
        if self.controller is None:
            raise RuntimeError("the Kubernetes API is not connected yet; retry in a few seconds")
        await self.controller.set_requested_at(namespace, name, when)


class StoreNotes:
    """``AdmissionNotes`` on the Redis store. A note has a short deadline, and a failed one rests
    the notes for a few seconds, so a slow or dead Redis adds almost nothing to admissions (those
    pods are stamped later instead: ``webhook.server.admission``)."""

    def __init__(self, store: QueueStore, timeout: float = 0.25, rest: float = 5.0) -> None:
        self.store = store
        self.timeout = timeout
        self.rest = rest
        self.resting_until = 0.0  # monotonic

    async def note(self, pool: str, admitted: Admitted) -> bool:
        if time.monotonic() < self.resting_until:
            return False
        try:
            async with asyncio.timeout(self.timeout):
                await self.store.note_admitted(pool, admitted)
        except (StoreUnavailable, TimeoutError):
            self.resting_until = time.monotonic() + self.rest
            return False
        return True


def build(config: Config, clock: ApiServerClock) -> Parts:
    """Components, API sub-app and admission notes for ``create_app``; the controller's API
    answers teach ``clock``."""
    store = RedisQueueStore.from_config(config)
    cluster = ClusterProxy()

    async def redis_store(app: web.Application) -> AsyncIterator[None]:
        yield
        await store.aclose()

    async def queue_controller(app: web.Application) -> AsyncIterator[None]:
        if not config.controller.enabled:
            yield
            return
        supervisor = ControllerSupervisor(config, store, cluster, clock)
        app[READINESS].report("controller", supervisor.status)
        task = asyncio.create_task(supervisor.run(), name="queue-controller")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    notes = StoreNotes(store, timeout=min(0.25, config.redis.timeout_seconds))
    dashboard = build_dashboard(config, store, cluster) if config.dashboard.enabled else None
    return Parts([redis_store, queue_controller], create_api_app(config, store, cluster), notes, dashboard)


def build_dashboard(config: Config, store: RedisQueueStore, cluster: ClusterProxy) -> web.Application:
    """The admins' dashboard (``webhook.dashboard``): live holders and queue from the queue store
    and the controller's cache, reports from the history; served on ``dashboard.port``."""
    from webhook.dashboard import DashboardSettings, HistorySource, create_dashboard_site, snapshot_from, with_activity
    from webhook.dashboard.hub import HubActivity

    d = config.dashboard
    settings = DashboardSettings(
        hub_api_url=d.hub_api_url,
        hub_public_url=d.hub_public_url,
        service_prefix=d.service_prefix,
        oauth_redirect_uri=d.oauth_redirect_uri,
        api_token=d.api_token,
        names_for=d.names_for,
        allow_non_admins=d.allow_non_admins,
        admin_groups=tuple(d.admin_groups),
        max_days=max(1, int(config.history.retention_days)),
        default_days=min(7, max(1, int(config.history.retention_days))),
    )
    history = HistoryStore.from_config(config)
    activity = HubActivity(settings)

    async def snapshot(pool: str) -> PoolSnapshot:
        capacity, in_use = cluster.pool_usage(pool)
        holders, entries = await asyncio.gather(store.holders(pool), store.entries(pool, 0, -1))
        live = snapshot_from(pool, capacity, in_use, holders, entries, datetime.now(UTC))
        return with_activity(live, await activity.last_activity(h.user for h in live.holders))

    def capacities() -> dict[str, int | None]:
        """The configured count, or (``auto``) what the controller counts on the nodes now."""
        return {
            name: pool.capacity if isinstance(pool.capacity, int) else (cluster.pool_usage(name)[0] or None)
            for name, pool in config.pools.items()
        }

    app = create_dashboard_site(settings, HistorySource(history, snapshot, capacities))

    async def close(app: web.Application) -> None:
        await history.aclose()

    app.on_cleanup.append(close)
    return app


class ControllerSupervisor:
    """Runs the queue controller and restarts it, with backoff, when it fails.

    Nothing else would notice: admission and the API keep answering while a dead controller grants
    nothing and reports ``inUse: 0``. A failure is logged with its error, counted
    (``gpu_queue_controller_restarts_total``, ``gpu_queue_controller_up``) and shown in ``/readyz``;
    the replica stays ready, because admission does not need the controller (I4).
    """

    def __init__(self, config: Config, store: RedisQueueStore, cluster: ClusterProxy, clock: ApiServerClock) -> None:
        self.config = config
        self.clock = clock
        self.store = store
        self.cluster = cluster
        self.state = "starting"
        self.restarts = 0
        self.last_error = ""
        self.retry_at = 0.0  # monotonic

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"state": self.state, "restarts": self.restarts}
        if self.last_error:
            status["lastError"] = self.last_error
        if self.state == "restarting":
            status["retryInSeconds"] = round(max(0.0, self.retry_at - time.monotonic()), 1)
        return status

    async def run(self) -> None:
        delay = self.config.controller.restart_backoff_seconds
        while True:
            started = time.monotonic()
            try:
                await _run_controller(self.config, self.store, self.cluster, self.clock, on_running=self._running)
                error = "the controller returned"  # it runs until cancelled: returning is a failure too
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            metrics.CONTROLLER_UP.set(0)
            metrics.CONTROLLER_RESTARTS.inc()
            if time.monotonic() - started > 60 * self.config.controller.restart_backoff_seconds:
                delay = self.config.controller.restart_backoff_seconds  # it ran a good while: start over
            self.state, self.restarts, self.last_error = "restarting", self.restarts + 1, error[:500]
            self.retry_at = time.monotonic() + delay
            log.error(
                "queue controller failed; restarting it",
                extra={"ctx": {"error": self.last_error, "restarts": self.restarts, "retry_seconds": delay}},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)

    def _running(self) -> None:
        self.state = "running"
        metrics.CONTROLLER_UP.set(1)


async def _run_controller(
    config: Config,
    store: RedisQueueStore,
    cluster: ClusterProxy,
    clock: ApiServerClock,
    *,
    on_running: Callable[[], None],
) -> None:
    """Connect to the API server (retrying: it may come up after us), then run the controller."""
    delay = 1.0
    while True:
        try:
            api = await load_client(config.kubeconfig)
            break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # no kubeconfig yet, bad file, ...: say so and keep admitting
            log.warning(
                "cannot load the Kubernetes client configuration; the queue controller waits",
                extra={"ctx": {"error": str(exc), "retry_seconds": delay}},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)
    kube = Kube(api, on_date=clock.observe)
    history = (
        HistoryStore.from_config(
            config,
            retention=timedelta(days=config.history.retention_days),
            cap=config.history.max_events_per_pool,
            clock=clock.now,
        )
        if config.history.enabled
        else None
    )
    controller = QueueController(config, kube, store, history=history, clock=clock.now)
    cluster.controller = controller
    on_running()
    try:
        await controller.run()
    finally:
        cluster.controller = None
        await kube.aclose()
        if history is not None:
            await history.aclose()
