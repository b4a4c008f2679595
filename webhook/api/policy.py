"""What the fair-use policies add to a Position: a queued pod's priority rank and who is ahead of
it by a better one, a group limit holding it back, the hold limit's stop time of a warned holder.
All come from this replica's watch cache (the pods carry the groups and the warning), so any
replica answers them, store up or down."""

from __future__ import annotations

from typing import Any

from webhook.config import Pool
from webhook.grants import ahead_by_priority
from webhook.hold_limit import stop_time
from webhook.models import HeldBack, HoldLimit, Priority
from webhook.protocols import ClusterView


def policy_fields(cluster: ClusterView, pool_name: str, pool: Pool, key: str) -> dict[str, Any]:
    """``priority`` / ``heldBack`` (queued) or ``holdLimit`` (holding) for Position(...), empty
    when none applies or the cache cannot say yet."""
    plan = cluster.readers_plan(pool_name)
    if plan is None:
        return {}
    fields: dict[str, Any] = {}
    index = next((i for i, p in enumerate(plan.queue) if p.key == key), None)
    if index is not None and pool.group_priority:
        me = plan.queue[index]
        ahead = ahead_by_priority(pool, plan.queue[:index], me)
        fields["priority"] = Priority(rank=me.rank, group=pool.rank_group(me.rank), ahead=ahead)
    cap = plan.capped.get(key)
    if cap is not None:
        fields["held_back"] = HeldBack(group=cap.group, limit=cap.limit, in_use=cap.in_use)
    if index is not None:
        return fields
    holder = next((h for h in plan.holders if h.key == key), None)
    limit = pool.max_hold_seconds_when_queued
    stop_at = stop_time(pool, holder) if holder is not None else None
    if holder is None or holder.hold_warned_at is None or stop_at is None or limit is None:
        return {}
    return {"hold_limit": HoldLimit(warned_at=holder.hold_warned_at, stop_at=stop_at, limit_seconds=limit)}
