"""What the dashboard shows, behind one small Protocol, so the pages never talk to Redis directly.

``DashboardSource`` answers three questions: which pools, how each stands right now
(``PoolSnapshot``) and what its history says (``webhook.report.PoolReport``). ``HistorySource``
is the service's implementation: reports from the ``HistoryStore`` (built by
``webhook.report.build_report``, as ``gpu-queue report`` does), live state from a callable the
service wires to the queue store and the controller's cache (``snapshot_from`` shapes it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from webhook.history import HistoryEvent
from webhook.models import Holder, QueueEntry
from webhook.report import PoolReport, build_report, default_what_if_counts


@dataclass(frozen=True)
class HolderRow:
    """A pod that holds a slice: whose, since when, and (when the hub reports it) the server's
    last activity, the time the idle culler counts from."""

    user: str
    server: str
    since: datetime
    last_activity: datetime | None = None


@dataclass(frozen=True)
class QueuedRow:
    """A pod in the queue, in FIFO order: whose, and how long it has waited so far."""

    user: str
    server: str
    waited_seconds: float


@dataclass(frozen=True)
class PoolSnapshot:
    """One pool as it stands: ``queue`` is in FIFO order (head first)."""

    pool: str
    capacity: int
    in_use: int
    holders: tuple[HolderRow, ...]
    queue: tuple[QueuedRow, ...]
    taken_at: datetime


class DashboardSource(Protocol):
    """The dashboard's only view of the service. Any method may raise: the page then says that
    part is unavailable and shows the rest."""

    async def pools(self) -> list[str]: ...

    async def snapshot(self, pool: str) -> PoolSnapshot: ...

    async def report(self, pool: str, days: int) -> PoolReport: ...


class HistoryReader(Protocol):
    """The part of ``webhook.history.HistoryStore`` the reports need."""

    async def read(
        self, pool: str, since: datetime | None = None, until: datetime | None = None, limit: int | None = None
    ) -> list[HistoryEvent]: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


def snapshot_from(
    pool: str,
    capacity: int,
    in_use: int,
    holders: Iterable[Holder],
    entries: Iterable[QueueEntry],
    now: datetime,
) -> PoolSnapshot:
    """The live state from what the queue store answers (``holders``, ``entries(pool, 0, -1)``)
    and the controller's ``pool_usage``: the shapes the API already reads."""
    return PoolSnapshot(
        pool=pool,
        capacity=capacity,
        in_use=in_use,
        holders=tuple(
            HolderRow(user=h.user, server=h.server, since=h.granted_at)
            for h in sorted(holders, key=lambda h: h.granted_at)
        ),
        queue=tuple(
            QueuedRow(user=e.user, server=e.server, waited_seconds=max((now - e.requested_at).total_seconds(), 0.0))
            for e in entries
        ),
        taken_at=now,
    )


def with_activity(snapshot: PoolSnapshot, activity: Mapping[tuple[str, str], datetime]) -> PoolSnapshot:
    """The snapshot with each holder's last activity (keyed by user and server name) filled in."""
    holders = tuple(replace(h, last_activity=activity.get((h.user, h.server))) for h in snapshot.holders)
    return replace(snapshot, holders=holders)


def _report(
    pool: str, events: Sequence[HistoryEvent], since: datetime, until: datetime, capacity: int | None
) -> PoolReport:
    counts = default_what_if_counts(capacity, events, since, until)
    return build_report(pool, events, since, until, capacity, list(counts))


class HistorySource:
    """Reports from the history store, live state from ``snapshots``.

    A report reads up to ``days`` of events, which at the history's cap is a lot of Redis work
    for a page that reloads every 30 s in every open tab: each (pool, days) report is kept for
    ``report_ttl_seconds``.
    """

    def __init__(
        self,
        history: HistoryReader,
        snapshots: Callable[[str], Awaitable[PoolSnapshot]],
        capacities: Callable[[], Mapping[str, int | None]],
        *,
        clock: Callable[[], datetime] = _utcnow,
        report_ttl_seconds: float = 60.0,
    ) -> None:
        """``capacities``: the configured pools, each with its slice count (None when auto), asked
        on every call so a reloaded config shows up."""
        self._history = history
        self._snapshots = snapshots
        self._capacities = capacities
        self._clock = clock
        self._ttl = timedelta(seconds=report_ttl_seconds)
        self._reports: dict[tuple[str, int], tuple[datetime, PoolReport]] = {}

    async def pools(self) -> list[str]:
        return list(self._capacities())

    async def snapshot(self, pool: str) -> PoolSnapshot:
        return await self._snapshots(pool)

    async def report(self, pool: str, days: int) -> PoolReport:
        now = self._clock()
        cached = self._reports.get((pool, days))
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        since = now - timedelta(days=days)
        events = await self._history.read(pool, since, now)
        capacity = self._capacities().get(pool)
        # Pure CPU work over up to the history's cap: off the loop, which also answers admission.
        report = await asyncio.to_thread(_report, pool, events, since, now, capacity)
        self._reports = {k: v for k, v in self._reports.items() if now - v[0] < self._ttl}
        self._reports[(pool, days)] = (now, report)
        return report
