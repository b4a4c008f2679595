"""The hold limit while others wait (``maxHoldSecondsWhenQueued``): the pure decision.

Nobody is stopped while nobody waits (a waiter its group's limit holds back does not count: a
stop would not let it in). Once someone waits, a holder whose hold reaches the limit
minus ``holdWarningSeconds`` is warned (the leader marks the pod with the time, so a new leader
keeps the same clock); the stop comes at the limit, and never sooner than the warning period
after the warning, so even a holder long past the limit when the queue forms gets the whole
warning. Only as many holders are stopped as the waiting need slices, longest-held first. When the
queue empties, warnings are withdrawn: a later queue warns afresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from webhook.cluster_view import PodView
from webhook.config import Pool
from webhook.grants import PoolPlan, slices_of


@dataclass(frozen=True)
class HoldWarning:
    holder: PodView
    stop_at: datetime


@dataclass(frozen=True)
class HoldDecision:
    warn: list[HoldWarning] = field(default_factory=list)  # tell them now (and mark the pod)
    stop: list[PodView] = field(default_factory=list)  # stop through the hub now
    withdraw: list[PodView] = field(default_factory=list)  # warned, but nobody waits any more
    next_at: datetime | None = None  # the next warning or stop that is not due yet


def stop_time(pool: Pool, holder: PodView) -> datetime | None:
    """When a warned holder may be stopped (None: not warned, or no limit)."""
    limit = pool.max_hold_seconds_when_queued
    if limit is None or holder.hold_warned_at is None or holder.granted_at is None:
        return None
    warning = timedelta(seconds=pool.hold_warning_seconds)
    return max(holder.granted_at + timedelta(seconds=limit), holder.hold_warned_at + warning)


def decide(pool: Pool, plan: PoolPlan, now: datetime) -> HoldDecision:
    """What the hold limit asks of the pool's holders at ``now``."""
    limit = pool.max_hold_seconds_when_queued
    if limit is None:
        return HoldDecision()
    holders = [h for h in plan.holders if h.granted_at is not None and not h.deleting]
    # A waiter its group's limit holds back is not served by a stop: it does not count as waiting.
    waiting = [p for p in plan.queue if p.key not in plan.capped]
    if not waiting:
        return HoldDecision(withdraw=[h for h in holders if h.hold_warned_at is not None])
    warning = timedelta(seconds=pool.hold_warning_seconds)
    warn: list[HoldWarning] = []
    due: list[PodView] = []
    upcoming: list[datetime] = []
    for holder in holders:
        assert holder.granted_at is not None
        reached = holder.granted_at + timedelta(seconds=limit)
        stop_at = stop_time(pool, holder)
        if stop_at is None:
            if now >= reached - warning:
                warn.append(HoldWarning(holder, max(reached, now + warning)))
            else:
                upcoming.append(reached - warning)
        elif now >= stop_at:
            due.append(holder)
        else:
            upcoming.append(stop_at)
    # Stop no more than the waiting need: the slices they ask for beyond what is free now.
    need = sum(slices_of(p, pool) for p in waiting) - max(0, plan.capacity - plan.in_use)
    stop: list[PodView] = []
    for holder in sorted(due, key=lambda h: (h.granted_at, h.key)):
        if need <= 0:
            break
        stop.append(holder)
        need -= slices_of(holder, pool)
    return HoldDecision(warn=warn, stop=stop, next_at=min(upcoming, default=None))
