"""Leader election on a ``coordination.k8s.io/v1`` Lease (invariant I6: one writer).

Every replica serves admission and the API; only the holder of the Lease grants slices and writes
Events. Time is never compared across machines: as in client-go, a candidate times a lease's
expiry from when *it* saw the lease record last change (its own monotonic clock), not from the
holder's ``renewTime``, so a replica whose wall clock is minutes off neither steals a live lease
nor waits out a dead one for those minutes. The leader counts its lease valid for 0.8 of the
duration from the moment it *started* the renewal (monotonic too), so it stops leading before any
candidate can see the lease expire; every controller write is fenced on ``is_leader()`` (see
``FencedKube``), so a leader frozen past its lease writes nothing when it thaws.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from webhook import metrics
from webhook.kube import Kube, KubeError, Obj
from webhook.pods import format_time, parse_time

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class LeaderElector:
    """Acquire and renew a Lease; ``is_leader`` is true only while the lease is surely ours."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        duration: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = _now,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.retry = max(duration / 4, 0.2)
        self._monotonic = monotonic  # decides: leadership and expiry
        self._wall = wall  # only written into the Lease, for people and other tools to read
        self._valid_until: float | None = None  # monotonic
        # The lease record as last seen (holder, renewTime, resourceVersion) and when we saw it change.
        self._observed: tuple[str, str, str] | None = None
        self._observed_at = 0.0
        self.changed = asyncio.Event()  # set on every gain or loss of leadership

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    def is_leader(self) -> bool:
        return self._valid_until is not None and self._monotonic() < self._valid_until

    async def run(self) -> None:
        """Forever: try to acquire or renew every ``duration/4`` seconds."""
        reported = False  # what the metric and the log last said: a leader that was frozen past its
        # lease finds is_leader() already false when it thaws, and must still say it lost
        try:
            while True:
                try:
                    await self._try()
                except KubeError as exc:
                    if exc.status not in (409, 422):
                        log.warning("lease update failed", extra={"ctx": {"error": str(exc), "lease": self.name}})
                now = self.is_leader()
                if now != reported:
                    reported = now
                    metrics.LEADER.set(1 if now else 0)
                    log.info(
                        "leadership " + ("acquired" if now else "lost"), extra={"ctx": {"identity": self.identity}}
                    )
                    self.changed.set()
                # Jittered, as client-go's: replicas do not renew in lock-step, and each Lease read
                # falls at another point of the API server's second (webhook.clock learns from it).
                await asyncio.sleep(self.retry * (0.75 + 0.25 * random.random()))  # noqa: S311
        finally:
            await self.release()

    async def _try(self) -> None:
        started = self._monotonic()
        now = self._wall()
        try:
            lease = await self.kube.request("GET", self.path)
        except KubeError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, transitions=0, acquired=now),
            }
            await self.kube.request(
                "POST", f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases", body=body
            )
            self._valid_until = started + self.duration * 0.8
            return
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        if holder != self.identity and holder and not self._expired(lease, started):
            self._valid_until = None
            return
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        acquired = parse_time(spec.get("acquireTime")) if holder == self.identity else now
        lease["spec"] = self._spec(now, transitions=transitions, acquired=acquired or now)
        await self.kube.request("PUT", self.path, body=lease)  # resourceVersion guards the race
        self._valid_until = started + self.duration * 0.8

    def _expired(self, lease: Mapping[str, Any], seen: float) -> bool:
        """Another holder's lease is expired when its record has not changed for its duration,
        timed on our own clock from when we first saw this record (client-go's rule)."""
        spec = lease.get("spec") or {}
        record = (
            str(spec.get("holderIdentity") or ""),
            str(spec.get("renewTime") or ""),
            str((lease.get("metadata") or {}).get("resourceVersion") or ""),
        )
        if record != self._observed:
            self._observed, self._observed_at = record, seen
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        return seen > self._observed_at + duration

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
                lease["spec"]["renewTime"] = format_time(self._wall() - timedelta(seconds=self.duration * 2))
                await self.kube.request("PUT", self.path, body=lease)
        except (KubeError, asyncio.CancelledError):  # best effort; the lease expires anyway
            pass


class NotLeader(KubeError):
    """A controller write refused before it was sent: this replica does not (surely) lead."""

    def __init__(self, method: str, path: str) -> None:
        super().__init__(0, f"not the leader: {method} {path} not sent")


# The fence of the write being sent from this task: (is_leader, method, path), read by the hook
# that runs when the request's headers are ready, just before any byte of it leaves the process.
_SENDING: ContextVar[tuple[Callable[[], bool], str, str] | None] = ContextVar("gpu_queue_sending", default=None)


async def _check_at_send(_session: Any, _ctx: Any, _params: Any) -> None:
    sending = _SENDING.get()
    if sending is not None and not sending[0]():
        metrics.FENCED_WRITES.inc()
        raise NotLeader(sending[1], sending[2])


def _install_send_fence(kube: Kube) -> None:
    """Hook the client's session (once): a write whose fence fails by the time its connection is
    ready and its headers are built is aborted before a byte is sent. Checking only on entry leaves
    the whole of connection set-up (a TLS handshake, a wait for a free connection) between the check
    and the send: a leader frozen there posted its Event after thawing."""
    rest = getattr(kube.api, "rest_client", None)
    session = getattr(rest, "pool_manager", None)
    if not isinstance(session, aiohttp.ClientSession):
        return  # not a real client (tests that stand in for the API server)
    if any(getattr(t, "gpu_queue_fence", False) for t in session.trace_configs):
        return
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_check_at_send)
    trace.gpu_queue_fence = True  # type: ignore[attr-defined]
    trace.freeze()
    session.trace_configs.append(trace)


class FencedKube(Kube):
    """The controller's writer: every write is sent only while ``is_leader()`` holds, checked when
    it is asked for and again when its headers are ready to go (``_install_send_fence``); reads go
    through. Its helpers (``patch_json``, ``delete``, ...) all end in ``request``, which hands over
    to the wrapped ``Kube`` (the owner of the API client)."""

    def __init__(self, kube: Kube, is_leader: Callable[[], bool]) -> None:
        super().__init__(kube.api, timeout=kube.timeout)
        self.inner = kube
        self.is_leader = is_leader
        self.refused = 0
        _install_send_fence(kube)

    async def aclose(self) -> None:  # the wrapped Kube owns the client
        return None

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        request_timeout: float | aiohttp.ClientTimeout | None = None,
    ) -> Obj:
        if method == "GET":
            return await self.inner.request(
                method, path, query=query, body=body, content_type=content_type, request_timeout=request_timeout
            )
        if not self.is_leader():
            self.refused += 1
            metrics.FENCED_WRITES.inc()
            raise NotLeader(method, path)
        token = _SENDING.set((self.is_leader, method, path))
        try:
            return await self.inner.request(
                method, path, query=query, body=body, content_type=content_type, request_timeout=request_timeout
            )
        except NotLeader:
            self.refused += 1
            raise
        finally:
            _SENDING.reset(token)
