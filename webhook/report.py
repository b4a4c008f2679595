"""``gpu-queue report``: a pool's recorded history (``webhook.history``) turned into the numbers an
admin sizes the pool by, and a what-if replay (``webhook.whatif``) of the same requests against
other slice counts. Pure: events in, a ``PoolReport`` and text out; the command reads Redis.

Pairing. The events of one request share a key. A reader takes the *first* (earliest) event of
each kind per key, because a new leader notes the arrivals of the pods already queued again, and
events may arrive out of order (late writes, two replicas' clocks). A request is replayed from
its arrival, so keys without an arrival in the period (it was trimmed, or came before ``since``)
are left out of the replay and counted (``skipped_without_arrival``). Per request:

* arrival + grant (+ release): granted; it holds for the release's ``hold_seconds``, or, when it
  still holds at ``until``, from its grant to ``until`` (a lower bound: its real hold is longer).
* arrival + release without a grant (the grant's note was lost): granted; the release's hold.
* arrival + cancel: it gave up after the cancel's wait. Its hold is unknown (it never held), and
  0 is used, so larger what-if pools look slightly better than they would be for such requests.
  A key with both a grant and a cancel (a kept place: the user left and came back) was granted.
* arrival only: still waiting at ``until``; it waits as long as it takes, and its hold is unknown:
  the pool's median observed hold is used (releases in the period; without any, the holds of
  those still holding at ``until``; without those, 0).

Observed numbers. Waits are the grant events' ``wait_seconds`` (every grant in the period, also
of requests that arrived before it); per day means per UTC date of the grant (waits), arrival
(requests) or cancel. "Someone was waiting" is the time-weighted share of [since, until] during
which at least one request had arrived and was neither granted nor cancelled; a request whose
arrival is not in the period starts waiting at its grant or cancel minus its recorded wait.

Slices in use. A step series from grant and release events. What was held at ``since`` is not
recorded, so the series assumes 0 there, plus the holders it can see were carried in: a release
whose grant is not in the period (or whose hold reaches back before ``since``). A release whose
grant note was lost but whose hold starts inside the period is stepped up at release - hold. A
request granted before ``since`` that still holds at ``until`` leaves no event: the series
undercounts by it. The changes of one instant are summed before they apply (a slice handed over
at once, as the replay does, is neither counted twice nor a step).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Final

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from webhook.admin_render import render_table
from webhook.history import HistoryEvent, HistoryKind
from webhook.whatif import (
    EPSILON_SECONDS,
    ReplayResult,
    Request,
    format_duration,
    percentile,
    summary_line,
    what_if,
)

_US: Final = timedelta(microseconds=1)
STARTED_WITHIN_SECONDS: Final = 300.0  # the what-if's "started within 5 min"
NO_HISTORY_NOTE: Final = "history is recorded by the leader from the time it runs a version with history"


class _Report(BaseModel):
    """Report models: camelCase in JSON, snake_case in Python."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, alias_generator=to_camel, extra="forbid")


class DayStats(_Report):
    """One UTC date of the period."""

    day: date
    arrivals: int = Field(ge=0)
    grants: int = Field(ge=0)
    cancels: int = Field(ge=0)
    wait_p50_seconds: float | None = None
    wait_p95_seconds: float | None = None


class InUseStep(_Report):
    """From ``at`` on, ``in_use`` slices were held (until the next step)."""

    at: datetime
    in_use: int = Field(ge=0)


class WhatIfRow(_Report):
    """One replay of the period's requests against ``slices`` slices."""

    slices: int = Field(ge=0)
    requests: int = Field(ge=0)
    granted: int = Field(ge=0)
    abandoned: int = Field(ge=0)
    never_fit: int = Field(ge=0)
    wait_p50_seconds: float | None = None
    wait_p95_seconds: float | None = None
    wait_mean_seconds: float | None = None
    share_queued: float | None = None
    share_started_within_5_min: float | None = None
    summary: str


