"""The two seams of the queue: the index store and the controller's view of the cluster.

The API and the controller are written against these, so the Redis store and the test doubles are
interchangeable and the one contract suite checks each.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from webhook.grants import PoolPlan
from webhook.models import Admitted, Holder, KeptPlace, QueueEntry


class StoreUnavailable(Exception):
    """The store did not answer (or answered with an error): callers degrade instead of failing."""


class QueueStore(Protocol):
    """The shared index of the queue (Redis in production). Every multi-key change is atomic.

    Keys are ``namespace/name`` (``pod_key``). The pods stay the durable truth: ``rebuild``
    replaces a pool's index with what the pods say.
    """

    async def enqueue(self, pool: str, entry: QueueEntry, keep_place_seconds: float) -> QueueEntry:
        """Add the entry unless present (ZADD NX). A live tombstone for the same user and server
        gives the entry the old requested-at, also when the entry was already queued without an
        enqueue (a rebuild wrote it: the pod came back while a pass was under way); the returned
        entry carries the effective time."""

    async def position(self, pool: str, key: str) -> tuple[int, int] | None:
        """(1-based position, queue length), or None when the key is not queued. O(log n)."""

    async def remove(self, pool: str, key: str, keep_place_seconds: float) -> QueueEntry | None:
        """Drop a queued entry; with keep_place_seconds > 0 leave a tombstone for its user/server."""

    async def grant(self, pool: str, key: str, holder: Holder) -> bool:
        """Move a queued entry to the holders and record its wait; False if it was not queued."""

    async def release(self, pool: str, key: str, at: datetime) -> Holder | None:
        """Drop a holder and record the release time (the freed-slice rate feeds the ETA)."""

    async def entries(self, pool: str, start: int = 0, stop: int = -1) -> list[QueueEntry]:
        """Queued entries in order, positions start+1..stop+1 (inclusive stop, -1 = all)."""

    async def holders(self, pool: str) -> list[Holder]:
        """Current holders, oldest grant first."""

    async def length(self, pool: str) -> int:
        """Number of queued entries."""

    async def move(self, pool: str, key: str, position: int) -> QueueEntry | None:
        """Admin: put a queued entry at a 1-based position; returns it with its new requested-at."""

    async def rebuild(self, pool: str, entries: Sequence[QueueEntry], holders: Sequence[Holder]) -> None:
        """Replace the pool's FIFO and holders with these (tombstones and statistics stay)."""

    async def find_user(self, user: str, server: str) -> list[tuple[str, QueueEntry | Holder]]:
        """Every (pool, entry or holder) of one user's server, across pools."""

    async def wait_samples(self, pool: str, limit: int = 100) -> list[float]:
        """The most recent observed waits in seconds (queued -> granted), newest first."""

    async def release_times(self, pool: str, limit: int = 100) -> list[datetime]:
        """The most recent slice release times, newest first."""

    async def kept_places(self, pool: str) -> list[KeptPlace]:
        """The pool's live kept places, earliest place first."""

    async def note_admitted(self, pool: str, admitted: Admitted) -> None:
        """Record a pod ``/mutate`` is admitting to the pool (kept about a minute)."""

    async def admitted(self, pool: str, since: datetime) -> list[Admitted]:
        """The pods noted with ``since`` at or after ``since``, oldest first."""

    async def ping(self) -> bool:
        """True when the store answers."""


class ClusterView(Protocol):
    """What the API needs from the controller's view of the cluster (this replica's watch cache)
    and the two pod writes an admin edit makes. Implemented by ``webhook.controller``."""

    def pool_usage(self, pool: str) -> tuple[int, int]:
        """(capacity, in use) of a pool in slices as last observed; (0, 0) before the first sync."""

    def slices_through(self, pool: str, key: str) -> int | None:
        """Slices the queued pod ``key`` and everyone ahead of it ask for (its position when every
        profile asks for one); None when the watch cache does not have it queued."""

    def pod_exists(self, namespace: str, name: str) -> bool | None:
        """True/False from the watch cache; None when this replica has no cache (not synced)."""

    def readers_plan(self, pool: str) -> PoolPlan | None:
        """The pool as the watch cache has it: the queue in FIFO order (requested-at, then
        namespace/name, as the store orders it), the holders, capacity and use. The API answers
        from it while the store is down. None before the cache synced (or for an unknown pool)."""

    async def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete a pod (admin ``queue rm``); False when it was already gone."""

    async def set_requested_at(self, namespace: str, name: str, when: datetime) -> None:
        """Rewrite a pod's requested-at annotation (admin ``queue move``), so a rebuild keeps it."""
