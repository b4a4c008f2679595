"""Granting a head before its settle window ends, only when that overtakes nobody (I2).

The pure decision (``webhook.grants.due_grants``) on hand-made cases, and a model check on random
timelines of concurrent spawns: every pod's note is stored before its stamp is taken, a noted
pod's create reaches the watch after any lag, some notes fail (that pod is stamped a window later
and reaches the watch within the window: the window's own assumption), and the leader decides at
random moments
from what it has seen. The oracle is independent of the implementation: with no releases, the
holders at every moment must be among the ``capacity`` earliest stamps of all pods that will ever
exist, since any pod stamped earlier than a holder and left without a slice was overtaken.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.pod_views import queued_view
from webhook.cluster_view import NodeView, PodView
from webhook.config import load_config
from webhook.grants import NOTE_LAG, due_grants, plan, unseen_ahead
from webhook.models import Admitted

CONFIG = load_config(env={})
POOL = CONFIG.pools["gpu"]
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
SETTLE = timedelta(seconds=1)


def node(slices: int) -> NodeView:
    return NodeView("gpu-1", {"nvidia.com/gpu.present": "true"}, {"nvidia.com/gpu": Decimal(slices)})


def queued(name: str, seconds: float, slices: int = 1) -> PodView:
    return queued_view(name, T0 + timedelta(seconds=seconds), slices)


def note(name: str, seconds: float, slices: int = 1) -> Admitted:
    return Admitted(namespace="jhub", name=name, since=T0 + timedelta(seconds=seconds), slices=slices)


def decide(
    pods: list[PodView], capacity: int, at: float, notes: list[Admitted] | None
) -> tuple[list[str], datetime | None]:
    pool_plan = plan("gpu", POOL, pods, [node(capacity)])
    seen = {p.key for p in pods}
    heads, wait_until = due_grants(pool_plan, T0 + timedelta(seconds=at), SETTLE, notes, seen)
    return [h.name for h in heads], wait_until


def test_a_settled_head_still_leaves_a_late_pod_its_slice_until_the_pod_is_taken_as_lost() -> None:
    pods = [queued("a", 0.0)]
    assert decide(pods, 8, 1.0, None) == (["a"], None)  # no notes: the window alone
    assert decide(pods, 8, 5.0, [note("x", -0.5)]) == (["a"], None)  # x fits as well
    lag = NOTE_LAG.total_seconds()
    assert decide(pods, 1, 5.0, [note("x", -0.5)]) == ([], T0 + timedelta(seconds=-0.5 + lag))  # x's slice
    assert decide(pods, 1, lag, [note("x", -0.5)]) == (["a"], None)  # x never came: taken as lost


def test_a_young_head_with_its_note_and_nothing_unseen_goes_at_once() -> None:
    pods = [queued("a", 0.0)]
    assert decide(pods, 8, 0.01, [note("a", -0.001)]) == (["a"], None)


def test_a_young_head_waits_out_its_window_without_its_own_note_or_when_the_notes_cannot_be_read() -> None:
    pods = [queued("a", 0.0)]
    assert decide(pods, 8, 0.01, []) == ([], T0 + SETTLE)
    assert decide(pods, 8, 0.01, None) == ([], T0 + SETTLE)
    assert decide(pods, 8, 0.01, [note("b", -0.1)]) == ([], T0 + SETTLE)


def test_unseen_pods_ahead_keep_their_slices() -> None:
    pods = [queued("b", 0.2)]
    notes = [note("a", 0.1), note("b", 0.19)]  # a was noted earlier and is not in the cache yet
    assert decide(pods, 2, 0.3, notes) == (["b"], None)  # two free: one for b, one left for a
    assert decide(pods, 1, 0.3, notes) == ([], T0 + timedelta(seconds=0.1) + NOTE_LAG)  # one free: a's
    assert decide(pods, 2, 0.3, [note("a", 0.1, slices=2), note("b", 0.19)])[0] == []  # a needs two


def test_a_note_taken_after_the_heads_stamp_is_behind_it() -> None:
    pods = [queued("b", 0.2)]
    assert decide(pods, 1, 0.3, [note("b", 0.19), note("c", 0.25)]) == (["b"], None)
    assert unseen_ahead(pods[0], [note("c", 0.2)], set()) == [note("c", 0.2)]  # the same instant: may be ahead


def test_a_seen_pod_is_not_unseen_and_every_head_after_a_waiting_one_waits() -> None:
    pods = [queued("a", 0.1), queued("b", 0.2)]
    notes = [note("a", 0.09), note("b", 0.19)]
    assert decide(pods, 2, 0.3, notes) == (["a", "b"], None)
    assert decide(pods, 2, 0.3, [note("b", 0.19)]) == ([], T0 + timedelta(seconds=1.1))  # a has no note


# -- the model check -------------------------------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    name: str
    admitted: float  # when /mutate ran (its note, then its stamp)
    stamp: float  # requested-at: after the note; a window later when the note failed
    visible: float  # when the watch delivers it: less than the window after admission
    noted: bool
    slices: int


spawns = st.lists(
    st.tuples(
        st.floats(0.0, 3.0),  # admitted
        st.floats(0.0, 0.002),  # note -> stamp
        st.floats(0.0, 4.0),  # admission -> visible: any lag for a noted pod, < SETTLE for one that is not
        st.booleans().map(lambda failed: not failed) | st.just(True),  # mostly noted
        st.sampled_from([1, 1, 1, 2]),
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=400, deadline=None)
@given(spawns, st.integers(1, 6), st.lists(st.floats(0.0, 6.0), min_size=1, max_size=25))
def test_no_early_grant_overtakes_a_pod_on_its_way(
    raw: list[tuple[float, float, float, bool, int]], capacity: int, passes: list[float]
) -> None:
    us = lambda x: round(x, 6)  # noqa: E731 - stamps are microseconds (RFC 3339 with 6 digits)
    everyone = [
        Spawn(f"p{i}", us(t), us(t + d if ok else t + SETTLE.total_seconds()), us(t + (v if ok else v % 0.95)), ok, n)
        for i, (t, d, v, ok, n) in enumerate(raw)
    ]
    # A noted create that lags past 3.5 s here is lost (denied, given up): it never reaches the
    # watch, holds nothing back after NOTE_LAG, and is nobody the oracle expects to hold.
    everyone = [replace(s, visible=float("inf")) if s.noted and s.visible - s.admitted > 3.5 else s for s in everyone]
    by_stamp = sorted((s for s in everyone if s.visible != float("inf")), key=lambda s: (s.stamp, s.name))
    holders: dict[str, float] = {}
    for at in [*sorted(passes), 100.0]:  # the last pass: everything seen and settled
        pods = [
            replace(queued(s.name, s.stamp, s.slices), gated=s.name not in holders)
            for s in everyone
            if s.visible <= at or s.name in holders
        ]
        notes = [note(s.name, s.admitted, s.slices) for s in everyone if s.noted and s.admitted <= at]
        for name in decide(pods, capacity, at, notes)[0]:
            holders[name] = at
        # Oracle: holders are the earliest stamps, as many as fit in the slices in FIFO order.
        fits: list[str] = []
        used = 0
        for s in by_stamp:
            if used + s.slices > capacity:
                break
            fits.append(s.name)
            used += s.slices
        assert set(holders) <= set(fits), (at, sorted(holders), fits, everyone, capacity)
    assert set(holders) == set(fits)  # and, once all is seen and settled, exactly those
