"""The queue's wire models: entries, holders, positions and ETAs.

Shared by the Redis store, the controller, the HTTP API and the CLI, so each answer has one shape.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from pydantic import BaseModel, ConfigDict, Field


class _Wire(BaseModel):
    """API/wire models: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")


def pod_key(namespace: str, name: str) -> str:
    """The FIFO member for a pod: ``namespace/name`` (ties in requested-at sort by it)."""
    return f"{namespace}/{name}"


def split_key(key: str) -> tuple[str, str]:
    namespace, _, name = key.partition("/")
    return namespace, name


def score_of(requested_at: datetime) -> float:
    """FIFO score: microseconds since the epoch (exact in a double until the year 2255)."""
    return float(round(requested_at.timestamp() * 1_000_000))


#: A pool's ``groupPriority`` ranks its queue: rank r goes before rank r + 1, FIFO within a rank.
#: The store orders by one number, so a rank adds ``r * RANK_SPAN`` to the requested-at in
#: microseconds: 2**50 us is 35.7 years, more than any spread of requested-at times, and a score
#: stays an exact integer in a double (below 2**53) for ranks up to MAX_RANK until the year 2041.
#: Rank 0 (every pod of a pool without priorities) is the plain requested-at, as before ranks.
RANK_SPAN: Final = 2**50
MAX_RANK: Final = 5


def ranked_score(requested_at: datetime, rank: int) -> float:
    """The store's order of a pod: its rank first, then its requested-at."""
    return score_of(requested_at) + rank * RANK_SPAN


class QueueEntry(_Wire):
    """A pod waiting for a slice."""

    namespace: str
    name: str
    user: str = ""
    server: str = ""
    requested_at: datetime = Field(alias="requestedAt")
    uid: str = ""
    rank: int = Field(0, ge=0, le=MAX_RANK, description="groupPriority rank: lower goes first; 0 without priorities")

    @property
    def key(self) -> str:
        return pod_key(self.namespace, self.name)

    @property
    def score(self) -> float:
        return ranked_score(self.requested_at, self.rank)


class Holder(_Wire):
    """A pod whose gate was removed: it holds one slice until it is deleted or finishes."""

    namespace: str
    name: str
    user: str = ""
    server: str = ""
    requested_at: datetime | None = Field(None, alias="requestedAt")
    granted_at: datetime = Field(alias="grantedAt")
    node: str = ""
    uid: str = ""
    rank: int = Field(0, ge=0, le=MAX_RANK, description="The groupPriority rank it was queued with")

    @property
    def key(self) -> str:
        return pod_key(self.namespace, self.name)


class KeptPlace(_Wire):
    """A queued pod that left (a cancel, a timeout): its place, kept for ``keepPlaceSeconds`` for
    the same user and server to come back to."""

    user: str
    server: str = ""
    requested_at: datetime = Field(alias="requestedAt", description="the place: the pod's requested-at")
    expires_at: datetime = Field(alias="expiresAt")


# How long the store keeps an admission note: far longer than any create takes to reach the watch.
ADMITTED_KEEP = timedelta(seconds=60)


class Admitted(_Wire):
    """A pod of a pool that ``/mutate`` is admitting: written before its requested-at is stamped,
    so the leader, seeing a later pod first, knows this one may still be on its way (I2)."""

    namespace: str
    name: str
    since: datetime = Field(description="no later than the pod's requested-at")
    slices: int = Field(1, ge=1)
    rank: int = Field(0, ge=0, le=MAX_RANK, description="groupPriority rank: a lower one is ahead whenever it came")

    @property
    def key(self) -> str:
        return pod_key(self.namespace, self.name)


class PositionState(StrEnum):
    QUEUED = "queued"
    ADMITTED = "admitted"
    # This replica has seen a pod of a pool for it, the queue index has not caught up yet: ask
    # again in refreshSeconds (the controller indexes a new pod a moment after it is created).
    PENDING = "pending"
    UNKNOWN = "unknown"


POSITION_STATES: Final = (
    "queued: waiting, with a 1-based position and an ETA; admitted: holding a slice; pending: this "
    "replica has seen a pod of a pool for it, the queue index has not caught up yet, ask again in "
    "refreshSeconds; unknown: none of these (yet): e.g. before this replica's watch cache synced, or "
    "granted or removed a moment ago"
)


class Eta(_Wire):
    """A wait estimate as a range; ``known`` is false while there is too little data."""

    known: bool
    min_seconds: float | None = Field(None, alias="minSeconds")
    max_seconds: float | None = Field(None, alias="maxSeconds")
    method: str = ""


class HeldBack(_Wire):
    """Why a queued pod waits although slices may be free: a group of its user holds its limit
    (``groupLimits``). It keeps its place; the pods behind it may go first meanwhile."""

    policy: str = "groupLimits"
    group: str
    limit: int = Field(ge=0)
    in_use: int = Field(alias="inUse", ge=0, description="Slices the group's members hold now")


class Priority(_Wire):
    """Where a queued pod stands in its pool's ``groupPriority``: its rank (0 goes first), the
    group that gave it (None: in none of them, after all of them), and who is ahead of it for a
    better rank: ``ahead`` counts them by group ("2 instructors are ahead of you")."""

    policy: str = "groupPriority"
    rank: int = Field(ge=0)
    group: str | None = None
    ahead: dict[str, int] = Field(default_factory=dict, description="Queued ahead of it by a better rank, per group")


class HoldLimit(_Wire):
    """A holder the hold limit warned (``maxHoldSecondsWhenQueued``): others wait, so the server
    is stopped through the hub at ``stopAt``, unless the queue empties first."""

    policy: str = "maxHoldSecondsWhenQueued"
    warned_at: datetime = Field(alias="warnedAt")
    stop_at: datetime = Field(alias="stopAt")
    limit_seconds: int = Field(alias="limitSeconds", gt=0)


class Position(_Wire):
    """The answer to "where do I stand?" for one pod or user server."""

    pool: str | None
    state: PositionState = Field(description=POSITION_STATES)
    namespace: str | None = None
    name: str | None = None
    user: str | None = None
    server: str | None = None
    position: int | None = Field(None, ge=1, description="1-based; None unless queued")
    queue_length: int = Field(0, alias="queueLength")
    capacity: int = 0
    in_use: int = Field(0, alias="inUse")
    requested_at: datetime | None = Field(None, alias="requestedAt")
    granted_at: datetime | None = Field(None, alias="grantedAt")
    eta: Eta = Field(default_factory=lambda: Eta(known=False))
    refresh_seconds: float = Field(10.0, alias="refreshSeconds")
    held_back: HeldBack | None = Field(None, alias="heldBack", description="Queued, but held back by a group limit")
    priority: Priority | None = Field(
        None, description="Queued in a pool with groupPriority: the rank and who is ahead"
    )
    hold_limit: HoldLimit | None = Field(
        None, alias="holdLimit", description="Admitted, warned: stopped at stopAt unless nobody waits by then"
    )


class PoolStatus(_Wire):
    name: str
    resource: str
    capacity: int
    in_use: int = Field(alias="inUse")
    queued: int
    holders: list[Holder] = Field(default_factory=list)