class PoolReport(_Report):
    """What ``gpu-queue report`` says about one pool over [since, until]; see the module docstring."""

    pool: str
    since: datetime
    until: datetime
    period_days: float
    capacity: int | None = Field(None, description="the configured slice count; None when auto or unknown")
    events: int = Field(ge=0, description="events in the period, duplicates included")
    arrivals: int = Field(ge=0)
    grants: int = Field(ge=0)
    releases: int = Field(ge=0)
    cancels: int = Field(ge=0)
    still_waiting: int = Field(ge=0, description="arrived, neither granted nor cancelled by until")
    still_holding: int = Field(ge=0, description="granted, not released by until")
    skipped_without_arrival: int = Field(ge=0, description="requests left out of the replay: no arrival")
    wait_p50_seconds: float | None = None
    wait_p95_seconds: float | None = None
    wait_mean_seconds: float | None = None
    hold_p50_seconds: float | None = Field(None, description="median hold of the releases in the period")
    by_day: list[DayStats]
    share_time_waiting: float | None = Field(None, description="None when the period is empty")
    in_use_at_since: int = Field(ge=0, description="holders carried into the period (seen by their release)")
    in_use: list[InUseStep]
    peak_in_use: int = Field(ge=0)
    what_if: list[WhatIfRow]


# --------------------------------------------------------------------------------------------
# Pairing
# --------------------------------------------------------------------------------------------


@dataclass
class _Trail:
    """The first event of each kind of one request."""

    first: dict[HistoryKind, HistoryEvent] = field(default_factory=dict)

    def note(self, event: HistoryEvent) -> None:
        known = self.first.get(event.kind)
        if known is None or event.at < known.at:
            self.first[event.kind] = event

    def get(self, kind: HistoryKind) -> HistoryEvent | None:
        return self.first.get(kind)

    @property
    def slices(self) -> int:
        for kind in ("arrival", "grant", "release", "cancel"):
            event = self.first.get(kind)
            if event is not None:
                return event.slices
        return 1  # pragma: no cover - a trail has at least one event


def _trails(events: Iterable[HistoryEvent]) -> dict[str, _Trail]:
    trails: dict[str, _Trail] = {}
    for event in events:
        trails.setdefault(event.key, _Trail()).note(event)
    return trails


@dataclass(frozen=True)
class Pairing:
    """The requests of a period, and what could not be paired."""

    requests: list[Request]
    skipped_without_arrival: int
    still_waiting: int
    still_holding: int
    assumed_hold_seconds: float


def _seconds(later: datetime, earlier: datetime) -> float:
    return max((later - earlier).total_seconds(), 0.0)


def _median(values: Iterable[float]) -> float | None:
    return percentile(sorted(values), 50)


def _pair(trails: dict[str, _Trail], until: datetime) -> Pairing:
    releases = [r.hold_seconds for t in trails.values() if (r := t.get("release")) and r.hold_seconds is not None]
    holding = [
        _seconds(until, g.at) for t in trails.values() if (g := t.get("grant")) is not None and t.get("release") is None
    ]
    assumed = _median(releases)
    if assumed is None:
        assumed = _median(holding) or 0.0
    requests: list[tuple[datetime, str, Request]] = []
    skipped = waiting = still_holding = 0
    for key, trail in trails.items():
        arrival = trail.get("arrival")
        if arrival is None:
            skipped += 1
            continue
        grant, release, cancel = trail.get("grant"), trail.get("release"), trail.get("cancel")
        gave_up: float | None = None
        if release is not None:
            hold = release.hold_seconds
            if hold is None:
                hold = _seconds(release.at, grant.at if grant is not None else arrival.at)
        elif grant is not None:
            hold = _seconds(until, grant.at)
            still_holding += 1
        elif cancel is not None:
            hold = 0.0
            gave_up = cancel.wait_seconds if cancel.wait_seconds is not None else _seconds(cancel.at, arrival.at)
        else:
            hold = assumed
            waiting += 1
        request = Request(
            arrived_at=arrival.at.timestamp(), slices=arrival.slices, hold_seconds=hold, gave_up_after=gave_up
        )
        requests.append((arrival.at, key, request))
    requests.sort(key=lambda item: (item[0], item[1]))
    return Pairing([r for _, _, r in requests], skipped, waiting, still_holding, assumed)


def _in_period(events: Iterable[HistoryEvent], since: datetime | None, until: datetime) -> list[HistoryEvent]:
    return [e for e in events if e.at <= until and (since is None or e.at >= since)]


def pair_history(events: Iterable[HistoryEvent], until: datetime) -> Pairing:
    """Pair events by key into replayable requests (see the module docstring); events after
    ``until`` have not happened yet."""
    return _pair(_trails(_in_period(events, None, until)), until)


