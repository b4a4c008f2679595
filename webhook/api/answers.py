"""What every read answer shares, whichever source it comes from: polling intervals, the ETA, the 404s.

Positions are 1-based and come with an ETA and a suggested polling interval, so the hub can show a
waiting user where they are without polling harder than the queue moves. The store (Redis) and
the watch cache (while Redis is down) answer in the same shapes through these.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from webhook.api.errors import ApiError
from webhook.api.models import Source
from webhook.config import Pool
from webhook.eta import estimate
from webhook.models import Eta, Holder, PositionState, pod_key
from webhook.protocols import ClusterView

# The whole API logs under one name, whichever module logs, so one filter finds its records.
log = logging.getLogger("webhook.api")

# Suggested polling: the head of the queue changes fastest and matters most to its users.
REFRESH_NEAR_HEAD_SECONDS: Final = 5.0
REFRESH_QUEUED_SECONDS: Final = 15.0
REFRESH_ADMITTED_SECONDS: Final = 30.0
# "unknown" is nearly always a pod created a moment ago that the watch indexes within seconds.
REFRESH_UNKNOWN_SECONDS: Final = 10.0
# "pending" is a pod this replica has seen that the index is about to have: ask again soon.
REFRESH_PENDING_SECONDS: Final = 1.0
NEAR_HEAD: Final = 3

ADMITTED_ETA: Final = Eta(known=True, min_seconds=0.0, max_seconds=0.0, method="admitted")
NO_RELEASE_TIMES: Final = (
    "unknown while the queue store (Redis) is unavailable: it keeps the slice release times the "
    "estimate needs (the position comes from the pods)"
)


def refresh(state: PositionState, position: int | None) -> float:
    if state is PositionState.QUEUED and position is not None:
        return REFRESH_NEAR_HEAD_SECONDS if position <= NEAR_HEAD else REFRESH_QUEUED_SECONDS
    if state is PositionState.ADMITTED:
        return REFRESH_ADMITTED_SECONDS
    if state is PositionState.PENDING:
        return REFRESH_PENDING_SECONDS
    return REFRESH_UNKNOWN_SECONDS


@dataclass(frozen=True)
class PoolSnapshot:
    """What every ETA of one pool needs, read once per answer. From the watch cache
    (``source="cache"``) there are no release times: the ETA is unknown, and says why."""

    name: str
    config: Pool
    capacity: int
    in_use: int
    holders: list[Holder]
    cluster: ClusterView
    release_times: list[datetime] = field(default_factory=list)
    source: Source = "store"

    def eta(self, position: int, key: str, now: datetime, slices: int | None = None) -> Eta:
        """The estimate, or "unknown" if estimating fails: a position without an ETA still helps.
        It counts the slices the pod and those ahead ask for (``slices``, else as the cache has
        them), else one each."""
        try:
            eta = estimate(
                slices=slices or self.cluster.slices_through(self.name, key) or position,
                capacity=self.capacity,
                in_use=self.in_use,
                holders=self.holders,
                release_times=self.release_times,
                cull_timeout_seconds=float(self.config.cull_timeout_seconds),
                now=now,
            )
        except Exception:
            log.exception("ETA estimate failed", extra={"ctx": {"pool": self.name, "position": position}})
            return Eta(known=False, method="error")
        if self.source == "cache" and not eta.known and eta.method.startswith("unknown:"):
            # "unknown: 0 of 3 release intervals observed; <the idle-culler hint>": say why instead.
            culler = eta.method.partition("; ")[2]
            return Eta(known=False, method=f"{NO_RELEASE_TIMES}; {culler}" if culler else NO_RELEASE_TIMES)
        return eta


def no_such_pod(namespace: str, name: str) -> ApiError:
    return ApiError(
        404,
        f"pod {pod_key(namespace, name)} is neither queued nor holding a slice, and the cluster has no such pod",
        {"namespace": namespace, "pod": name},
    )


def no_such_user(user: str, server: str) -> ApiError:
    label = f"{user!r}" + (f" server {server!r}" if server else " (default server)")
    return ApiError(404, f"user {label} has no server queued or holding a slice", {"user": user, "server": server})
