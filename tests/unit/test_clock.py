"""The API server's clock learnt from ``Date`` headers: the offset is pinned down by intersecting
what each answer allows, whatever this replica's own clock says."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from webhook.clock import ApiServerClock

SERVER_T0 = 1_796_000_000.0  # epoch seconds on the API server's clock


def date_header(server_time: float) -> str:
    return format_datetime(datetime.fromtimestamp(int(server_time), tz=UTC), usegmt=True)


def feed(clock: ApiServerClock, offset: float, samples: int, seed: int = 1) -> None:
    """``samples`` answers from a server whose clock is ``offset`` behind ours, 2-8 ms round
    trips, at random moments (as jittered Lease reads are)."""
    rng = random.Random(seed)
    server = SERVER_T0
    for _ in range(samples):
        server += rng.uniform(0.5, 1.5)
        rtt = rng.uniform(0.002, 0.008)
        handled = server + rng.uniform(0, rtt)
        clock.observe(server + offset, server + rtt + offset, date_header(handled))


@pytest.mark.parametrize("offset", [30.0, -3.25, 0.4])
def test_a_skewed_clock_is_corrected_to_within_tens_of_milliseconds(offset: float) -> None:
    clock = ApiServerClock()
    feed(clock, offset, 40)
    assert clock.low is not None and clock.high is not None
    assert clock.low <= offset <= clock.high
    assert clock.high - clock.low < 0.1
    assert abs(clock.offset - offset) <= clock.high - clock.low


@pytest.mark.parametrize("samples", [1, 2, 5, 40])
def test_a_clock_that_agrees_with_the_server_is_never_corrected(samples: int) -> None:
    """Early estimates are up to a second wide: their midpoint could be half a second off, so a
    replica with a right clock must not move its stamps by it (nor by any later estimate)."""
    for seed in range(20):
        clock = ApiServerClock()
        feed(clock, 0.0, samples, seed=seed)
        assert clock.offset == 0.0


def test_now_is_the_local_clock_corrected_by_the_offset() -> None:
    local = SERVER_T0 + 30.0
    clock = ApiServerClock(wall=lambda: local)
    assert clock.now() == datetime.fromtimestamp(local, tz=UTC)  # nothing learnt yet: local time
    feed(clock, 30.0, 40)
    assert abs(clock.now() - datetime.fromtimestamp(SERVER_T0, tz=UTC)) < timedelta(milliseconds=50)


def test_a_clock_step_starts_the_estimate_over_instead_of_getting_stuck() -> None:
    clock = ApiServerClock()
    feed(clock, 30.0, 40)
    feed(clock, 0.0, 40, seed=2)  # the node's clock was corrected by 30 s
    assert clock.offset == 0.0


def test_a_missing_or_broken_date_header_teaches_nothing() -> None:
    clock = ApiServerClock()
    clock.observe(1.0, 2.0, "not a date")
    assert clock.low is None and clock.offset == 0.0
