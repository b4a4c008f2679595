"""Position Events: a queued pod hears its place in the queue, with a wait estimate.

A new Event goes out when a pod's position changes, at most one per pod per
``eventMinIntervalSeconds``, so a queue of hundreds moving up by one does not flood the API
server; stock KubeSpawner shows the newest on the spawn page. Changes inside the interval are
coalesced: the pod hears its newest position as soon as the interval allows (``tell`` returns
when that is, and the controller wakes then), so the last Event is never a stale one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime

from webhook.cluster_view import PodView
from webhook.config import Config, Pool
from webhook.controller.events import EventWriter
from webhook.controller.store_breaker import StoreBreaker
from webhook.eta import estimate, format_eta
from webhook.grants import PoolPlan, ahead_by_priority
from webhook.records import holder_of

log = logging.getLogger(__package__)  # the controller's one logger, whichever module writes


def priority_note(pool: Pool, ahead: Sequence[PodView], view: PodView) -> str:
    """``; 2 ahead of you are in instructors, who go first`` when a better rank is ahead."""
    better = ahead_by_priority(pool, ahead, view)
    if not better:
        return ""
    parts = [f"{count} in {group}" for group, count in better.items()]
    return f"; ahead of you by priority: {', '.join(parts)} (groupPriority goes first)"


class PositionEvents:
    """Remembers what each queued pod was last told, and when."""

    def __init__(self, config: Config, breaker: StoreBreaker, events: EventWriter) -> None:
        self.config = config
        self.breaker = breaker
        self.events = events
        # key -> (position last told, the group limit it was told holds it back, monotonic time)
        self.posted: dict[str, tuple[int, str, float]] = {}

    def forget(self, key: str) -> None:
        """The pod left the queue (granted or gone): should it queue again, it hears at once."""
        self.posted.pop(key, None)

    def reset(self) -> None:
        """A new leader tells everyone afresh: it cannot know what the last one said."""
        self.posted.clear()

    async def tell(self, name: str, pool_plan: PoolPlan, now: datetime) -> float | None:
        """Queue an Event for each queued pod of the pool whose position changed; the monotonic
        time the next held-back change may go out (None: nothing held back)."""
        if not pool_plan.queue:
            return None
        release_times: list[datetime] = []
        store = self.breaker.store
        if store is not None:
            release_times = await self.breaker.call("release_times", store.release_times(name)) or []
        pool = self.config.pools[name]
        interval = self.config.controller.event_min_interval_seconds
        clock = time.monotonic()
        length = len(pool_plan.queue)
        holders = [holder_of(h) for h in pool_plan.holders]
        todo: list[tuple[PodView, str]] = []
        due: float | None = None
        for index, (view, slices) in enumerate(zip(pool_plan.queue, pool_plan.slices_through, strict=True)):
            position = index + 1
            cap = pool_plan.capped.get(view.key)
            told = (position, cap.group if cap is not None else "")
            last = self.posted.get(view.key)
            if last is not None and last[:2] == told:
                continue
            if last is not None and clock - last[2] < interval:
                due = min(due if due is not None else float("inf"), last[2] + interval)  # the newest, then
                continue
            if cap is not None:
                message = (
                    f"Waiting for a GPU slice: position {position} of {length}; your group {cap.group} holds "
                    f"{cap.in_use} of its {cap.limit} slices, so you go when one of them is free (others go meanwhile)"
                )
                log.info(
                    "group limit: held back",
                    extra={"ctx": {"pool": name, "pod": view.key, "user": view.user, "group": cap.group,
                                   "limit": cap.limit, "in_use": cap.in_use, "policy": "groupLimits"}},
                )  # fmt: skip
                self.posted[view.key] = (*told, clock)
                todo.append((view, message))
                continue
            eta = estimate(
                slices=slices,
                capacity=pool_plan.capacity,
                in_use=pool_plan.in_use,
                holders=holders,
                release_times=release_times,
                cull_timeout_seconds=pool.cull_timeout_seconds,
                now=now,
            )
            message = f"Waiting for a GPU slice: position {position} of {length}, {format_eta(eta)}"
            message += priority_note(pool, pool_plan.queue[:index], view)
            self.posted[view.key] = (*told, clock)
            todo.append((view, message))
        for view, message in todo:
            self.events.emit(view, "Queued", message)
        return due
