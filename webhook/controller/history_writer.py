"""The queue's history, written off the grant path: the leader notes each arrival, grant,
release and cancel (``note``), and one task writes them to Redis in batches (``run``).

History is for sizing pools, not for the queue: a grant never waits for it, a full buffer drops
the newest note (counted in ``gpu_queue_history_events_total{outcome="dropped"}``), and a Redis
that does not answer loses the batch (counted ``"lost"``, one warning per outage) while the queue
goes on. A new leader notes the arrivals of the pods already queued again (it cannot tell them
from new ones): readers pair events by key and take the first of each kind.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Literal

from webhook.cluster_view import PodView
from webhook.config import History
from webhook.history import HistoryEvent, HistoryStore, request_key
from webhook.metrics import HISTORY_EVENTS
from webhook.protocols import StoreUnavailable

log = logging.getLogger(__package__)  # the controller's one logger
BUFFER = 10_000
BATCH = 500

Kind = Literal["arrival", "grant", "release", "cancel"]


class HistoryWriter:
    """``note`` from the leader's pass (never blocks); ``run`` drains to ``store``."""

    def __init__(self, store: HistoryStore, settings: History) -> None:
        self.store = store
        self.names = settings.record_user_names
        self.buffer: asyncio.Queue[HistoryEvent] = asyncio.Queue(maxsize=BUFFER)
        self._failing = False

    def note(
        self,
        kind: Kind,
        view: PodView,
        pool: str,
        slices: int,
        at: datetime,
        *,
        wait: float | None = None,
        hold: float | None = None,
    ) -> None:
        asked = view.requested_at or view.created_at or at
        event = HistoryEvent(
            kind=kind,
            at=at,
            pool=pool,
            slices=max(1, slices),
            wait_seconds=wait,
            hold_seconds=hold,
            key=request_key(view.namespace, view.name, asked),
            user=(view.user or None) if self.names else None,
        )
        try:
            self.buffer.put_nowait(event)
        except asyncio.QueueFull:
            HISTORY_EVENTS.labels("dropped").inc()

    async def run(self) -> None:
        while True:
            batch = [await self.buffer.get()]
            while len(batch) < BATCH and not self.buffer.empty():
                batch.append(self.buffer.get_nowait())
            await self.write(batch)

    async def write(self, batch: list[HistoryEvent]) -> None:
        try:
            await self.store.record_many(batch)
        except StoreUnavailable as exc:
            HISTORY_EVENTS.labels("lost").inc(len(batch))
            if not self._failing:
                self._failing = True
                log.warning("queue history not written; the queue goes on", extra={"ctx": {"error": str(exc)}})
            return
        if self._failing:
            self._failing = False
            log.info("queue history written again")
        HISTORY_EVENTS.labels("written").inc(len(batch))