def requests_from_history(events: Iterable[HistoryEvent], until: datetime) -> list[Request]:
    """The requests to replay, by arrival; ``pair_history`` also says what was skipped."""
    return pair_history(events, until).requests


# --------------------------------------------------------------------------------------------
# Observed numbers
# --------------------------------------------------------------------------------------------


def _share_time_waiting(trails: Iterable[_Trail], since: datetime, until: datetime) -> float | None:
    """The union of the waiting intervals, clipped to the period, over its length."""
    span = (until - since).total_seconds()
    if span <= 0:
        return None
    intervals: list[tuple[datetime, datetime]] = []
    for trail in trails:
        arrival, grant, cancel = trail.get("arrival"), trail.get("grant"), trail.get("cancel")
        release = trail.get("release")
        ends = [e.at for e in (grant, cancel) if e is not None]
        if not ends and release is not None and release.hold_seconds is not None:
            ends.append(release.at - timedelta(seconds=release.hold_seconds))  # the lost grant
        end = min(ends) if ends else until
        if arrival is not None:
            start = arrival.at
        else:
            starts = [
                e.at - timedelta(seconds=e.wait_seconds) for e in (grant, cancel) if e and e.wait_seconds is not None
            ]
            if not starts:
                continue  # no arrival and no recorded wait: when it started waiting is unknown
            start = min(starts)
        start, end = max(start, since), min(end, until)
        if end > start:
            intervals.append((start, end))
    intervals.sort()
    total = 0.0
    current: tuple[datetime, datetime] | None = None
    for start, end in intervals:
        if current is None or start > current[1]:
            if current is not None:
                total += (current[1] - current[0]).total_seconds()
            current = (start, end)
        elif end > current[1]:
            current = (current[0], end)
    if current is not None:
        total += (current[1] - current[0]).total_seconds()
    return min(total / span, 1.0)


def _in_use(trails: Iterable[_Trail], since: datetime) -> tuple[int, list[InUseStep]]:
    """(holders carried in, step series starting at ``since``); see the module docstring. The
    changes of one instant are summed before they apply, so a handover is never a blip."""
    carried = 0
    changes: dict[datetime, int] = {}

    def change(at: datetime, delta: int) -> None:
        changes[at] = changes.get(at, 0) + delta

    for trail in trails:
        grant, release = trail.get("grant"), trail.get("release")
        slices = trail.slices
        if grant is not None:
            change(grant.at, slices)
            if release is not None:
                change(max(release.at, grant.at), -slices)  # a release stamped before its grant: clocks
        elif release is not None:
            change(release.at, -slices)
            granted = None if release.hold_seconds is None else release.at - timedelta(seconds=release.hold_seconds)
            if granted is not None and granted >= since:
                change(granted, slices)
            else:
                carried += slices
    level = carried
    steps = [InUseStep(at=since, in_use=carried)]
    for at in sorted(changes):
        level = max(level + changes[at], 0)
        if at == since:
            steps[0] = InUseStep(at=at, in_use=level)
        elif changes[at]:
            steps.append(InUseStep(at=at, in_use=level))
    return carried, steps


def in_use_series(events: Iterable[HistoryEvent], since: datetime, until: datetime) -> list[InUseStep]:
    """Slices in use over [since, until] as steps (for a peak before a report is built)."""
    return _in_use(_trails(_in_period(events, since, until)).values(), since)[1]


def _days(since: datetime, until: datetime, seen: Iterable[date]) -> list[date]:
    """Every UTC date the period touches; a period ending at midnight does not touch that date,
    unless an event is stamped exactly then."""
    first = since.astimezone(UTC).date()
    last = max([(until - _US if until > since else until).astimezone(UTC).date(), *seen])
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _by_day(trails: Iterable[_Trail], since: datetime, until: datetime) -> list[DayStats]:
    arrivals: dict[date, int] = {}
    cancels: dict[date, int] = {}
    waits: dict[date, list[float]] = {}
    grants: dict[date, int] = {}
    for trail in trails:
        if (a := trail.get("arrival")) is not None:
            arrivals[a.at.date()] = arrivals.get(a.at.date(), 0) + 1
        if (c := trail.get("cancel")) is not None:
            cancels[c.at.date()] = cancels.get(c.at.date(), 0) + 1
        if (g := trail.get("grant")) is not None:
            grants[g.at.date()] = grants.get(g.at.date(), 0) + 1
            if g.wait_seconds is not None:
                waits.setdefault(g.at.date(), []).append(g.wait_seconds)
    out = []
    for day in _days(since, until, [*arrivals, *cancels, *grants]):
        day_waits = sorted(waits.get(day, []))
        out.append(
            DayStats(
                day=day,
                arrivals=arrivals.get(day, 0),
                grants=grants.get(day, 0),
                cancels=cancels.get(day, 0),
                wait_p50_seconds=percentile(day_waits, 50),
                wait_p95_seconds=percentile(day_waits, 95),
            )
        )
    return out


