"""The ETA estimator: unknown without data, a range from the freed-slice rate, the culler bound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.eta import culler_bound, estimate, format_eta, round_range, smoothed_interval
from webhook.models import Eta, Holder

NOW = datetime(2026, 11, 28, 16, 0, 0, tzinfo=UTC)
HOUR = 3600.0


def releases(*minutes_ago: float) -> list[datetime]:
    return [NOW - timedelta(minutes=m) for m in minutes_ago]


def every(minutes: float, count: int, *, last: float = 0.0) -> list[datetime]:
    """``count`` releases ``minutes`` apart, the newest ``last`` minutes ago, newest first."""
    return releases(*(last + i * minutes for i in range(count)))


def holders(*granted_minutes_ago: float) -> list[Holder]:
    return [
        Holder(namespace="jhub", name=f"jupyter-h{i}", granted_at=NOW - timedelta(minutes=m))
        for i, m in enumerate(granted_minutes_ago)
    ]


FULL = holders(*(5.0 * i for i in range(8)))  # 8 of 8 slices in use, granted 0..35 min ago


def eta(position: int, times: list[datetime], *, capacity: int = 8, held: list[Holder] = FULL, **kw: float) -> Eta:
    return estimate(
        slices=position,
        capacity=capacity,
        in_use=int(kw.get("in_use", len(held))),
        holders=held,
        release_times=times,
        cull_timeout_seconds=kw.get("cull", HOUR),
        now=NOW,
        min_samples=int(kw.get("min_samples", 3)),
    )


def width(e: Eta) -> float:
    assert e.min_seconds is not None and e.max_seconds is not None
    return e.max_seconds - e.min_seconds


# -- unknown ------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_fewer_than_min_samples_intervals_is_unknown_without_numbers(count: int) -> None:
    e = eta(3, every(10, count))  # count releases give count-1 intervals, below 3
    assert e.known is False
    assert (e.min_seconds, e.max_seconds) == (None, None)
    assert format_eta(e) == "wait time unknown"


def test_min_samples_intervals_make_it_known() -> None:
    assert eta(3, every(10, 4)).known is True
    assert eta(3, every(10, 4), min_samples=5).known is False


def test_unknown_still_names_the_idle_culler_bound_in_method() -> None:
    e = eta(1, [], held=holders(50, 20), capacity=2)
    assert e.known is False
    assert "0 of 3 release intervals" in e.method
    assert "idle" in e.method and "10 min" in e.method


def test_a_pool_without_capacity_is_unknown() -> None:
    e = eta(1, every(10, 10), capacity=0, held=[])
    assert e.known is False
    assert "no capacity" in e.method


# -- the rate -----------------------------------------------------------------------------------


def test_regular_releases_give_position_times_interval_inside_the_range() -> None:
    e = eta(2, every(10, 20))  # a slice every 10 min, 2 releases needed: about 20 min
    assert e.known is True
    assert e.min_seconds is not None and e.max_seconds is not None
    assert e.min_seconds <= 20 * 60 <= e.max_seconds
    assert format_eta(e) == "about 15-25 min"


def test_a_free_slice_means_less_than_a_minute_even_without_data() -> None:
    e = eta(2, [], held=holders(10, 20), capacity=4)
    assert (e.known, e.min_seconds, e.max_seconds) == (True, 0.0, 60.0)
    assert format_eta(e) == "less than a minute"


def test_free_slices_reduce_the_releases_needed() -> None:
    two_free = eta(3, every(10, 20), held=FULL[:6])  # positions 1-2 take the free slices
    full = eta(1, every(10, 20))
    assert two_free.known and (two_free.min_seconds, two_free.max_seconds) == (full.min_seconds, full.max_seconds)


def test_range_widens_with_position() -> None:
    times = releases(0, 7, 19, 24, 38, 41, 55, 70, 74, 90)
    widths = [width(eta(p, times)) for p in (1, 3, 6, 12)]
    assert widths == sorted(widths) and len(set(widths)) == len(widths)


def test_range_widens_with_the_spread_of_the_intervals() -> None:
    regular = every(10, 13)
    irregular = releases(*[0, 2, 20, 22, 40, 42, 60, 62, 80, 82, 100, 102, 120])  # same mean, wider spread
    assert smoothed_interval(irregular, NOW) is not None
    assert width(eta(4, irregular)) > width(eta(4, regular))


def test_a_long_quiet_spell_lengthens_the_estimate() -> None:
    busy = eta(2, every(10, 20, last=1))
    quiet = eta(2, every(10, 20, last=120))  # the same afternoon, but nothing freed for 2 h
    assert busy.max_seconds is not None and quiet.min_seconds is not None
    assert quiet.min_seconds > busy.max_seconds


def test_the_order_of_release_times_does_not_matter() -> None:
    times = releases(0, 7, 19, 24, 38, 41, 55)
    assert eta(4, times) == eta(4, list(reversed(times)))


def test_only_the_newest_twenty_releases_count() -> None:
    recent = every(5, 20)
    old_and_slow = recent + every(60, 30, last=200)
    assert eta(3, old_and_slow) == eta(3, recent)


def test_fewer_than_one_slice_is_rejected() -> None:
    with pytest.raises(ValueError, match="slices"):
        eta(0, every(10, 5))


@given(
    gaps=st.lists(st.floats(0, 240), min_size=4, max_size=30),
    position=st.integers(1, 40),
)
def test_known_ranges_are_ordered_rounded_and_never_shrink_with_position(gaps: list[float], position: int) -> None:
    ago = [0.0]
    for gap in gaps:
        ago.append(ago[-1] + gap)
    times = releases(*ago)
    here, behind = eta(position, times), eta(position + 1, times)
    assert here.known and behind.known
    assert here.min_seconds is not None and here.max_seconds is not None
    assert behind.min_seconds is not None and behind.max_seconds is not None
    assert 0 <= here.min_seconds < here.max_seconds
    assert here.min_seconds % 60 == 0 and here.max_seconds % 60 == 0
    assert behind.max_seconds >= here.max_seconds


# -- the idle-culler bound ----------------------------------------------------------------------


def test_culler_bound_is_the_oldest_holders_grant_plus_the_timeout() -> None:
    held = holders(50, 20)  # culled, if idle, 10 and 40 min from now
    bounds = [culler_bound(position=p, capacity=2, holders=held, cull_timeout_seconds=HOUR, now=NOW) for p in (1, 2, 3)]
    # position 3 waits for the slice freed at +10 min to be held (idle) one more hour by position 1
    assert bounds == [600.0, 2400.0, 600.0 + HOUR]


def test_culler_bound_is_zero_for_a_free_slice_and_counts_overdue_holders_as_now() -> None:
    assert culler_bound(position=1, capacity=3, holders=holders(5), cull_timeout_seconds=HOUR, now=NOW) == 0.0
    assert culler_bound(position=1, capacity=1, holders=holders(90), cull_timeout_seconds=HOUR, now=NOW) == 0.0


def test_culler_bound_skips_slices_lost_when_capacity_shrank() -> None:
    held = holders(50, 40, 10)  # 3 holders, capacity now 2: the first slice to free is not handed out
    bound = culler_bound(position=1, capacity=2, holders=held, cull_timeout_seconds=HOUR, now=NOW)
    assert bound == 20 * 60.0


def test_known_estimate_mentions_but_is_not_clipped_by_the_culler_bound() -> None:
    e = eta(1, every(60, 10), capacity=1, held=holders(55))  # rate says ~1 h, culler says 5 min if idle
    assert e.min_seconds is not None and e.min_seconds > 5 * 60
    assert "5 min" in e.method and "idle" in e.method


# -- rounding and text --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (130, 470, (120, 480)),  # under 10 min: whole minutes
        (1000, 1400, (900, 1500)),  # under 1 h: 5 minutes
        (4000, 6000, (3600, 6300)),  # above: 15 minutes
        (-5, 20, (0, 60)),
    ],
)
def test_round_range_rounds_outwards(low: float, high: float, expected: tuple[float, float]) -> None:
    assert round_range(low, high) == expected


@pytest.mark.parametrize(
    ("low", "high", "text"),
    [
        (900, 1500, "about 15-25 min"),
        (3600, 7200, "about 1-2 h"),
        (2700, 5400, "about 1-2 h"),
        (0, 300, "under 5 min"),
        (0, 60, "less than a minute"),
        (600, 600, "about 10 min"),
        (0, 7200, "under 2 h"),
        (2400, 3600, "about 40-60 min"),
    ],
)
def test_format_eta_gives_minutes_up_to_an_hour_and_hours_above(low: float, high: float, text: str) -> None:
    assert format_eta(Eta(known=True, min_seconds=low, max_seconds=high)) == text


def test_format_eta_says_unknown_when_not_known_even_with_numbers() -> None:
    assert format_eta(Eta(known=False)) == "wait time unknown"
    assert format_eta(Eta(known=False, min_seconds=60, max_seconds=120)) == "wait time unknown"


def _culler_bound_by_walking(
    *, position: int, capacity: int, holders: list[Holder], timeout: float, now: datetime
) -> float:
    """The bound the slow way: hand slices out one by one from a heap of free times."""
    import heapq

    frees = [max(now.timestamp(), h.granted_at.timestamp() + timeout) for h in holders]
    frees += [now.timestamp()] * max(capacity - len(holders), 0)
    heapq.heapify(frees)
    for _ in range(max(len(holders) - capacity, 0)):
        heapq.heappop(frees)
    for _ in range(position - 1):
        heapq.heappush(frees, heapq.heappop(frees) + timeout)
    return max(frees[0] - now.timestamp(), 0.0)


@settings(max_examples=300, deadline=None)
@given(
    ages=st.lists(st.integers(0, 10_000), max_size=12),
    capacity=st.integers(1, 10),
    position=st.integers(1, 60),
    timeout=st.sampled_from([600.0, 3600.0]),
)
def test_culler_bound_closed_form_equals_handing_slices_out_one_by_one(
    ages: list[int], capacity: int, position: int, timeout: float
) -> None:
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    holders = [
        Holder(namespace="jhub", name=f"p{i}", granted_at=now - timedelta(seconds=age)) for i, age in enumerate(ages)
    ]
    fast = culler_bound(position=position, capacity=capacity, holders=holders, cull_timeout_seconds=timeout, now=now)
    slow = _culler_bound_by_walking(position=position, capacity=capacity, holders=holders, timeout=timeout, now=now)
    assert fast == pytest.approx(slow, abs=1e-6)
