"""In-memory test doubles for the ``QueueStore`` and ``ClusterView`` Protocols.

``MemoryQueueStore`` passes the same contract suite as the Redis store
(``tests/redis/test_store_contract.py``), so the API and CLI tests that use it see what production
sees: FIFO by score (requested-at in microseconds) then key, ZADD NX, a key never both queued and
holding, tombstones that give a returning user their old place, grants that take the queue's
requested-at and record waits, capped statistics, Redis-style inclusive ranges. ``down = True``
makes every call raise ``StoreUnavailable`` like a Redis outage; ``calls`` records every call.

``FakeCluster`` answers the watch cache's plan from the pod views given to it (``add``), planned by
the real ``webhook.grants.plan``, so the API's answers from the cache see the controller's order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from webhook.cluster_view import PodView
from webhook.config import Pool
from webhook.grants import PoolPlan, plan
from webhook.models import ADMITTED_KEEP, RANK_SPAN, Admitted, Holder, KeptPlace, QueueEntry
from webhook.protocols import StoreUnavailable
from webhook.redis_store import STATS_CAP

T = TypeVar("T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _time_of(score: float) -> datetime:
    """Exact, as the Redis store reads a score: integer microseconds, not a float timestamp."""
    return _EPOCH + timedelta(microseconds=int(score))


@dataclass(frozen=True)
class _Tomb:
    """A kept place: the earlier requested-at of a user's server that left, until it expires."""

    requested_at: datetime
    removed_at: datetime
    expires_at: datetime
    rank: int = 0  # a kept place is given back only at the same groupPriority rank


@dataclass
class _PoolState:
    queue: dict[str, QueueEntry] = field(default_factory=dict)
    holders: dict[str, Holder] = field(default_factory=dict)
    tombstones: dict[tuple[str, str], _Tomb] = field(default_factory=dict)  # (user, server) -> place
    waits: list[float] = field(default_factory=list)  # newest first, capped
    releases: list[datetime] = field(default_factory=list)  # newest first, capped
    admitted: list[Admitted] = field(default_factory=list)  # by since

    def ordered(self) -> list[QueueEntry]:
        return sorted(self.queue.values(), key=lambda e: (e.score, e.key))


def _push(values: list[T], value: T, cap: int) -> None:
    """LPUSH + LTRIM: newest first, at most ``cap``."""
    values.insert(0, value)
    del values[cap:]