def _row(result: ReplayResult) -> WhatIfRow:
    return WhatIfRow(
        slices=result.slices,
        requests=result.requests,
        granted=result.granted,
        abandoned=result.abandoned,
        never_fit=result.never_fit,
        wait_p50_seconds=result.p50_wait_seconds,
        wait_p95_seconds=result.p95_wait_seconds,
        wait_mean_seconds=result.mean_wait_seconds,
        share_queued=result.share_queued,
        share_started_within_5_min=result.share_started_within(STARTED_WITHIN_SECONDS),
        summary=summary_line(result),
    )


def default_what_if_counts(
    capacity: int | None, events: Iterable[HistoryEvent], since: datetime, until: datetime
) -> range:
    """The what-if rows when none are asked for: the capacity (auto: the peak in use seen) to
    twice it, as the issue of admins' sizing asks ("from the current count to 2x")."""
    base = capacity or max((s.in_use for s in in_use_series(events, since, until)), default=0) or 1
    return range(base, 2 * base + 1)


def build_report(
    pool: str,
    events: Iterable[HistoryEvent],
    since: datetime,
    until: datetime,
    capacity: int | None,
    what_if_counts: Sequence[int],
) -> PoolReport:
    """The report of one pool's events over [since, until] (others are ignored), with one what-if
    row per slice count in ``what_if_counts`` (in that order)."""
    if until < since:
        raise ValueError(f"until ({until.isoformat()}) is before since ({since.isoformat()})")
    kept = [e for e in _in_period(events, since, until) if e.pool == pool]
    trails = _trails(kept)
    pairing = _pair(trails, until)
    waits = sorted(g.wait_seconds for t in trails.values() if (g := t.get("grant")) and g.wait_seconds is not None)
    holds = (r.hold_seconds for t in trails.values() if (r := t.get("release")) and r.hold_seconds is not None)
    carried, steps = _in_use(trails.values(), since)

    def count(kind: HistoryKind) -> int:
        return sum(1 for t in trails.values() if t.get(kind) is not None)

    return PoolReport(
        pool=pool,
        since=since,
        until=until,
        period_days=(until - since) / timedelta(days=1),
        capacity=capacity,
        events=len(kept),
        arrivals=count("arrival"),
        grants=count("grant"),
        releases=count("release"),
        cancels=count("cancel"),
        still_waiting=pairing.still_waiting,
        still_holding=pairing.still_holding,
        skipped_without_arrival=pairing.skipped_without_arrival,
        wait_p50_seconds=percentile(waits, 50),
        wait_p95_seconds=percentile(waits, 95),
        wait_mean_seconds=math.fsum(waits) / len(waits) if waits else None,
        hold_p50_seconds=_median(holds),
        by_day=_by_day(trails.values(), since, until),
        share_time_waiting=_share_time_waiting(trails.values(), since, until),
        in_use_at_since=carried,
        in_use=steps,
        peak_in_use=max(s.in_use for s in steps),
        what_if=[_row(r) for r in what_if(pairing.requests, what_if_counts)],
    )


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


def format_seconds(seconds: float | None) -> str:
    """A statistic for people: ``0 s``, ``45 s``, ``6 min``, ``1.5 h``; ``-`` for none. Rounded up
    as the what-if sentences are (``whatif.format_duration``), so a table and its sentence agree."""
    if seconds is None:
        return "-"
    if seconds <= EPSILON_SECONDS:
        return "0 s"
    return format_duration(seconds).removeprefix("within ")


def format_share(share: float | None) -> str:
    """``18 %``; ``<1 %`` for a share that is not zero but rounds to it; ``-`` for none."""
    if share is None:
        return "-"
    if 0 < share < 0.005:
        return "<1 %"
    return f"{round(share * 100)} %"


