"""``QueueController``: the watches, the leader's loop, and one pass from the cache to the cluster.

Every replica runs the watches (so its API can answer capacity and usage); only the Lease holder
writes: it removes gates, keeps the Redis index, restores kept places and posts Events. Grants are
decided from the pods themselves (their gate and ``requested-at``), never from Redis alone, so a
Redis outage slows nothing down and loses no order (the index is rebuilt from the pods).

A pass (``sync_once``) runs in the order of the methods below it: forget the pods that left (a
holder's slice is seen free), index new queued pods (a kept place moves a pod's requested-at back),
plan every pool and grant its heads, then tell positions, check stuck heads, export metrics and,
when due, rebuild the index from the pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from webhook import metrics
from webhook.cluster_view import PodView
from webhook.config import Config
from webhook.controller.cache import WatchCache
from webhook.controller.events import WRITERS, EventWriter, human
from webhook.controller.gate import ungate
from webhook.controller.history_writer import HistoryWriter, Kind
from webhook.controller.hold_limit import HoldLimit
from webhook.controller.positions import PositionEvents
from webhook.controller.store_breaker import StoreBreaker
from webhook.controller.stuck import StuckHeads
from webhook.election import FencedKube, LeaderElector
from webhook.grants import NOTE_LAG, PoolPlan, due_grants, slices_of
from webhook.history import HistoryStore
from webhook.hub_api import HubServers
from webhook.kube import Informer, Kube, KubeError, Obj, pod_path
from webhook.models import Admitted
from webhook.pods import format_time, pointer
from webhook.protocols import QueueStore
from webhook.records import entry_of, holder_of

log = logging.getLogger(__package__)  # the controller's one logger, whichever module writes


def default_identity() -> str:
    """This replica's name in the Lease and on its Events: the pod's name, else host and pid."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class QueueController:
    """Watches, decides, writes. Implements ``webhook.protocols.ClusterView`` for the API."""

    def __init__(
        self,
        config: Config,
        kube: Kube,
        store: QueueStore | None,
        *,
        history: HistoryStore | None = None,
        identity: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        # The clock requested-at stamps are on (the API server's, as this replica estimates it):
        # the settle window and the waits compare with them.
        self.clock = clock
        self.kube = kube
        self.identity = config.controller.identity or identity or default_identity()
        namespace = config.controller.lease_namespace or os.environ.get("POD_NAMESPACE") or "default"
        self.elector = LeaderElector(
            kube, namespace, config.controller.lease_name, self.identity, config.controller.lease_duration_seconds
        )
        # Every write of the controller's own goes through the fence: none is sent unless this
        # replica surely leads at that moment (a leader frozen past its lease writes nothing).
        self.writer = FencedKube(kube, self.elector.is_leader)
        self.cache = WatchCache(config)
        self.breaker = StoreBreaker(store, self.elector.is_leader)
        self.event_writer = EventWriter(self.writer, self.identity)
        self.positions = PositionEvents(config, self.breaker, self.event_writer)
        self.stuck_heads = StuckHeads(config, self.writer, self.cache, self.event_writer)
        # The hold limit while others wait, only when a pool sets one (it needs the hub's API).
        self.hold_limit = (
            HoldLimit(
                config,
                self.writer,
                self.cache,
                self.event_writer,
                HubServers(config.policy.hub_api_url, config.policy.hub_api_token),
            )
            if any(p.max_hold_seconds_when_queued is not None for p in config.pools.values())
            else None
        )
        self.indexed: set[str] = set()  # queued keys the store has (as far as we know)
        # The queue's history (arrivals, grants, releases, cancels), written off the grant path.
        self.history = HistoryWriter(history, config.history) if history is not None else None
        self.last_rebuild = 0.0
        self.next_due = float("inf")  # monotonic: a settling head becomes grantable, or an Event may go
        # Pods that left the cache lately (key -> monotonic): seen, so their admission notes are not
        # taken for pods on their way (webhook.grants.due_grants).
        self.left: dict[str, float] = {}
        self.pod_informer = Informer(
            kube,
            "/api/v1/pods",
            name="pods",
            on_change=self.cache.pod_changed,
            on_sync=self._pod_views_synced,
            keep=self.cache.view_of,
        )
        self.node_informer = Informer(
            kube, "/api/v1/nodes", name="nodes", on_change=self.cache.node_changed, on_sync=self._nodes_synced
        )

    def _pods_synced(self, items: dict[str, Obj]) -> None:
        """A fresh pod list (raw): as ``_pod_views_synced``."""
        self._pod_views_synced({key: self.cache.view_of(obj) for key, obj in items.items()})

    def _pod_views_synced(self, views: dict[str, PodView | None]) -> None:
        """A fresh pod list: the cache takes it whole, and the index is rebuilt from it."""
        self.cache.pod_views_synced(views)
        self.breaker.dirty = True

    def _nodes_synced(self, items: dict[str, Obj]) -> None:
        self.cache.nodes_synced(items)

    @property
    def pods(self) -> dict[str, PodView]:
        return self.cache.pods

    @property
    def events(self) -> asyncio.Queue[tuple[PodView, str, str, str]]:
        """The Events waiting for a writer."""
        return self.event_writer.queue

    @property
    def store_dirty(self) -> bool:
        """The index may disagree with the pods: the next pass rebuilds it."""
        return self.breaker.dirty

    @store_dirty.setter
    def store_dirty(self, value: bool) -> None:
        self.breaker.dirty = value

    def plans(self) -> dict[str, PoolPlan]:
        return self.cache.plans()

    # --------------------------------------------------------------------------- ClusterView

    def pool_usage(self, pool: str) -> tuple[int, int]:
        return self.cache.pool_usage(pool)

    def slices_through(self, pool: str, key: str) -> int | None:
        return self.cache.slices_through(pool, key)

    def pod_exists(self, namespace: str, name: str) -> bool | None:
        if not self.pod_informer.synced.is_set():
            return None
        return f"{namespace}/{name}" in self.cache.pods

    def readers_plan(self, pool: str) -> PoolPlan | None:
        """The cache's plan once both watches listed (before that, an empty queue would be a lie)."""
        if not (self.pod_informer.synced.is_set() and self.node_informer.synced.is_set()):
            return None
        return self.cache.readers_plan(pool)

    async def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete a pod an admin removed; mark it first, so its place is not kept (I5 is for users)."""
        marker = f"/metadata/annotations/{pointer(self.config.removed_annotation)}"
        try:
            await self.kube.patch_json(pod_path(namespace, name), [{"op": "add", "path": marker, "value": "admin"}])
        except KubeError as exc:
            if exc.status == 404:
                return False
            log.warning(
                "could not mark the pod as removed", extra={"ctx": {"pod": f"{namespace}/{name}", "error": str(exc)}}
            )
        return await self.kube.delete_if_present(pod_path(namespace, name))

    async def set_requested_at(self, namespace: str, name: str, when: datetime) -> None:
        path = f"/metadata/annotations/{pointer(self.config.requested_at_annotation)}"
        await self.kube.patch_json(pod_path(namespace, name), [{"op": "add", "path": path, "value": format_time(when)}])

    # ----------------------------------------------------------------------------- the loops

    async def run(self) -> None:
        """Watches, the election, the leader's loop and the Event writers, until cancelled."""
        tasks = [
            asyncio.create_task(self.pod_informer.run(), name="pod-informer"),
            asyncio.create_task(self.node_informer.run(), name="node-informer"),
            asyncio.create_task(self.elector.run(), name="leader-election"),
            asyncio.create_task(self._leader_loop(), name="leader-loop"),
            *(asyncio.create_task(self.event_writer.run(), name=f"event-writer-{i}") for i in range(WRITERS)),
        ]
        if self.history is not None:
            tasks.append(asyncio.create_task(self.history.run(), name="history-writer"))
        try:
            await asyncio.gather(*tasks)
        finally:
            # Cancel each task once: one the cancelled gather already cancelled is in its clean-up
            # (the elector handing the Lease over), and a second cancellation would cut it short:
            # the next leader then waited out the whole lease (found in kind, on every rollout).
            for task in tasks:
                if not task.done() and not task.cancelling():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.hold_limit is not None:
                await self.hold_limit.hub.aclose()

    async def _leader_loop(self) -> None:
        """A pass after every cache change (a freed slice wakes it at once), and at least every
        ``reconcileSeconds``; nothing but waiting while another replica leads."""
        leading = False
        await self.pod_informer.synced.wait()
        await self.node_informer.synced.wait()
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns a wait that ended as
            # it was cancelled and drops the cancellation (the Lease handed back on shutdown
            # wakes this loop just then), and the replica never stopped.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_wake()):
                    await self._wait_any()
            self.cache.wake.clear()
            self.elector.changed.clear()
            if not self.elector.is_leader():
                if leading:
                    log.info("stopped leading: no more grants from this replica")
                leading = False
                continue
            if not leading:
                # A new leader trusts no cache another leader's writes may have outdated.
                await self.pod_informer.resync()
                self.breaker.dirty = True
                self.positions.reset()
                leading = True
                log.info("leading: granting slices", extra={"ctx": {"identity": self.identity}})
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad sync must not stop the queue
                log.exception("sync failed")

    async def _wait_any(self) -> None:
        waits = [asyncio.create_task(self.cache.wake.wait()), asyncio.create_task(self.elector.changed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _next_wake(self) -> float:
        period = self.config.controller.reconcile_seconds
        if self.elector.is_leader():
            due, self.next_due = self.next_due - time.monotonic(), float("inf")
            if self.breaker.dirty and self.breaker.retry_at > time.monotonic():
                due = min(due, self.breaker.retry_at - time.monotonic())  # rebuild as soon as allowed
            return max(0.01, min(period, self.config.controller.event_min_interval_seconds or period, 5.0, due))
        return min(period, self.elector.retry)

    # ------------------------------------------------------------------------------ the pass

    async def sync_once(self) -> None:
        """One pass: index changes, grants, Events, stuck heads, periodic rebuild, metrics."""
        now = self.clock()
        released = await self._forget(self.cache.take_gone(), now)
        await self._index_new(now)
        plans = self.plans()
        for name, pool_plan in plans.items():
            await self._grant(name, pool_plan, now)
        await self._record_releases(released, now)
        plans = self.plans()
        for name, pool_plan in plans.items():
            told_at = await self.positions.tell(name, pool_plan, now)
            if told_at is not None:
                self.next_due = min(self.next_due, told_at)
            await self.stuck_heads.check(name, pool_plan, now)
            if self.hold_limit is not None:
                at = await self.hold_limit.check(name, pool_plan, now)
                if at is not None:
                    self.next_due = min(self.next_due, time.monotonic() + max(0.0, (at - now).total_seconds()))
            self._export(name, pool_plan)
        if self.breaker.dirty or time.monotonic() - self.last_rebuild >= self.config.controller.reconcile_seconds:
            with metrics.RECONCILE_DURATION.time():
                await self._rebuild(plans)

    async def _forget(self, gone: list[PodView], now: datetime) -> list[PodView]:
        """Pods that left: a queued one leaves a kept place (unless an admin removed it), a
        holder frees its slice, which the grants below hand on in this same pass. The holders
        are returned: the store hears of them after the grants (``_record_releases``), so a
        freed slice waits for no Redis round trip (grants are decided from the pods)."""
        released: list[PodView] = []
        for old in gone:
            self.left[old.key] = time.monotonic()
            self.positions.forget(old.key)
            self.stuck_heads.forget(old.key)
            if self.hold_limit is not None:
                self.hold_limit.forget(old.key)
            if old.pool is None:
                continue
            pool = self.config.pools[old.pool]
            store = self.breaker.store
            if old.gated:
                keep = 0 if old.removed else pool.keep_place_seconds
                if store is not None:
                    if old.key not in self.indexed and keep > 0:
                        # Gone before this leader indexed it: index it now, so its place is kept.
                        await self.breaker.call("enqueue", store.enqueue(old.pool, entry_of(old), keep))
                    await self.breaker.call("remove", store.remove(old.pool, old.key, keep))
                self.indexed.discard(old.key)
                self._note("cancel", old, now, wait=_since(old.requested_at, now))
                log.info(
                    "queued pod left",
                    extra={"ctx": {"pod": old.key, "user": old.user, "keep_place": pool.keep_place_seconds}},
                )
            else:
                self.cache.slice_freed(old.pool)
                released.append(old)
        return released

    async def _record_releases(self, released: list[PodView], now: datetime) -> None:
        store = self.breaker.store
        for old in released:
            self._note("release", old, now, hold=_since(old.granted_at, now))
            if store is not None and old.pool is not None:
                await self.breaker.call("release", store.release(old.pool, old.key, now))

    async def _index_new(self, now: datetime) -> None:
        """Enqueue new queued pods; a kept place (tombstone) moves the pod's requested-at back."""
        store = self.breaker.store
        if store is None:
            return
        for view in list(self.cache.pods.values()):
            if not view.queued or view.key in self.indexed or view.pool is None:
                continue
            pool = self.config.pools[view.pool]
            entry = entry_of(view)
            effective = await self.breaker.call("enqueue", store.enqueue(view.pool, entry, pool.keep_place_seconds))
            if effective is None:
                return  # the store is down: retry on the next pass
            self.indexed.add(view.key)
            self._note("arrival", replace(view, requested_at=effective.requested_at), effective.requested_at)
            if view.requested_at is not None and effective.requested_at < view.requested_at:
                await self._restore_place(view, effective.requested_at)

    async def _restore_place(self, view: PodView, when: datetime) -> None:
        """Write the kept place on the pod, so grants (decided from the pods) honour it (I5)."""
        path = f"/metadata/annotations/{pointer(self.config.requested_at_annotation)}"
        try:
            await self.writer.patch_json(
                pod_path(view.namespace, view.name), [{"op": "add", "path": path, "value": format_time(when)}]
            )
        except KubeError as exc:
            log.warning("could not restore a kept place", extra={"ctx": {"pod": view.key, "error": str(exc)}})
            return
        self.cache.amend(replace(view, requested_at=when))
        waited = (self.clock() - when).total_seconds()
        log.info(
            "kept place restored",
            extra={"ctx": {"pod": view.key, "user": view.user, "requested_at": format_time(when)}},
        )
        self.event_writer.emit(
            view, "PlaceKept", f"Welcome back: your place in the GPU queue was kept (first asked {human(waited)} ago)"
        )

    async def _grant(self, name: str, pool_plan: PoolPlan, now: datetime) -> None:
        """Remove the gates of the heads the plan grants, in order, while this replica leads: all
        of them, or up to the first one that could overtake a pod not seen yet
        (``webhook.grants.due_grants``, from the admission notes read once per pass with grants).
        """
        if not pool_plan.grants:
            return
        freed = self.cache.freed_at.get(name, time.monotonic())
        settle = timedelta(seconds=self.config.controller.order_settle_seconds)
        admitted = await self._admitted(name, now)
        heads, wait_until = due_grants(pool_plan, now, settle, admitted, _Seen(self.cache.pods, self.left))
        if wait_until is not None:
            self.next_due = min(self.next_due, time.monotonic() + (wait_until - now).total_seconds())
        for head in heads:
            if not self.elector.is_leader():
                return
            if head.requested_at is not None and now - head.requested_at < settle:
                metrics.EARLY_GRANTS.labels(name).inc()
            self.cache.freed_at.pop(name, None)
            granted = await ungate(self.writer, self.config, head, now)
            if granted is None:
                continue
            self.cache.record(granted)  # holding from now on, before the watch says so (I1)
            metrics.GATE_REMOVAL_LATENCY.labels(name).observe(time.monotonic() - freed)
            metrics.GRANTS.labels(name).inc()
            waited = (now - head.requested_at).total_seconds() if head.requested_at else 0.0
            metrics.WAIT_TIME.labels(name).observe(max(0.0, waited))
            self._note("grant", head, now, wait=max(0.0, waited))
            self.indexed.discard(head.key)
            self.positions.forget(head.key)
            store = self.breaker.store
            if store is not None:
                holder = holder_of(replace(head, granted_at=now, node=granted.node))
                await self.breaker.call("grant", store.grant(name, holder.key, holder))
            log.info(
                "slice granted",
                extra={"ctx": {"pool": name, "pod": head.key, "user": head.user, "waited_seconds": round(waited, 3)}},
            )
            self.event_writer.emit(head, "SliceGranted", f"GPU slice granted after {human(waited)}")

    async def _admitted(self, name: str, now: datetime) -> list[Admitted] | None:
        """The pool's admission notes of the last ``NOTE_LAG`` (a pod whose create reached the
        watch late is still on its way; an older note is taken as lost); None when the store
        cannot say (then nothing is granted early). ``left`` keeps as long: a pod that left the
        cache was seen after its note was written, so an older departure matches no read note."""
        store = self.breaker.store
        if store is None or self.breaker.resting:
            return None
        cutoff = time.monotonic() - NOTE_LAG.total_seconds()
        for key in [k for k, at in self.left.items() if at < cutoff]:
            del self.left[key]
        return await self.breaker.call("admitted", store.admitted(name, now - NOTE_LAG))

    def _note(
        self, kind: Kind, view: PodView, at: datetime, *, wait: float | None = None, hold: float | None = None
    ) -> None:
        """One history event of a pool pod (nothing when history is off)."""
        if self.history is None or view.pool is None or view.pool not in self.config.pools:
            return
        slices = slices_of(view, self.config.pools[view.pool])
        self.history.note(kind, view, view.pool, slices, at, wait=wait, hold=hold)

    def _export(self, name: str, pool_plan: PoolPlan) -> None:
        metrics.PENDING.labels(name).set(len(pool_plan.queue))
        metrics.ADMITTED_ACTIVE.labels(name).set(len(pool_plan.holders))
        metrics.CAPACITY.labels(name).set(pool_plan.capacity)
        metrics.IN_USE.labels(name).set(pool_plan.in_use)
        metrics.GROUP_CAPPED.labels(name).set(len(pool_plan.capped))

    async def _rebuild(self, plans: dict[str, PoolPlan]) -> None:
        """Replace each pool's index with what the pods say: the pods are the truth."""
        store = self.breaker.store
        if store is None or self.breaker.resting:
            return
        ok = True
        for name, pool_plan in plans.items():
            entries = [entry_of(v) for v in pool_plan.queue]
            holders = [holder_of(h) for h in pool_plan.holders]
            done = await self.breaker.call("rebuild", _done(store.rebuild(name, entries, holders)))
            ok = ok and done is not None
        if ok:
            if self.breaker.dirty:
                log.info("queue index rebuilt from the pods")
            self.breaker.dirty = False
            # Pods this pass did not enqueue (they reached the cache during its awaits: the plans
            # are made after the grants) are written above but stay un-indexed: the next pass
            # enqueues them, which gives a returning user the kept place (I5) even though this
            # rebuild already queued the pod with its new stamp.
            self.indexed = {v.key for p in plans.values() for v in p.queue if v.key in self.indexed}
        self.last_rebuild = time.monotonic()


def _since(then: datetime | None, now: datetime) -> float | None:
    return None if then is None else max(0.0, (now - then).total_seconds())


class _Seen:
    """Keys the watch delivered: in the cache now, or left it lately."""

    def __init__(self, pods: Mapping[str, PodView], left: Mapping[str, float]) -> None:
        self.pods = pods
        self.left = left

    def __contains__(self, key: object) -> bool:
        return key in self.pods or key in self.left


async def _done(awaitable: Awaitable[None]) -> bool:
    """True once ``awaitable`` finished: a store call that returns None, told apart from a skip."""
    await awaitable
    return True