class MemoryQueueStore:
    """A faithful, single-process ``QueueStore``."""

    def __init__(self, clock: Callable[[], datetime] = _now, *, stats_cap: int = STATS_CAP) -> None:
        self.clock = clock
        self.stats_cap = max(1, stats_cap)
        self.down = False
        self.pools: dict[str, _PoolState] = {}
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def _pool(self, pool: str, op: str, *args: object) -> _PoolState:
        self.calls.append((op, (pool, *args)))
        if self.down:
            raise StoreUnavailable(f"{op}: connection refused (test double is down)")
        return self.pools.setdefault(pool, _PoolState())

    async def enqueue(self, pool: str, entry: QueueEntry, keep_place_seconds: float) -> QueueEntry:
        state = self._pool(pool, "enqueue", entry.key, keep_place_seconds)
        queued = state.queue.get(entry.key)
        if queued is None and entry.key in state.holders:
            return entry  # never both queued and holding: not queued, position says None
        if queued is not None:
            entry = queued  # already queued (a rebuild may have written it): its stored entry
        now = self.clock()
        place = (entry.user, entry.server)
        if entry.user and keep_place_seconds > 0:
            tomb = state.tombstones.pop(place, None)  # used once, live or not
            live = (
                tomb is not None
                and tomb.expires_at > now
                and tomb.removed_at + timedelta(seconds=keep_place_seconds) > now
            )
            if tomb is not None and live and tomb.rank == entry.rank and tomb.requested_at < entry.requested_at:
                entry = entry.model_copy(update={"requested_at": tomb.requested_at})
        state.queue[entry.key] = entry
        return entry

    async def position(self, pool: str, key: str) -> tuple[int, int] | None:
        state = self._pool(pool, "position", key)
        if key not in state.queue:
            return None
        ordered = state.ordered()
        return [e.key for e in ordered].index(key) + 1, len(ordered)

    async def remove(self, pool: str, key: str, keep_place_seconds: float) -> QueueEntry | None:
        state = self._pool(pool, "remove", key, keep_place_seconds)
        entry = state.queue.pop(key, None)
        if entry is not None and keep_place_seconds > 0 and entry.user:
            now = self.clock()
            place = (entry.user, entry.server)
            old = state.tombstones.get(place)
            keep = entry.requested_at
            if old is not None and old.rank == entry.rank and old.expires_at > now and old.requested_at < keep:
                keep = old.requested_at
            state.tombstones[place] = _Tomb(keep, now, now + timedelta(seconds=keep_place_seconds), entry.rank)
        return entry

    async def grant(self, pool: str, key: str, holder: Holder) -> bool:
        state = self._pool(pool, "grant", key)
        entry = state.queue.pop(key, None)
        if entry is None:
            return False
        # The queue's requested-at (a kept place included) wins; the entry fills what the holder lacks.
        state.holders[key] = holder.model_copy(
            update={
                "requested_at": entry.requested_at,
                "user": holder.user or entry.user,
                "server": holder.server or entry.server,
                "uid": holder.uid or entry.uid,
                "rank": entry.rank,
            }
        )
        wait = max(0.0, (holder.granted_at - entry.requested_at).total_seconds())
        _push(state.waits, wait, self.stats_cap)
        return True

    async def release(self, pool: str, key: str, at: datetime) -> Holder | None:
        state = self._pool(pool, "release", key)
        holder = state.holders.pop(key, None)
        if holder is not None:
            _push(state.releases, at, self.stats_cap)
        return holder

    async def entries(self, pool: str, start: int = 0, stop: int = -1) -> list[QueueEntry]:
        ordered = self._pool(pool, "entries", start, stop).ordered()
        n = len(ordered)
        # ZRANGE semantics: negative indexes count from the end, stop is inclusive.
        lo = start + n if start < 0 else start
        hi = stop + n if stop < 0 else stop
        lo = max(lo, 0)
        hi = min(hi, n - 1)
        return ordered[lo : hi + 1] if lo <= hi else []

    async def holders(self, pool: str) -> list[Holder]:
        state = self._pool(pool, "holders")
        return sorted(state.holders.values(), key=lambda h: (h.granted_at, h.key))

    async def length(self, pool: str) -> int:
        return len(self._pool(pool, "length").queue)

    async def move(self, pool: str, key: str, position: int) -> QueueEntry | None:
        if position < 1:
            raise ValueError(f"position must be >= 1, got {position}")
        state = self._pool(pool, "move", key, position)
        entry = state.queue.get(key)
        if entry is None:
            return None
        others = [e for e in state.ordered() if e.key != key]
        index = min(position, len(others) + 1) - 1
        if index == [e.key for e in state.ordered()].index(key):
            return entry
        before = others[index - 1].score if index > 0 else None
        after = others[index].score if index < len(others) else None
        if before is None and after is not None:
            candidates = [after - 1]
        elif after is None and before is not None:
            candidates = [before + 1]
        elif before is not None and after is not None:
            candidates = [float((before + after) // 2)] if after - before >= 2 else [before, after]
        else:
            candidates = [entry.score]
        # Like the Redis script: with no room between the neighbours, keep the candidate whose
        # tie-break by key lands on the target place (or the last one tried).
        for score in candidates:
            state.queue[key] = entry.model_copy(update={"requested_at": _time_of(score - entry.rank * RANK_SPAN)})
            if [e.key for e in state.ordered()].index(key) == index:
                break
        return state.queue[key]

    async def rebuild(self, pool: str, entries: Sequence[QueueEntry], holders: Sequence[Holder]) -> None:
        state = self._pool(pool, "rebuild", len(entries), len(holders))
        state.holders = {h.key: h for h in holders}
        state.queue = {e.key: e for e in entries if e.key not in state.holders}  # holding wins

    async def find_user(self, user: str, server: str) -> list[tuple[str, QueueEntry | Holder]]:
        if self.down:
            raise StoreUnavailable("find_user: connection refused (test double is down)")
        self.calls.append(("find_user", (user, server)))
        if not user:
            return []
        out: list[tuple[str, QueueEntry | Holder]] = []
        for name, state in sorted(self.pools.items()):
            out += [(name, e) for e in state.ordered() if (e.user, e.server) == (user, server)]
            out += [(name, h) for h in state.holders.values() if (h.user, h.server) == (user, server)]
        return out

    async def wait_samples(self, pool: str, limit: int = 100) -> list[float]:
        return self._pool(pool, "wait_samples", limit).waits[: max(limit, 1)]

    async def release_times(self, pool: str, limit: int = 100) -> list[datetime]:
        return self._pool(pool, "release_times", limit).releases[: max(limit, 1)]

    async def kept_places(self, pool: str) -> list[KeptPlace]:
        state, now = self._pool(pool, "kept_places"), self.clock()
        places = [
            KeptPlace(user=user, server=server, requested_at=t.requested_at, expires_at=t.expires_at)
            for (user, server), t in state.tombstones.items()
            if t.expires_at > now
        ]
        return sorted(places, key=lambda p: (p.requested_at, p.user, p.server))

    async def note_admitted(self, pool: str, admitted: Admitted) -> None:
        state = self._pool(pool, "note_admitted", admitted)
        state.admitted = sorted(
            {a for a in [*state.admitted, admitted] if a.since >= admitted.since - ADMITTED_KEEP},
            key=lambda a: (a.since, a.model_dump_json()),
        )

    async def admitted(self, pool: str, since: datetime) -> list[Admitted]:
        return [a for a in self._pool(pool, "admitted", since).admitted if a.since >= since]

    async def ping(self) -> bool:
        return not self.down


class FakeCluster:
    """A ``ClusterView`` that records the two admin writes. ``synced = False``: no cache yet."""

    def __init__(self) -> None:
        self.usage: dict[str, tuple[int, int]] = {}
        self.through: dict[tuple[str, str], int] = {}  # (pool, key) -> slices through, when set
        self.pods: set[tuple[str, str]] = set()
        self.views: list[PodView] = []  # the pods of the pools, as the watch cache has them
        self.synced = True
        self.deleted: list[tuple[str, str]] = []
        self.requested_at: dict[tuple[str, str], datetime] = {}
        self.fail_writes = False
        self.pools: dict[str, Pool] = {}  # the pools' configs the plans use (default: Pool())

    def pool_usage(self, pool: str) -> tuple[int, int]:
        return self.usage.get(pool, (0, 0))

    def slices_through(self, pool: str, key: str) -> int | None:
        return self.through.get((pool, key))

    def pod_exists(self, namespace: str, name: str) -> bool | None:
        if not self.synced:
            return None
        return (namespace, name) in self.pods

    def add(self, view: PodView) -> None:
        """A pod in the cache: it exists, and waits or holds in its pool as its view says."""
        self.views.append(view)
        self.pods.add((view.namespace, view.name))

    def readers_plan(self, pool: str) -> PoolPlan | None:
        """The real plan of the views, with capacity and use as ``usage`` says (as ``pool_usage``)."""
        if not self.synced:
            return None
        capacity, in_use = self.pool_usage(pool)
        config = self.pools.get(pool, Pool()).model_copy(update={"capacity": capacity})
        return replace(plan(pool, config, self.views, []), in_use=in_use)

    async def delete_pod(self, namespace: str, name: str) -> bool:
        if self.fail_writes:
            raise RuntimeError("the API server refused the delete (test double)")
        self.deleted.append((namespace, name))
        if (namespace, name) in self.pods:
            self.pods.discard((namespace, name))
            return True
        return False

    async def set_requested_at(self, namespace: str, name: str, when: datetime) -> None:
        if self.fail_writes:
            raise RuntimeError("the API server refused the patch (test double)")
        self.requested_at[(namespace, name)] = when


def at(seconds: float, base: datetime = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)) -> datetime:
    """A fixed instant ``seconds`` after a base time, so tests read as a timeline."""
    return base + timedelta(seconds=seconds)


__all__ = ["FakeCluster", "MemoryQueueStore", "at"]
