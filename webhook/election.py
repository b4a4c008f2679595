"""Leader election on a ``coordination.k8s.io/v1`` Lease (invariant I6: one writer).

Every replica serves admission and the API; only the holder of the Lease grants slices and writes
Events. A leader that cannot renew before its lease would expire stops leading first, so two
replicas never both believe they lead for longer than the clock skew between them.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from webhook import metrics
from webhook.kube import Kube, KubeError
from webhook.pods import format_time, parse_time

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class LeaderElector:
    """Acquire and renew a Lease; ``is_leader`` is true only while the lease is surely ours."""

    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, duration: float) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.retry = max(duration / 4, 0.2)
        self._valid_until: datetime | None = None
        self.changed = asyncio.Event()  # set on every gain or loss of leadership

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    def is_leader(self) -> bool:
        return self._valid_until is not None and _now() < self._valid_until

    async def run(self) -> None:
        """Forever: try to acquire or renew every ``duration/4`` seconds."""
        try:
            while True:
                was = self.is_leader()
                try:
                    await self._try()
                except KubeError as exc:
                    if exc.status not in (409, 422):
                        log.warning("lease update failed", extra={"ctx": {"error": str(exc), "lease": self.name}})
                now = self.is_leader()
                if now != was:
                    metrics.LEADER.set(1 if now else 0)
                    log.info(
                        "leadership " + ("acquired" if now else "lost"), extra={"ctx": {"identity": self.identity}}
                    )
                    self.changed.set()
                await asyncio.sleep(self.retry)
        finally:
            await self.release()

    async def _try(self) -> None:
        started = _now()
        try:
            lease = await self.kube.request("GET", self.path)
        except KubeError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(started, transitions=0, acquired=started),
            }
            await self.kube.request(
                "POST", f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases", body=body
            )
            self._valid_until = started + timedelta(seconds=self.duration * 0.8)
            return
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        expired = renewed is None or renewed + timedelta(seconds=duration) < started
        if holder != self.identity and holder and not expired:
            self._valid_until = None
            return
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        acquired = parse_time(spec.get("acquireTime")) if holder == self.identity else started
        lease["spec"] = self._spec(started, transitions=transitions, acquired=acquired or started)
        await self.kube.request("PUT", self.path, body=lease)  # resourceVersion guards the race
        self._valid_until = started + timedelta(seconds=self.duration * 0.8)

    def _spec(self, now: datetime, *, transitions: int, acquired: datetime) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "acquireTime": format_time(acquired),
            "renewTime": format_time(now),
            "leaseTransitions": transitions,
        }

    async def release(self) -> None:
        """On shutdown, hand the lease over at once instead of making the others wait it out."""
        if not self.is_leader():
            return
        self._valid_until = None
        metrics.LEADER.set(0)
        try:
            lease = await self.kube.request("GET", self.path)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["renewTime"] = format_time(_now() - timedelta(seconds=self.duration * 2))
                await self.kube.request("PUT", self.path, body=lease)
        except (KubeError, asyncio.CancelledError):  # best effort; the lease expires anyway
            pass
