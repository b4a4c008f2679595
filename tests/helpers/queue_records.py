"""Queue entries and holders for the store tests: one shape for the contract suite (both stores)
and the Redis-only tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from webhook.models import Holder, QueueEntry
from webhook.protocols import QueueStore

T0 = datetime(2026, 11, 28, 15, 0, 0, tzinfo=UTC)
POOL = "gpu"


def entry(name: str, at: float = 0.0, *, ns: str = "jhub", user: str | None = None, server: str = "") -> QueueEntry:
    return QueueEntry(
        namespace=ns,
        name=name,
        user=name.removeprefix("jupyter-") if user is None else user,
        server=server,
        requested_at=T0 + timedelta(seconds=at),
        uid=f"uid-{name}",
    )


def holder_for(e: QueueEntry, granted_after: float = 60.0, *, user: str | None = None) -> Holder:
    return Holder(
        namespace=e.namespace,
        name=e.name,
        user=e.user if user is None else user,
        server=e.server,
        granted_at=e.requested_at + timedelta(seconds=granted_after),
        node="gpu-node-1",
    )


async def queued_keys(store: QueueStore, pool: str = POOL) -> list[str]:
    return [e.key for e in await store.entries(pool)]
