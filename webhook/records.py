"""Pod views as the queue store and the wait estimate take them: ``QueueEntry`` and ``Holder``.

A pod's own stamps win; a pod with a broken or missing stamp falls back to its creation time, and
only a pod with neither to now, so each still gets a place.
"""

from __future__ import annotations

from datetime import UTC, datetime

from webhook.cluster_view import PodView
from webhook.models import Holder, QueueEntry


def entry_of(view: PodView) -> QueueEntry:
    return QueueEntry(
        namespace=view.namespace,
        name=view.name,
        user=view.user,
        server=view.server,
        requested_at=view.requested_at or view.created_at or datetime.now(UTC),
        uid=view.uid,
        rank=view.rank,
    )


def holder_of(view: PodView) -> Holder:
    return Holder(
        namespace=view.namespace,
        name=view.name,
        user=view.user,
        server=view.server,
        requested_at=view.requested_at,
        granted_at=view.granted_at or view.created_at or datetime.now(UTC),
        node=view.node,
        uid=view.uid,
        rank=view.rank,
    )
