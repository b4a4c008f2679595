"""The queue store as the controller uses it: optional, behind a breaker, flagged for rebuilds.

Grants are decided from the pods, so the controller runs without the store (none configured, or
Redis down) and every store call may degrade to None. After a failure the store is left alone for
``BACKOFF_SECONDS``: a hung Redis costs one timeout per backoff, never one per call, so grants do
not queue up behind it. A failed call may or may not have been applied, so the index is marked
dirty and rebuilt from the pods as soon as the store answers again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from webhook.protocols import QueueStore, StoreUnavailable

log = logging.getLogger(__package__)  # the controller's one logger, whichever module writes
T = TypeVar("T")
BACKOFF_SECONDS = 1.0


class StoreBreaker:
    """``store`` (None: no index at all), ``dirty`` (rebuild the index), ``retry_at`` (backoff end)."""

    def __init__(self, store: QueueStore | None, fence: Callable[[], bool] = lambda: True) -> None:
        self.store = store
        self.fence = fence  # the leader's check: a replica that does not surely lead writes nothing
        self.dirty = True  # the index may disagree with the pods: rebuild it from them
        self.retry_at = 0.0  # monotonic time the store may be tried again after a failure

    @property
    def resting(self) -> bool:
        """Within the backoff after a failure: calls are skipped, not tried."""
        return time.monotonic() < self.retry_at

    async def call(self, op: str, call: Coroutine[Any, Any, T]) -> T | None:
        """Await a store call; on an outage log (once per outage), mark dirty, back off, return None."""
        if self.resting or not self.fence():
            call.close()
            return None
        try:
            return await call
        except StoreUnavailable as exc:
            if not self.dirty:
                log.warning(
                    "queue store unavailable; granting from the pods alone",
                    extra={"ctx": {"op": op, "error": str(exc)}},
                )
            self.dirty = True
            self.retry_at = time.monotonic() + BACKOFF_SECONDS
            return None
