"""Stuck heads (I7): a granted pod that is not Ready within its pool's ``admitTimeoutSeconds``
and is not making progress (``webhook.starting``): not scheduled, failing to start (image pull
errors, crash loops, volumes that never mount), or on a node that never started it.

Each is reported once: a metric, a log line and a Warning Event on the pod saying why. Under
``stuckPolicy: release`` it also loses its slice: it is marked released first (so no leader, this
one or a later one, counts it as in use again), then deleted. On a node that is gone the delete may
hang or fail; the slice is handed on regardless, as the mark already freed it.

A slow start (pulling a large image, init containers, a server that runs but is not ready yet) is
never released: the user waited their turn. It is told once (a ``SlowStart`` Event) and judged
again on later passes, so a pull that turns into ``ImagePullBackOff`` is released then.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from datetime import datetime, timedelta

from webhook import metrics
from webhook.cluster_view import PodView
from webhook.config import Config, Pool, StuckPolicy
from webhook.controller.cache import WatchCache
from webhook.controller.events import EventWriter, human
from webhook.grants import PoolPlan
from webhook.kube import Kube, KubeError, pod_path
from webhook.pods import pointer
from webhook.starting import Stage, StartState, with_events

log = logging.getLogger(__package__)  # the controller's one logger, whichever module writes
EVENTS_EVERY_SECONDS = 15.0  # how often a slow start's Events are read again


class StuckHeads:
    """Finds, reports and (per policy) releases stuck holders; remembers whom it reported."""

    def __init__(self, config: Config, kube: Kube, cache: WatchCache, events: EventWriter) -> None:
        self.config = config
        self.kube = kube
        self.cache = cache
        self.events = events
        self.reported: set[str] = set()
        self.slow: set[str] = set()  # told they keep their slice while they start
        self._read_events: dict[str, tuple[float, StartState]] = {}  # key -> (monotonic, refined state)

    def forget(self, key: str) -> None:
        """The pod left: a pod of the same name later is judged afresh."""
        self.reported.discard(key)
        self.slow.discard(key)
        self._read_events.pop(key, None)

    async def check(self, name: str, pool_plan: PoolPlan, now: datetime) -> None:
        pool: Pool = self.config.pools[name]
        limit = timedelta(seconds=pool.admit_timeout_seconds)
        for holder in pool_plan.holders:
            if holder.ready or holder.granted_at is None or holder.key in self.reported or holder.deleting:
                continue
            if now - holder.granted_at < limit:
                continue
            state = await self._state(holder)
            waited = human((now - holder.granted_at).total_seconds())
            if not state.stuck:
                self._slow(name, holder, state, waited)
                continue
            self.reported.add(holder.key)
            action = "released" if pool.stuck_policy is StuckPolicy.RELEASE else "kept"
            metrics.STUCK.labels(name, action).inc()
            if pool.stuck_policy is StuckPolicy.RELEASE:
                message = f"GPU slice granted {waited} ago but {state.describe()}: releasing it for the next user"
            else:
                message = f"GPU slice granted {waited} ago but {state.describe()}; it keeps the slice (policy keep)"
            log.warning(
                "stuck admission",
                extra={"ctx": {"pool": name, "pod": holder.key, "action": action, "stage": state.stage.value,
                               "reason": state.reason}},
            )  # fmt: skip
            self.events.emit(holder, "StuckAdmission", message, kind="Warning")
            if pool.stuck_policy is StuckPolicy.RELEASE:
                await self._release(holder)

    async def _state(self, holder: PodView) -> StartState:
        """The holder's start as its status tells it, refined by its Events while it is being created
        (read at most every ``EVENTS_EVERY_SECONDS``: a volume that never mounts shows only there)."""
        state = holder.start
        if state.stage is not Stage.STARTING:
            return state
        seen = self._read_events.get(holder.key)
        if seen is not None and time.monotonic() - seen[0] < EVENTS_EVERY_SECONDS:
            return seen[1]
        try:
            listing = await self.kube.request(
                "GET",
                f"/api/v1/namespaces/{holder.namespace}/events",
                query={"fieldSelector": f"involvedObject.name={holder.name},involvedObject.kind=Pod"},
            )
        except KubeError as exc:  # judged by its status alone: still starting, so it keeps its slice
            log.warning("could not read a pod's events", extra={"ctx": {"pod": holder.key, "error": str(exc)}})
            return state
        mine = [
            e
            for e in listing.get("items") or []
            if (e.get("involvedObject") or {}).get("uid") in ("", None, holder.uid)
        ]
        refined = with_events(state, mine)
        self._read_events[holder.key] = (time.monotonic(), refined)
        return refined

    def _slow(self, pool: str, holder: PodView, state: StartState, waited: str) -> None:
        """Tell a holder that is slow but progressing, once, that it keeps its slice."""
        if holder.key in self.slow:
            return
        self.slow.add(holder.key)
        metrics.STUCK.labels(pool, "slow").inc()
        log.info(
            "slow start kept",
            extra={"ctx": {"pool": pool, "pod": holder.key, "stage": state.stage.value, "reason": state.reason}},
        )
        self.events.emit(
            holder,
            "SlowStart",
            f"GPU slice granted {waited} ago and {state.describe()}: the slice is kept while it makes progress",
        )

    async def _release(self, holder: PodView) -> None:
        """Mark the pod released (it stops counting as in use, even for a future leader), then
        delete it. When the mark fails the pod keeps its slice: reported once, it is not tried
        again by this leader (a new leader would)."""
        marker = f"/metadata/annotations/{pointer(self.config.released_annotation)}"
        try:
            await self.kube.patch_json(
                pod_path(holder.namespace, holder.name), [{"op": "add", "path": marker, "value": "stuck"}]
            )
        except KubeError as exc:
            log.warning("could not mark a stuck pod released", extra={"ctx": {"pod": holder.key, "error": str(exc)}})
            return
        self.cache.record(replace(holder, released=True))
        self.cache.slice_freed(holder.pool or "")
        with contextlib.suppress(KubeError):
            await self.kube.delete(pod_path(holder.namespace, holder.name))
