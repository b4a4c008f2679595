"""The queue API's wire models: answers, request bodies, path and query parameters.

Handlers parse and answer with these, and the OpenAPI document is generated from them, so the
document and the handlers share one definition of every shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints

from webhook import models as wire
from webhook.models import Eta, HeldBack, KeptPlace, Priority, QueueEntry

API_PREFIX: Final = "/api/v1"
MAX_PAGE: Final = 1000

Role = Literal["public", "read", "admin"]
"""Who may call a route: anyone (the OpenAPI document), a read token, or an admin token."""

Source = Literal["store", "cache"]
"""Where a read answer comes from: the queue store (Redis), or this replica's watch cache."""
SOURCE_HEADER: Final = "X-Gpu-Queue-Source"
SOURCE_TEXT: Final = (
    "Where this answer comes from: store (the Redis index, as usual) or cache (this replica's watch "
    "cache of the pods, while Redis is unavailable: the same positions, an unknown ETA)"
)


class _Answer(BaseModel):
    """camelCase on the wire like ``webhook.models``'s models, so every answer reads alike."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")


class ErrorBody(_Answer):
    """Every non-2xx answer: a sentence that says what went wrong and what to do, plus data."""

    error: str
    detail: Any = None


class Position(wire.Position):
    """The answer to "where do I stand?" for one pod or user server, and where it comes from."""

    source: Source = Field("store", description=SOURCE_TEXT)


class PoolStatus(wire.PoolStatus):
    """One pool's capacity, use, queue length and holders, and where they come from."""

    source: Source = Field("store", description=SOURCE_TEXT)


class PoolList(RootModel[list[PoolStatus]]):
    """``GET /pools``: every configured pool with its holders."""


class QueueItem(QueueEntry):
    """One queued pod as an admin sees it: where it stands, how long it waited, when it may go."""

    position: int = Field(ge=1, description="1-based")
    waiting_seconds: float = Field(alias="waitingSeconds", ge=0)
    eta: Eta
    priority: Priority | None = Field(None, description="groupPriority: its rank and who is ahead by a better one")
    held_back: HeldBack | None = Field(None, alias="heldBack", description="Held back by a group limit")


class QueueListing(_Answer):
    """``GET /pools/{pool}/queue``: one page of a pool's FIFO, head first."""

    pool: str
    resource: str
    capacity: int
    in_use: int = Field(alias="inUse")
    queue_length: int = Field(alias="queueLength", description="All queued entries, not just this page")
    offset: int
    limit: int | None
    entries: list[QueueItem]
    source: Source = Field("store", description=SOURCE_TEXT)


class KeptPlaceList(_Answer):
    """``GET /pools/{pool}/kept-places``: users whose queued server left (a cancel, a timeout) and
    who get their place back if they ask again before ``expiresAt``. Kept places live in Redis
    only: while it is down this route is a 503."""

    pool: str
    kept_places: list[KeptPlace] = Field(alias="keptPlaces", description="earliest place first")


class MoveRequest(_Answer):
    """Body of an admin move: the target place and why (the reason is logged with the edit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    position: int = Field(ge=1, description="1-based target position; past the end means last")
    reason: str = Field("", max_length=500)


class EditResult(_Answer):
    """What an admin edit did, so the CLI can say it in one line."""

    action: Literal["moved", "removed"]
    pool: str
    namespace: str
    name: str
    reason: str
    previous_position: int = Field(alias="previousPosition")
    position: int | None = Field(None, description="The new 1-based position (moved); null when removed")
    queue_length: int = Field(alias="queueLength")
    requested_at: datetime | None = Field(None, alias="requestedAt")
    pod_deleted: bool | None = Field(None, alias="podDeleted", description="removed: false if the pod was gone")


Namespace = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63),
    Field(description="A Kubernetes namespace (DNS-1123 label)"),
]
PodName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253),
    Field(description="A pod name (DNS-1123 subdomain)"),
]
PoolName = Annotated[str, StringConstraints(min_length=1, max_length=253), Field(description="A configured pool")]
Reason = Annotated[str, Field(max_length=500, description="Why; logged with the edit")]


class _Params(BaseModel):
    """Path and query parameters: unknown ones are ignored, as HTTP clients add their own."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class PoolPath(_Params):
    pool: PoolName


class PodPath(_Params):
    namespace: Namespace
    pod: PodName


class PoolPodPath(_Params):
    pool: PoolName
    namespace: Namespace
    pod: PodName


class UserPath(_Params):
    user: str = Field(
        min_length=1, max_length=1024, description="The raw JupyterHub user name, URL-encoded (may hold @ . capitals)"
    )


class UserQuery(_Params):
    server: str = Field("", max_length=255, description="The named server; empty for the default server")


class QueueQuery(_Params):
    limit: int | None = Field(None, ge=1, le=MAX_PAGE, description="At most this many entries")
    offset: int = Field(0, ge=0, description="Skip this many entries from the head")


class RemoveQuery(_Params):
    reason: Reason = ""
