"""Stuck heads (I7): a granted pod that is not Ready within its pool's ``admitTimeoutSeconds``.

Each is reported once: a metric, a log line and a Warning Event on the pod. Under ``stuckPolicy:
release`` it also loses its slice: it is marked released first (so no leader, this one or a later
one, counts it as in use again), then deleted. On a node that is gone the delete may hang or fail;
the slice is handed on regardless, as the mark already freed it.
"""

from __future__ import annotations

import contextlib
import logging
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

log = logging.getLogger(__package__)  # the controller's one logger, whichever module writes


class StuckHeads:
    """Finds, reports and (per policy) releases stuck holders; remembers whom it reported."""

    def __init__(self, config: Config, kube: Kube, cache: WatchCache, events: EventWriter) -> None:
        self.config = config
        self.kube = kube
        self.cache = cache
        self.events = events
        self.reported: set[str] = set()

    def forget(self, key: str) -> None:
        """The pod left: a pod of the same name later is judged afresh."""
        self.reported.discard(key)

    async def check(self, name: str, pool_plan: PoolPlan, now: datetime) -> None:
        pool: Pool = self.config.pools[name]
        limit = timedelta(seconds=pool.admit_timeout_seconds)
        for holder in pool_plan.holders:
            if holder.ready or holder.granted_at is None or holder.key in self.reported or holder.deleting:
                continue
            if now - holder.granted_at < limit:
                continue
            self.reported.add(holder.key)
            action = "released" if pool.stuck_policy is StuckPolicy.RELEASE else "kept"
            metrics.STUCK.labels(name, action).inc()
            waited = human((now - holder.granted_at).total_seconds())
            if pool.stuck_policy is StuckPolicy.RELEASE:
                message = f"GPU slice granted {waited} ago but the server is not ready: releasing it for the next user"
            else:
                message = (
                    f"GPU slice granted {waited} ago but the server is not ready; it keeps the slice (policy keep)"
                )
            log.warning("stuck admission", extra={"ctx": {"pool": name, "pod": holder.key, "action": action}})
            self.events.emit(holder, "StuckAdmission", message, kind="Warning")
            if pool.stuck_policy is StuckPolicy.RELEASE:
                await self._release(holder)

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
