"""The hold limit while others wait (``webhook.hold_limit.decide``), pure: nobody is stopped while
nobody waits, a warning always comes a whole warning period before the stop, only as many holders
as the waiting need are stopped (longest-held first), and warnings are withdrawn when the queue
empties."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tests.helpers.pod_views import holder_view
from webhook.cluster_view import NodeView, PodView
from webhook.config import Pool, load_config
from webhook.grants import plan
from webhook.hold_limit import decide, stop_time

CONFIG = load_config(env={})
T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
LIMIT = 2 * 3600
WARNING = 600
NODE = NodeView("gpu-1", {"nvidia.com/gpu.present": "true"}, {"nvidia.com/gpu": Decimal(8)})


def pool(capacity: int = 2, limit: int | None = LIMIT, warning: int = WARNING) -> Pool:
    return CONFIG.pools["gpu"].model_copy(
        update={"capacity": capacity, "max_hold_seconds_when_queued": limit, "hold_warning_seconds": warning}
    )


def holder(name: str, held_since: datetime, warned: datetime | None = None, slices: int = 1) -> PodView:
    return holder_view(name, held_since, slices, user=name.removeprefix("jupyter-"), warned=warned)


def waiter(name: str, at: datetime, slices: int = 1) -> PodView:
    return PodView(
        namespace="jhub",
        name=name,
        pool="gpu",
        gated=True,
        requested_at=at,
        resources={"nvidia.com/gpu": Decimal(slices)},
    )


def names(pods: list[PodView]) -> list[str]:
    return [p.name for p in pods]


def test_nobody_is_warned_or_stopped_while_nobody_waits_however_long_they_hold() -> None:
    p = pool()
    pods = [holder("jupyter-ann", T0), holder("jupyter-bob", T0)]
    decision = decide(p, plan("gpu", p, pods, [NODE]), T0 + timedelta(days=3))
    assert decision.warn == [] and decision.stop == [] and decision.withdraw == []


def test_with_someone_waiting_a_holder_is_warned_the_warning_period_before_the_limit() -> None:
    p = pool()
    pods = [holder("jupyter-ann", T0), holder("jupyter-bob", T0 + timedelta(minutes=30)), waiter("jupyter-cy", T0)]
    early = decide(p, plan("gpu", p, pods, [NODE]), T0 + timedelta(minutes=100))
    assert early.warn == [] and early.next_at == T0 + timedelta(seconds=LIMIT - WARNING)
    now = T0 + timedelta(seconds=LIMIT - WARNING)
    decision = decide(p, plan("gpu", p, pods, [NODE]), now)
    assert [(w.holder.name, w.stop_at) for w in decision.warn] == [("jupyter-ann", T0 + timedelta(seconds=LIMIT))]
    assert decision.next_at == T0 + timedelta(minutes=30, seconds=LIMIT - WARNING), "bob's warning is next"


def test_a_holder_long_past_the_limit_when_the_queue_forms_still_gets_the_whole_warning() -> None:
    p = pool()
    now = T0 + timedelta(hours=9)
    pods = [holder("jupyter-ann", T0), holder("jupyter-bob", T0), waiter("jupyter-cy", now)]
    decision = decide(p, plan("gpu", p, pods, [NODE]), now)
    assert {w.stop_at for w in decision.warn} == {now + timedelta(seconds=WARNING)}
    assert decision.stop == []


def test_the_stop_comes_at_the_limit_and_only_for_as_many_as_the_waiting_need_longest_held_first() -> None:
    p = pool(capacity=3)
    warned = T0 + timedelta(seconds=LIMIT - WARNING)
    pods = [
        holder("jupyter-ann", T0 + timedelta(minutes=5), warned),
        holder("jupyter-bob", T0, warned),
        holder("jupyter-cy", T0 + timedelta(minutes=1), warned),
        waiter("jupyter-dee", T0 + timedelta(hours=1)),
    ]
    assert decide(p, plan("gpu", p, pods, [NODE]), T0 + timedelta(seconds=LIMIT - 1)).stop == []
    decision = decide(p, plan("gpu", p, pods, [NODE]), T0 + timedelta(hours=3))
    assert names(decision.stop) == ["jupyter-bob"], "one waits for one slice: the longest holder goes"
    two = decide(
        p, plan("gpu", p, [*pods, waiter("jupyter-eve", T0 + timedelta(hours=2))], [NODE]), T0 + timedelta(hours=3)
    )
    assert names(two.stop) == ["jupyter-bob", "jupyter-cy"]


def test_a_free_slice_counts_before_anyone_is_stopped() -> None:
    p = pool(capacity=3)
    warned = T0 + timedelta(seconds=LIMIT - WARNING)
    pods = [holder("jupyter-ann", T0, warned), waiter("jupyter-two", T0 + timedelta(hours=1), slices=2)]
    decision = decide(p, plan("gpu", p, pods, [NODE]), T0 + timedelta(hours=3))
    assert names(decision.stop) == [], "two slices free for a two-slice waiter: it is granted, nobody stopped"


def test_a_two_slice_holder_frees_two() -> None:
    p = pool(capacity=3)
    warned = T0 + timedelta(seconds=LIMIT - WARNING)
    pods = [
        holder("jupyter-big", T0, warned, slices=2),
        holder("jupyter-ann", T0 + timedelta(minutes=1), warned),
        waiter("jupyter-w1", T0 + timedelta(hours=1)),
        waiter("jupyter-w2", T0 + timedelta(hours=1, seconds=1)),
    ]
    assert names(decide(p, plan("gpu", p, pods, [NODE]), T0 + timedelta(hours=3)).stop) == ["jupyter-big"]


def test_warnings_are_withdrawn_when_the_queue_empties() -> None:
    p = pool()
    pods = [holder("jupyter-ann", T0, T0 + timedelta(hours=1)), holder("jupyter-bob", T0)]
    decision = decide(p, plan("gpu", p, pods, [NODE]), T0 + timedelta(hours=3))
    assert names(decision.withdraw) == ["jupyter-ann"] and decision.stop == []


def test_a_terminating_holder_is_left_alone_and_no_limit_means_no_decision() -> None:
    p = pool()
    going = replace(holder("jupyter-ann", T0, T0 + timedelta(hours=1)), deleting=True)
    pods = [going, holder("jupyter-bob", T0 + timedelta(hours=2)), waiter("jupyter-cy", T0)]
    assert decide(p, plan("gpu", p, pods, [NODE]), T0 + timedelta(hours=3)).stop == []
    off = pool(limit=None)
    assert decide(off, plan("gpu", off, pods, [NODE]), T0 + timedelta(days=1)).warn == []


@given(
    held=st.integers(0, 20_000),
    queue_formed=st.integers(0, 20_000),
    limit=st.integers(60, 10_000),
    warning=st.integers(0, 3_000),
)
def test_between_the_warning_and_the_stop_there_is_always_the_whole_warning_period(
    held: int, queue_formed: int, limit: int, warning: int
) -> None:
    """Whenever the queue forms, the first pass that warns sets a stop no sooner than the warning
    period later and no sooner than the limit; the stop happens on the first pass at or after it."""
    p = pool(capacity=1, limit=limit, warning=warning)
    granted = T0 - timedelta(seconds=held)
    formed = T0 + timedelta(seconds=queue_formed)
    pods = [holder("jupyter-ann", granted), waiter("jupyter-bob", formed)]
    decision = decide(p, plan("gpu", p, pods, [NODE]), formed)
    if not decision.warn:
        assert decision.next_at is not None and decision.next_at > formed
        formed = decision.next_at
        decision = decide(p, plan("gpu", p, pods, [NODE]), formed)
    (warned,) = decision.warn
    assert warned.stop_at >= formed + timedelta(seconds=warning)
    assert warned.stop_at >= granted + timedelta(seconds=limit)
    marked = [replace(pods[0], hold_warned_at=formed), pods[1]]
    assert stop_time(p, marked[0]) == warned.stop_at, "a new leader reading the mark gets the same stop"
    before = warned.stop_at - timedelta(microseconds=1)
    assert decide(p, plan("gpu", p, marked, [NODE]), before).stop == []
    assert names(decide(p, plan("gpu", p, marked, [NODE]), warned.stop_at).stop) == ["jupyter-ann"]


def test_a_waiter_held_back_by_its_groups_limit_does_not_make_anyone_stop() -> None:
    p = pool(capacity=2).model_copy(update={"group_limits": {"course-a": 1}})
    capped = replace(waiter("jupyter-cy", T0), groups=("course-a",))
    pods = [
        replace(holder("jupyter-ann", T0), groups=("course-a",)),
        holder("jupyter-bob", T0, T0 + timedelta(hours=1)),
        capped,
    ]
    decision = decide(p, plan("gpu", p, pods, [NODE]), T0 + timedelta(hours=5))
    assert decision.warn == [] and decision.stop == [], "stopping bob would not let cy in"
    assert names(decision.withdraw) == ["jupyter-bob"]