def period_text(days: float) -> str:
    return "the last day" if days == 1 else f"the last {days:g} days"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def no_history_text(pool: str | None, days: float) -> str:
    """What the report says for a pool (or all pools: None) without events in the period."""
    where = f"for pool {pool} " if pool is not None else ""
    return f"no history recorded {where}in {period_text(days)}; {NO_HISTORY_NOTE}"


def _headline(r: PoolReport) -> str:
    period = period_text(r.period_days).removeprefix("the ")
    if r.capacity is not None:
        peak = f"peak {r.peak_in_use} of {_plural(r.capacity, 'slice')}"
    else:
        peak = f"peak {_plural(r.peak_in_use, 'slice')}"
    return (
        f"pool {r.pool}, {period}: {_plural(r.arrivals, 'request')}, {r.grants} granted, {r.cancels} cancelled; "
        f"wait p50 {format_seconds(r.wait_p50_seconds)}, p95 {format_seconds(r.wait_p95_seconds)}; "
        f"someone was waiting {format_share(r.share_time_waiting)} of the time; {peak} in use"
    )


def _notes(r: PoolReport) -> list[str]:
    span = f"{r.since:%Y-%m-%d %H:%M} to {r.until:%Y-%m-%d %H:%M} UTC"
    capacity = (
        f"capacity {r.capacity} (config)"
        if r.capacity is not None
        else "capacity auto: not known from the config (the peak in use is what was seen)"
    )
    notes = [f"{span}; {capacity}"]
    if r.still_waiting or r.still_holding:
        notes.append(f"at the end: {r.still_waiting} still waiting, {r.still_holding} still holding")
    if r.skipped_without_arrival:
        notes.append(
            f"{_plural(r.skipped_without_arrival, 'request')} without an arrival in the period "
            "(it came earlier or was trimmed) left out of the what-if"
        )
    if r.in_use_at_since:
        notes.append(f"{r.in_use_at_since} slices were already in use at the start (seen by their release)")
    return notes


def _day_table(r: PoolReport) -> str:
    rows = [
        [
            d.day.isoformat(),
            str(d.arrivals),
            str(d.grants),
            str(d.cancels),
            format_seconds(d.wait_p50_seconds),
            format_seconds(d.wait_p95_seconds),
        ]
        for d in r.by_day
    ]
    return render_table(["DAY (UTC)", "REQUESTS", "GRANTED", "CANCELLED", "WAIT P50", "WAIT P95"], rows)


def _what_if_table(r: PoolReport) -> str:
    rows = [
        [
            str(w.slices),
            format_seconds(w.wait_p50_seconds),
            format_seconds(w.wait_p95_seconds),
            format_share(w.share_queued),
            format_share(w.share_started_within_5_min),
            str(w.abandoned),
        ]
        for w in r.what_if
    ]
    return render_table(["SLICES", "WAIT P50", "WAIT P95", "QUEUED", "STARTED WITHIN 5 MIN", "GAVE UP"], rows)


def render_pool(r: PoolReport) -> str:
    """One pool's block: headline, notes, per-day table, what-if table and sentences."""
    if r.events == 0:
        return no_history_text(r.pool, r.period_days)
    parts = [_headline(r), *_notes(r), "", _day_table(r)]
    if r.what_if:
        parts += ["", "WHAT IF (the same requests replayed, strict FIFO)", _what_if_table(r), ""]
        parts += [w.summary for w in r.what_if]
    return "\n".join(parts)


def render_text(reports: Sequence[PoolReport]) -> str:
    """The admin report: one block per pool, blank-line separated."""
    if not reports:
        return f"no history recorded; {NO_HISTORY_NOTE}"
    return "\n\n".join(render_pool(r) for r in reports)


def report_json(reports: Sequence[PoolReport]) -> dict[str, list[dict[str, object]]]:
    """``-o json``: ``{"pools": [report, ...]}`` in camelCase."""
    return {"pools": [r.model_dump(mode="json", by_alias=True) for r in reports]}


__all__ = [
    "NO_HISTORY_NOTE",
    "STARTED_WITHIN_SECONDS",
    "DayStats",
    "InUseStep",
    "Pairing",
    "PoolReport",
    "WhatIfRow",
    "build_report",
    "format_seconds",
    "format_share",
    "in_use_series",
    "no_history_text",
    "pair_history",
    "period_text",
    "render_pool",
    "render_text",
    "report_json",
    "requests_from_history",
]
