"""What the fair-use policies add to a Position: a group limit holding a queued pod back, the
hold limit's stop time of a warned holder. Both come from this replica's watch cache (the pods
carry the groups and the warning), so any replica answers them, store up or down."""

from __future__ import annotations

from typing import Any

from webhook.config import Pool
from webhook.hold_limit import stop_time
from webhook.models import HeldBack, HoldLimit
from webhook.protocols import ClusterView


def policy_fields(cluster: ClusterView, pool_name: str, pool: Pool, key: str) -> dict[str, Any]:
    """``heldBack`` / ``holdLimit`` for Position(...), empty when neither applies or the cache
    cannot say yet."""
    plan = cluster.readers_plan(pool_name)
    if plan is None:
        return {}
    cap = plan.capped.get(key)
    if cap is not None:
        return {"held_back": HeldBack(group=cap.group, limit=cap.limit, in_use=cap.in_use)}
    holder = next((h for h in plan.holders if h.key == key), None)
    limit = pool.max_hold_seconds_when_queued
    stop_at = stop_time(pool, holder) if holder is not None else None
    if holder is None or holder.hold_warned_at is None or stop_at is None or limit is None:
        return {}
    return {"hold_limit": HoldLimit(warned_at=holder.hold_warned_at, stop_at=stop_at, limit_seconds=limit)}
