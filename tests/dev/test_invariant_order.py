"""The invariant checker's I2 rule (``tests/invariants.py``), on made-up tracks: the checker is
what the cluster tiers trust to say "in order", so its own rule is pinned here, without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from tests.invariants import InvariantChecker, Track

T0 = datetime(2026, 12, 2, 0, 33, 28, tzinfo=UTC)


def _violations(a: Track, b: Track) -> list[str]:
    checker = InvariantChecker(cast(Any, None), "jhub", capacity=8, settle_seconds=1.0)
    checker.tracks = {a.uid: a, b.uid: b}
    found, pairs, _ = checker.order_violations()
    assert pairs == 1
    return [v.detail for v in found]


def _tracks(*, b_granted: float, a_granted: float | None, a_seen_first: bool) -> tuple[Track, Track]:
    """A asked at T0, B 0.1 s later; B granted at T0 + b_granted, A at T0 + a_granted (or never).
    ``a_seen_first``: this watch showed A before B's grant (event 1 against 2)."""
    a = Track("a", "jupyter-a", first_stamp=T0, stamp=T0, seen_seq=1 if a_seen_first else 3)
    b = Track("b", "jupyter-b", first_stamp=T0 + timedelta(seconds=0.1), stamp=T0 + timedelta(seconds=0.1), seen_seq=0)
    b.gated, b.granted_seq, b.admitted_at = False, 2, T0 + timedelta(seconds=b_granted)
    if a_granted is not None:
        a.gated, a.granted_seq, a.admitted_at = False, 4, T0 + timedelta(seconds=a_granted)
    return a, b


def test_an_early_grant_before_the_controller_saw_the_earlier_pod_is_allowed_when_it_is_served() -> None:
    """The 500-spawn burst in CI: B granted 0.05 s after A asked, A granted 1.2 s after; this watch
    had shown A first, the controller's had not (early grants go by what the controller saw)."""
    assert _violations(*_tracks(b_granted=0.05, a_granted=1.23, a_seen_first=True)) == []


def test_passing_over_a_pod_shown_before_the_grant_is_a_violation_after_its_settle_window() -> None:
    assert _violations(*_tracks(b_granted=1.5, a_granted=1.6, a_seen_first=True))


def test_an_early_overtaken_pod_that_then_waits_for_a_release_is_a_violation() -> None:
    assert _violations(*_tracks(b_granted=0.05, a_granted=30.0, a_seen_first=True))
    assert _violations(*_tracks(b_granted=0.05, a_granted=30.0, a_seen_first=False))


def test_a_pod_granted_first_or_in_the_same_pass_is_in_order() -> None:
    assert _violations(*_tracks(b_granted=0.5, a_granted=0.5, a_seen_first=True)) == []
