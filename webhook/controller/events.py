"""Pod Events, posted off the grant path: a bounded queue and the writers that drain it.

Stock KubeSpawner shows a pod's Events on the spawn page, so Events are how a user hears their
position, their grant and a kept place. A pass may queue hundreds of them; the grant that follows
must not wait for them, so the leader only queues and ``WRITERS`` tasks post. A full queue drops
the Event (counted): the next position change tells the user again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from webhook import metrics
from webhook.cluster_view import PodView
from webhook.kube import Kube, KubeError
from webhook.pods import format_time

log = logging.getLogger(__package__)  # the controller's one logger, whichever module writes
WRITERS = 4
QUEUE_SIZE = 10_000


def human(seconds: float) -> str:
    """``12m31s``, ``1h05m``, ``45s``: how long someone waited, in an Event's words."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class EventWriter:
    """Queue Events with ``emit``; ``run`` is one writer (the controller starts ``WRITERS``)."""

    def __init__(self, kube: Kube, identity: str) -> None:
        self.kube = kube
        self.identity = identity  # reportingInstance: which replica said it
        self.queue: asyncio.Queue[tuple[PodView, str, str, str]] = asyncio.Queue(maxsize=QUEUE_SIZE)

    def emit(self, view: PodView, reason: str, message: str, *, kind: str = "Normal") -> None:
        """Queue an Event for the writers: a grant never waits for 200 position Events to post."""
        try:
            self.queue.put_nowait((view, reason, message, kind))
        except asyncio.QueueFull:
            metrics.EVENTS.labels("dropped").inc()

    async def run(self) -> None:
        while True:
            view, reason, message, kind = await self.queue.get()
            try:
                await self.post(view, reason, message, kind=kind)
            finally:
                self.queue.task_done()

    async def post(self, view: PodView, reason: str, message: str, *, kind: str = "Normal") -> None:
        """A new core/v1 Event on the pod (never an update: each message is its own line)."""
        now = format_time(datetime.now(UTC))
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{view.name}.{uuid.uuid4().hex[:16]}", "namespace": view.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": view.name,
                "namespace": view.namespace,
                "uid": view.uid,
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": "gpu-queue"},
            "reportingComponent": "gpu-queue",
            "reportingInstance": self.identity,
        }
        try:
            await self.kube.request("POST", f"/api/v1/namespaces/{view.namespace}/events", body=body)
            metrics.EVENTS.labels(reason).inc()
        except KubeError as exc:
            log.warning(
                "could not post an event", extra={"ctx": {"pod": view.key, "reason": reason, "error": str(exc)}}
            )
