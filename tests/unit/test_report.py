"""``webhook.report``: pairing history events into requests, the observed numbers (per-day waits,
the share of time someone waited, slices in use), the what-if table, the text and the JSON; and
the ``gpu-queue report`` arguments. Timelines are small and computed by hand; the synthetic day
is played through the real queue discipline, so a replay at its own capacity must give it back."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from webhook.cli import build_parser, main
from webhook.history import HistoryEvent, HistoryKind
from webhook.report import (
    InUseStep,
    PoolReport,
    build_report,
    format_seconds,
    format_share,
    pair_history,
    render_text,
    report_json,
    requests_from_history,
)
from webhook.whatif import Request, replay_waits

POOL = "gpu"
T = datetime(2026, 11, 24, 0, 0, tzinfo=UTC)  # a Tuesday; "since" of the hand-made timelines
DAY = timedelta(days=1)


def at(seconds: float) -> datetime:
    return T + timedelta(seconds=seconds)


def ev(
    kind: HistoryKind,
    seconds: float,
    key: str,
    *,
    slices: int = 1,
    wait: float | None = None,
    hold: float | None = None,
    pool: str = POOL,
) -> HistoryEvent:
    return HistoryEvent(
        kind=kind, at=at(seconds), pool=pool, slices=slices, wait_seconds=wait, hold_seconds=hold, key=key
    )


def synthetic_day(day: datetime, *, pool: str = POOL, capacity: int = 4, seed: int = 1) -> list[HistoryEvent]:
    """A working day of one pool (08:00-18:00 UTC, busiest 09:00-12:00, one request in ten asks
    for 2 slices, one in four gives up after 5-20 min), played through gpu-queue's discipline at
    ``capacity`` slices (``replay_waits``) and recorded as the controller would. Whole seconds,
    so handovers at one instant stay at one instant."""
    rng = random.Random(seed)
    requests: list[Request] = []
    t = 8 * 3600
    while True:
        t += round(rng.expovariate(1 / (720 if 9 * 3600 <= t < 12 * 3600 else 1800)))
        if t >= 18 * 3600:
            break
        requests.append(
            Request(
                arrived_at=t,
                slices=2 if rng.random() < 0.1 else 1,
                hold_seconds=rng.randrange(20, 100) * 60,
                gave_up_after=rng.randrange(5, 20) * 60 if rng.random() < 0.25 else None,
            )
        )
    events: list[HistoryEvent] = []

    def add(kind: HistoryKind, when: datetime, r: Request, key: str, **durations: float) -> None:
        events.append(HistoryEvent(kind=kind, at=when, pool=pool, slices=r.slices, key=key, **durations))

    for i, (r, wait) in enumerate(zip(requests, replay_waits(requests, capacity), strict=True)):
        key = f"req-{i:03d}"
        arrived = day + timedelta(seconds=r.arrived_at)
        add("arrival", arrived, r, key)
        if wait is None:
            assert r.gave_up_after is not None
            add("cancel", arrived + timedelta(seconds=r.gave_up_after), r, key, wait_seconds=r.gave_up_after)
        else:
            granted = arrived + timedelta(seconds=wait)
            add("grant", granted, r, key, wait_seconds=wait)
            add("release", granted + timedelta(seconds=r.hold_seconds), r, key, hold_seconds=r.hold_seconds)
    return sorted(events, key=lambda e: e.at)


def report_of(events: list[HistoryEvent], *, until: datetime = T + DAY, capacity: int | None = 4) -> PoolReport:
    return build_report(POOL, events, T, until, capacity, range(4, 9))


# --------------------------------------------------------------------------------- pairing


def test_an_arrival_grant_and_release_pair_into_one_request_holding_the_release_hold() -> None:
    events = [ev("arrival", 0, "a", slices=2), ev("grant", 10, "a", wait=10), ev("release", 70, "a", hold=60)]
    assert requests_from_history(events, until=at(100)) == [
        Request(arrived_at=T.timestamp(), slices=2, hold_seconds=60, gave_up_after=None)
    ]


def test_a_cancelled_request_gave_up_after_its_wait_and_holds_zero() -> None:
    events = [ev("arrival", 0, "c"), ev("cancel", 30, "c", wait=30)]
    assert requests_from_history(events, until=at(100)) == [
        Request(arrived_at=T.timestamp(), slices=1, hold_seconds=0, gave_up_after=30)
    ]


def test_a_request_still_waiting_at_until_waits_on_and_holds_the_pools_median_hold() -> None:
    done = [
        e
        for k, hold in (("h1", 60), ("h2", 100), ("h3", 20))
        for e in (ev("arrival", 0, k), ev("release", hold, k, hold=hold))
    ]
    pairing = pair_history([*done, ev("arrival", 50, "w")], until=at(100))
    assert pairing.assumed_hold_seconds == 60  # nearest-rank median of 20, 60, 100
    assert pairing.still_waiting == 1
    waiting = [r for r in pairing.requests if r.arrived_at == at(50).timestamp()]
    assert waiting == [Request(arrived_at=at(50).timestamp(), slices=1, hold_seconds=60, gave_up_after=None)]


def test_a_request_still_holding_at_until_holds_from_its_grant_to_until() -> None:
    pairing = pair_history([ev("arrival", 0, "h"), ev("grant", 10, "h", wait=10)], until=at(100))
    assert pairing.still_holding == 1
    assert pairing.requests == [Request(arrived_at=T.timestamp(), slices=1, hold_seconds=90, gave_up_after=None)]


def test_events_after_until_have_not_happened_yet() -> None:
    events = [ev("arrival", 0, "h"), ev("grant", 10, "h", wait=10), ev("release", 500, "h", hold=490)]
    assert requests_from_history(events, until=at(100))[0].hold_seconds == 90


def test_a_grant_without_its_arrival_is_skipped_and_counted() -> None:
    events = [ev("grant", 10, "orphan", wait=25), ev("release", 40, "orphan", hold=30), ev("arrival", 5, "a")]
    pairing = pair_history(events, until=at(100))
    assert pairing.skipped_without_arrival == 1
    assert [r.arrived_at for r in pairing.requests] == [at(5).timestamp()]
    assert report_of(events).skipped_without_arrival == 1


def test_duplicate_and_out_of_order_events_pair_by_the_first_of_each_kind() -> None:
    # A new leader notes the arrival again; a late write lands after the release.
    events = [
        ev("release", 70, "a", hold=60),
        ev("arrival", 0, "a"),
        ev("grant", 10, "a", wait=10),
        ev("arrival", 0, "a"),
        ev("grant", 40, "a", wait=40),
    ]
    assert requests_from_history(events, until=at(100)) == [
        Request(arrived_at=T.timestamp(), slices=1, hold_seconds=60, gave_up_after=None)
    ]
    report = report_of(events)
    assert (report.arrivals, report.grants, report.releases, report.events) == (1, 1, 1, 5)
    assert report.wait_p50_seconds == 10


def test_a_kept_place_that_was_cancelled_and_then_granted_counts_as_granted() -> None:
    events = [ev("arrival", 0, "k"), ev("cancel", 20, "k", wait=20), ev("grant", 50, "k", wait=50)]
    assert requests_from_history(events, until=at(100)) == [
        Request(arrived_at=T.timestamp(), slices=1, hold_seconds=50, gave_up_after=None)
    ]


def test_requests_come_out_in_arrival_order() -> None:
    events = [ev("arrival", 30, "late"), ev("arrival", 10, "early"), ev("arrival", 20, "middle")]
    assert [r.arrived_at for r in requests_from_history(events, until=at(100))] == [
        at(10).timestamp(),
        at(20).timestamp(),
        at(30).timestamp(),
    ]


# --------------------------------------------------------------------------------- observed numbers


def test_waits_are_summarised_per_utc_day_of_the_grant_and_requests_per_day_of_arrival() -> None:
    day1 = [e for i in range(1, 21) for e in (ev("arrival", 3600, f"d{i}"), ev("grant", 3600 + i, f"d{i}", wait=i))]
    # Asked at 23:59 on day 1, granted at 00:01 on day 2 after 120 s.
    midnight = [ev("arrival", 86340, "m"), ev("grant", 86460, "m", wait=120), ev("cancel", 86400 + 600, "c", wait=5)]
    report = report_of([*day1, *midnight], until=T + 3 * DAY)
    days = [
        (d.day.isoformat(), d.arrivals, d.grants, d.cancels, d.wait_p50_seconds, d.wait_p95_seconds)
        for d in report.by_day
    ]
    assert days == [
        ("2026-11-24", 21, 20, 0, 10, 19),  # nearest rank over 1..20: p50 = 10, p95 = 19
        ("2026-11-25", 0, 1, 1, 120, 120),
        ("2026-11-26", 0, 0, 0, None, None),
    ]
    assert (report.wait_p50_seconds, report.wait_p95_seconds) == (11, 20)
    assert report.wait_mean_seconds == pytest.approx((210 + 120) / 21)


def test_a_period_ending_at_midnight_does_not_list_the_next_day() -> None:
    report = report_of([ev("arrival", 60, "a")], until=T + DAY)
    assert [d.day.isoformat() for d in report.by_day] == ["2026-11-24"]


def test_the_share_of_time_someone_waited_is_the_union_of_waiting_intervals_over_the_period() -> None:
    events = [
        ev("arrival", 10, "a"),
        ev("grant", 30, "a", wait=20),  # waiting 10-30
        ev("arrival", 20, "b"),
        ev("cancel", 40, "b", wait=20),  # 20-40: overlaps, union 10-40 = 30 s
        ev("grant", 50, "d", wait=5),  # its arrival is not recorded: 45-50 = 5 s
        ev("arrival", -10, "e"),  # before since: dropped ...
        ev("grant", 5, "e", wait=15),  # ... its wait reaches back before since: 0-5 = 5 s
        ev("arrival", 70, "w"),  # still waiting at until: 70-100 = 30 s
    ]
    report = build_report(POOL, events, T, at(100), 4, [])
    assert report.share_time_waiting == pytest.approx(0.70)
    assert report.still_waiting == 1
    assert report.skipped_without_arrival == 2  # d and e have no arrival in the period


def test_the_share_of_time_waiting_is_unknown_for_an_empty_period() -> None:
    assert build_report(POOL, [], T, T, 4, []).share_time_waiting is None


def test_slices_in_use_step_at_grants_and_releases_with_holders_carried_in_seen_by_their_release() -> None:
    events = [
        ev("release", 10, "r", hold=100),  # granted at -90, before since: carried in
        ev("arrival", 15, "g1"),
        ev("grant", 20, "g1", wait=5),
        ev("release", 60, "g1", hold=40),
        ev("grant", 30, "g2", wait=0, slices=2),  # still holding at until
        ev("release", 80, "lost", hold=30),  # its grant note was lost: stepped up at 50
        ev("grant", 60, "g3", wait=0),  # takes g1's slice at the same instant: no double count
    ]
    report = build_report(POOL, events, T, at(100), 4, [])
    assert report.in_use_at_since == 1
    assert [(round((s.at - T).total_seconds()), s.in_use) for s in report.in_use] == [
        (0, 1),
        (10, 0),
        (20, 1),
        (30, 3),
        (50, 4),  # at 60 g1's slice goes to g3: no step
        (80, 3),
    ]
    assert report.peak_in_use == 4


def test_slices_in_use_start_at_zero_without_a_release_from_before_the_period() -> None:
    report = build_report(POOL, [ev("arrival", 0, "a"), ev("grant", 0, "a", wait=0)], T, at(100), 4, [])
    assert report.in_use == [InUseStep(at=T, in_use=1)]
    assert report.in_use_at_since == 0


# --------------------------------------------------------------------------------- what-if


def test_replaying_the_synthetic_day_at_its_own_capacity_gives_back_the_recorded_waits() -> None:
    report = report_of(synthetic_day(T))
    current = report.what_if[0]
    assert current.slices == 4
    assert current.granted == report.grants and current.abandoned == report.cancels
    assert current.wait_p50_seconds == pytest.approx(report.wait_p50_seconds)
    assert current.wait_p95_seconds == pytest.approx(report.wait_p95_seconds)


def test_the_what_if_table_gets_no_worse_as_slices_are_added() -> None:
    rows = report_of(synthetic_day(T)).what_if
    assert [r.slices for r in rows] == [4, 5, 6, 7, 8]
    p95 = [r.wait_p95_seconds for r in rows]
    started = [r.share_started_within_5_min for r in rows]
    queued = [r.share_queued for r in rows]
    abandoned = [r.abandoned for r in rows]
    assert all(x is not None for x in (*p95, *started, *queued))
    assert p95 == sorted(p95, key=lambda x: -(x or 0.0))
    assert started == sorted(started, key=lambda x: x or 0.0)
    assert queued == sorted(queued, key=lambda x: -(x or 0.0))
    assert abandoned == sorted(abandoned, reverse=True)
    assert p95[0] is not None and p95[-1] is not None and p95[0] > 1800 > p95[-1]  # the day was busy at 4


def test_each_what_if_row_carries_its_summary_sentence() -> None:
    rows = report_of(synthetic_day(T)).what_if
    assert rows[0].summary.startswith("with 4 slices, ") and "would have given up waiting" in rows[0].summary
    assert rows[-1].summary == "with 8 slices, 100 % of users would have started at once"


# --------------------------------------------------------------------------------- text and JSON


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0, "0 s"),
        (0.2, "1 s"),
        (45, "45 s"),
        (60, "1 min"),
        (61, "2 min"),
        (361, "7 min"),
        (5400, "1.5 h"),
    ],
)
def test_statistics_read_as_rounded_up_durations(seconds: float | None, text: str) -> None:
    assert format_seconds(seconds) == text


@pytest.mark.parametrize(("share", "text"), [(None, "-"), (0, "0 %"), (0.001, "<1 %"), (0.18, "18 %"), (1, "100 %")])
def test_shares_read_as_whole_percentages(share: float | None, text: str) -> None:
    assert format_share(share) == text


def test_the_text_report_leads_with_the_key_figures_then_aligned_tables_and_sentences() -> None:
    events = synthetic_day(T)
    report = report_of(events)
    text = render_text([report])
    lines = text.splitlines()
    assert lines[0] == (
        f"pool gpu, last day: {report.arrivals} requests, {report.grants} granted, {report.cancels} cancelled; "
        f"wait p50 {format_seconds(report.wait_p50_seconds)}, p95 {format_seconds(report.wait_p95_seconds)}; "
        f"someone was waiting {format_share(report.share_time_waiting)} of the time; peak 4 of 4 slices in use"
    )
    assert report.arrivals == sum(e.kind == "arrival" for e in events)
    assert "2026-11-24 00:00 to 2026-11-25 00:00 UTC; capacity 4 (config)" in lines
    header = lines.index("SLICES  WAIT P50  WAIT P95  QUEUED  STARTED WITHIN 5 MIN  GAVE UP")
    table = lines[header : header + 6]
    for column in ("WAIT P50", "QUEUED", "GAVE UP"):
        start = table[0].index(column)
        assert all(row[start - 1] == " " and row[start] != " " for row in table), column
    for row in report.what_if:
        assert row.summary in lines


def test_a_pool_without_events_in_the_period_says_where_history_comes_from() -> None:
    text = render_text([build_report(POOL, [], T - 7 * DAY, T, 8, range(8, 17))])
    assert text == (
        "no history recorded for pool gpu in the last 7 days; "
        "history is recorded by the leader from the time it runs a version with history"
    )


def test_a_pool_with_capacity_auto_reports_the_peak_without_a_capacity() -> None:
    lines = render_text([report_of(synthetic_day(T), capacity=None)]).splitlines()
    assert lines[0].endswith("peak 4 slices in use")
    assert "capacity auto: not known from the config" in lines[1]


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_the_json_report_is_camel_case_and_reads_back_into_the_model() -> None:
    report = report_of(synthetic_day(T))
    data = json.loads(json.dumps(report_json([report])))
    assert list(data) == ["pools"]
    pool = data["pools"][0]
    assert {
        "waitP50Seconds",
        "byDay",
        "inUse",
        "peakInUse",
        "whatIf",
        "shareTimeWaiting",
        "skippedWithoutArrival",
    } <= set(pool)
    assert {"shareStartedWithin5Min", "neverFit", "summary"} <= set(pool["whatIf"][0])
    assert pool["byDay"][0]["day"] == "2026-11-24"
    assert pool["inUse"][0] == {"at": "2026-11-24T00:00:00Z", "inUse": 0}
    assert not [k for k in _keys(data) if "_" in k]
    assert PoolReport.model_validate(pool) == report


# --------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("16..8", "the first count must not exceed the last"),
        ("-1..4", "slice counts must be >= 0"),
        ("8-16", "slice counts as A..B such as 8..16"),
        ("1..300", "at most 256 slices or 4x the first count"),
    ],
)
def test_a_bad_what_if_range_is_refused_before_anything_is_read(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", f"--what-if={value}"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "counts"),
    [("8..16", range(8, 17)), ("0..256", range(257)), ("100..400", range(100, 401)), ("6", range(6, 7))],
)
def test_a_what_if_range_is_inclusive_and_may_reach_4x_its_start_or_256(value: str, counts: range) -> None:
    assert build_parser().parse_args(["report", "--what-if", value]).what_if == counts


@pytest.mark.parametrize("value", ["0", "-1", "x", "400"])
def test_days_must_be_a_positive_number_up_to_a_year(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["report", "--days", value])
    assert "argument --days" in capsys.readouterr().err
