"""The queue's vocabulary: entries, holders, positions and ETAs, and the store's Protocol.

These models are shared by the Redis store (``webhook.queue``), the controller
(``webhook.controller``), the HTTP API (``webhook.api``) and the CLI, so each answer has one shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

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


def time_of(score: float) -> datetime:
    return datetime.fromtimestamp(score / 1_000_000, tz=UTC)


def format_requested_at(when: datetime) -> str:
    """RFC 3339 with microseconds in UTC: ``2026-11-28T16:14:06.123456Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_requested_at(text: str) -> datetime | None:
    """Parse an RFC 3339 timestamp; None when it is not one (a bad annotation is not trusted)."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    if value.tzinfo is None:
        return None
    return value.astimezone(UTC)


class QueueEntry(_Wire):
    """A pod waiting for a slice."""

    namespace: str
    name: str
    user: str = ""
    server: str = ""
    requested_at: datetime = Field(alias="requestedAt")
    uid: str = ""

    @property
    def key(self) -> str:
        return pod_key(self.namespace, self.name)

    @property
    def score(self) -> float:
        return score_of(self.requested_at)


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

    @property
    def key(self) -> str:
        return pod_key(self.namespace, self.name)


class Tombstone(_Wire):
    """A queued pod that disappeared: its place, kept for ``keepPlaceSeconds``."""

    user: str
    server: str = ""
    requested_at: datetime = Field(alias="requestedAt")
    expires_at: datetime = Field(alias="expiresAt")


class PositionState(StrEnum):
    QUEUED = "queued"
    ADMITTED = "admitted"
    UNKNOWN = "unknown"


class Eta(_Wire):
    """A wait estimate as a range; ``known`` is false while there is too little data."""

    known: bool
    min_seconds: float | None = Field(None, alias="minSeconds")
    max_seconds: float | None = Field(None, alias="maxSeconds")
    method: str = ""


class Position(_Wire):
    """The answer to "where do I stand?" for one pod or user server."""

    pool: str | None
    state: PositionState
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


class PoolStatus(_Wire):
    name: str
    resource: str
    capacity: int
    in_use: int = Field(alias="inUse")
    queued: int
    holders: list[Holder] = Field(default_factory=list)


class QueueStore(Protocol):
    """The shared index of the queue (Redis in production). Every multi-key change is atomic.

    Keys are ``namespace/name`` (``pod_key``). The pods stay the durable truth: ``rebuild``
    replaces a pool's index with what the pods say.
    """

    async def enqueue(self, pool: str, entry: QueueEntry, keep_place_seconds: float) -> QueueEntry:
        """Add the entry unless present (ZADD NX). A live tombstone for the same user and server
        gives the entry the old requested-at; the returned entry carries the effective time."""

    async def position(self, pool: str, key: str) -> tuple[int, int] | None:
        """(1-based position, queue length), or None when the key is not queued. O(log n)."""

    async def remove(self, pool: str, key: str, keep_place_seconds: float) -> QueueEntry | None:
        """Drop a queued entry; with keep_place_seconds > 0 leave a tombstone for its user/server."""

    async def grant(self, pool: str, key: str, holder: Holder) -> bool:
        """Move a queued entry to the holders and record its wait; False if it was not queued."""

    async def release(self, pool: str, key: str, at: datetime) -> Holder | None:
        """Drop a holder and record the release time (the freed-slice rate feeds the ETA)."""

    async def entries(self, pool: str, start: int = 0, stop: int = -1) -> list[QueueEntry]:
        """Queued entries in order, positions start+1..stop+1 (inclusive stop, -1 = all)."""

    async def holders(self, pool: str) -> list[Holder]:
        """Current holders, oldest grant first."""

    async def length(self, pool: str) -> int:
        """Number of queued entries."""

    async def move(self, pool: str, key: str, position: int) -> QueueEntry | None:
        """Admin: put a queued entry at a 1-based position; returns it with its new requested-at."""

    async def rebuild(self, pool: str, entries: Sequence[QueueEntry], holders: Sequence[Holder]) -> None:
        """Replace the pool's FIFO and holders with these (tombstones and statistics stay)."""

    async def find_user(self, user: str, server: str) -> list[tuple[str, QueueEntry | Holder]]:
        """Every (pool, entry or holder) of one user's server, across pools."""

    async def wait_samples(self, pool: str, limit: int = 100) -> list[float]:
        """The most recent observed waits in seconds (queued -> granted), newest first."""

    async def release_times(self, pool: str, limit: int = 100) -> list[datetime]:
        """The most recent slice release times, newest first."""

    async def ping(self) -> bool:
        """True when the store answers."""


class ClusterView(Protocol):
    """What the API needs from the controller's view of the cluster (this replica's watch cache)
    and the two pod writes an admin edit makes. Implemented by ``webhook.controller``."""

    def pool_usage(self, pool: str) -> tuple[int, int]:
        """(capacity, in use) of a pool as last observed; (0, 0) before the first sync."""

    def pod_exists(self, namespace: str, name: str) -> bool | None:
        """True/False from the watch cache; None when this replica has no cache (not synced)."""

    async def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete a pod (admin ``queue rm``); False when it was already gone."""

    async def set_requested_at(self, namespace: str, name: str, when: datetime) -> None:
        """Rewrite a pod's requested-at annotation (admin ``queue move``), so a rebuild keeps it."""
