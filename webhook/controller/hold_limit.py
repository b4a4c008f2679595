"""The hold limit, carried out by the leader (``webhook.hold_limit`` decides).

A warning marks the pod (``hold-warned-at``), posts a Warning Event the user sees on the hub's
pages (the hub's home page reads it through the queue API) and logs it; a stop asks the hub to
stop the server (``webhook.hub_api``), so the hub knows, and KubeSpawner deletes the pod. A stop
the hub refuses is logged and posted as an Event once per reason and tried again a minute later;
a pod the hub did not start (no hub user on it) is never stopped. Withdrawing a warning removes
the mark when the queue emptied.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import datetime

from webhook import metrics
from webhook.cluster_view import PodView
from webhook.config import Config
from webhook.controller.cache import WatchCache
from webhook.controller.events import EventWriter, human
from webhook.grants import PoolPlan
from webhook.hold_limit import HoldDecision, decide
from webhook.hub_api import HubApiError, HubServers
from webhook.kube import Kube, KubeError, pod_path
from webhook.pods import format_time, pointer

log = logging.getLogger(__package__)  # the controller's one logger, whichever module writes
RETRY_SECONDS = 60.0  # a stop the hub refused, or one it accepted but that has not happened yet


class HoldLimit:
    """Warns, stops and withdraws per ``decide``; remembers the stops in flight."""

    def __init__(self, config: Config, kube: Kube, cache: WatchCache, events: EventWriter, hub: HubServers) -> None:
        self.config = config
        self.kube = kube
        self.cache = cache
        self.events = events
        self.hub = hub
        self.asked: dict[str, float] = {}  # key -> monotonic time the hub was asked to stop it
        self.failed: dict[str, str] = {}  # key -> the last reason told

    def forget(self, key: str) -> None:
        self.asked.pop(key, None)
        self.failed.pop(key, None)

    async def check(self, name: str, pool_plan: PoolPlan, now: datetime) -> datetime | None:
        """Carry out the decision for one pool; when to look again (None: nothing pending)."""
        pool = self.config.pools[name]
        if pool.max_hold_seconds_when_queued is None:
            return None
        decision: HoldDecision = decide(pool, pool_plan, now)
        limit = human(pool.max_hold_seconds_when_queued)
        waiting = sum(1 for p in pool_plan.queue if p.key not in pool_plan.capped)
        for warning in decision.warn:
            await self._warn(name, warning.holder, warning.stop_at, now, limit, waiting)
        for holder in decision.stop:
            await self._stop(name, holder, now, limit, waiting)
        for holder in decision.withdraw:
            await self._withdraw(name, holder)
        return decision.next_at

    async def _mark(self, holder: PodView, value: str | None) -> bool:
        path = f"/metadata/annotations/{pointer(self.config.hold_warned_annotation)}"
        patch = [{"op": "add", "path": path, "value": value}] if value is not None else [{"op": "remove", "path": path}]
        try:
            await self.kube.patch_json(pod_path(holder.namespace, holder.name), patch)
        except KubeError as exc:
            if exc.status != 404:
                log.warning("could not mark the hold limit", extra={"ctx": {"pod": holder.key, "error": str(exc)}})
            return False
        return True

    async def _warn(
        self, name: str, holder: PodView, stop_at: datetime, now: datetime, limit: str, waiting: int
    ) -> None:
        if not await self._mark(holder, format_time(now)):
            return
        self.cache.amend(replace(holder, hold_warned_at=now))
        metrics.HOLD_LIMIT.labels(name, "warned").inc()
        log.info(
            "hold limit: holder warned",
            extra={"ctx": {"pool": name, "pod": holder.key, "user": holder.user, "stop_at": format_time(stop_at),
                           "waiting": waiting, "policy": "maxHoldSecondsWhenQueued"}},
        )  # fmt: skip
        self.events.emit(
            holder,
            "HoldLimitWarning",
            f"{_people(waiting)} waiting for a GPU slice and this server has held one for over {limit}: it will be "
            f"stopped at {stop_at:%H:%M} UTC (in {human((stop_at - now).total_seconds())}). Save your work.",
            kind="Warning",
        )

    async def _stop(self, name: str, holder: PodView, now: datetime, limit: str, waiting: int) -> None:
        asked = self.asked.get(holder.key)
        if asked is not None and time.monotonic() - asked < RETRY_SECONDS:
            return
        if not holder.user:
            self._failed(name, holder, "the pod names no hub user (hub.jupyter.org/username): it is not stopped")
            return
        self.asked[holder.key] = time.monotonic()
        try:
            outcome = await self.hub.stop(holder.user, holder.server)
        except HubApiError as exc:
            self._failed(name, holder, str(exc))
            return
        held = human((now - holder.granted_at).total_seconds()) if holder.granted_at else limit
        metrics.HOLD_LIMIT.labels(name, "stopped").inc()
        log.info(
            "hold limit: server stopped through the hub",
            extra={"ctx": {"pool": name, "pod": holder.key, "user": holder.user, "server": holder.server,
                           "held": held, "waiting": waiting, "hub": outcome, "policy": "maxHoldSecondsWhenQueued"}},
        )  # fmt: skip
        self.events.emit(
            holder,
            "HoldLimitStop",
            f"Stopped through the hub after holding a GPU slice for {held} while {_people(waiting).lower()} waiting "
            f"(the pool's limit is {limit} while others wait)",
            kind="Warning",
        )

    def _failed(self, name: str, holder: PodView, reason: str) -> None:
        metrics.HOLD_LIMIT.labels(name, "failed").inc()
        if self.failed.get(holder.key) == reason:
            return
        self.failed[holder.key] = reason
        log.warning("hold limit: could not stop the server", extra={"ctx": {"pod": holder.key, "reason": reason}})
        self.events.emit(
            holder, "HoldLimitStopFailed", f"gpu-queue could not stop this server: {reason}", kind="Warning"
        )

    async def _withdraw(self, name: str, holder: PodView) -> None:
        if not await self._mark(holder, None):
            return
        self.cache.amend(replace(holder, hold_warned_at=None))
        self.forget(holder.key)
        metrics.HOLD_LIMIT.labels(name, "withdrawn").inc()
        log.info("hold limit: warning withdrawn, nobody waits", extra={"ctx": {"pool": name, "pod": holder.key}})
        self.events.emit(
            holder, "HoldLimitWithdrawn", "Nobody is waiting for a GPU slice any more: this server is not stopped"
        )


def _people(count: int) -> str:
    return "1 person is" if count == 1 else f"{count} people are"
