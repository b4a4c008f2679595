"""The queue controller: watches pods and nodes, grants slices in order, tells users where they stand.

Every replica runs the watches (so its API can answer capacity and usage); only the Lease holder
writes: it removes gates, keeps the Redis index, restores kept places and posts Events. Grants are
decided from the pods themselves (their gate and ``requested-at``), never from Redis alone, so a
Redis outage slows nothing down and loses no order (the index is rebuilt from the pods).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from webhook import metrics
from webhook.cluster_view import NodeView, PodView, node_view, pod_view
from webhook.config import Config, Pool, StuckPolicy
from webhook.election import LeaderElector
from webhook.eta import estimate, format_eta
from webhook.grants import PoolPlan, plan
from webhook.kube import Informer, Kube, KubeError, Obj, obj_key, pod_path, retry_on_conflict
from webhook.models import Holder, QueueEntry
from webhook.pods import format_time, pointer
from webhook.protocols import QueueStore, StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
_STORE_BACKOFF = 1.0


def human(seconds: float) -> str:
    """``12m31s``, ``1h05m``, ``45s``: how long someone waited."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def default_identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class QueueController:
    """Watches, decides, writes. Implements ``webhook.protocols.ClusterView`` for the API."""

    def __init__(self, config: Config, kube: Kube, store: QueueStore | None, *, identity: str | None = None) -> None:
        self.config = config
        self.kube = kube
        self.store = store
        self.identity = config.controller.identity or identity or default_identity()
        namespace = config.controller.lease_namespace or os.environ.get("POD_NAMESPACE") or "default"
        self.elector = LeaderElector(
            kube, namespace, config.controller.lease_name, self.identity, config.controller.lease_duration_seconds
        )
        self.pods: dict[str, PodView] = {}
        self.nodes: dict[str, NodeView] = {}
        self.gone: list[PodView] = []
        self.wake = asyncio.Event()
        self.version = 0
        self._usage_cache: tuple[int, dict[str, tuple[int, int]]] = (-1, {})
        self.indexed: set[str] = set()  # queued keys the store has (as far as we know)
        self.posted: dict[str, tuple[int, float]] = {}  # key -> (position last told, monotonic time)
        self.stuck: set[str] = set()
        self.store_dirty = True
        self.last_rebuild = 0.0
        self.freed_at: dict[str, float] = {}  # pool -> monotonic time a slice was seen free
        self.next_due = float("inf")  # monotonic time a settling head becomes grantable
        self.store_retry_at = 0.0  # monotonic time the store may be tried again after an outage
        self.events: asyncio.Queue[tuple[PodView, str, str, str]] = asyncio.Queue(maxsize=10_000)
        self.pod_informer = Informer(
            kube,
            "/api/v1/pods",
            name="pods",
            on_change=self._pod_changed,
            on_sync=self._pods_synced,
        )
        self.node_informer = Informer(
            kube, "/api/v1/nodes", name="nodes", on_change=self._node_changed, on_sync=self._nodes_synced
        )

    # ------------------------------------------------------------------------------- the cache

    def _pod_changed(self, kind: str, obj: Obj) -> None:
        key = obj_key(obj)
        view = None if kind == "DELETED" else pod_view(obj, self.config)
        if view is None:
            old = self.pods.pop(key, None)
            if old is not None:
                self.gone.append(old)
        else:
            self.pods[key] = view
        self._changed()

    def _pods_synced(self, items: dict[str, Obj]) -> None:
        fresh: dict[str, PodView] = {}
        for key, obj in items.items():
            view = pod_view(obj, self.config)
            if view is not None:
                fresh[key] = view
        self.gone.extend(view for key, view in self.pods.items() if key not in fresh)
        self.pods = fresh
        self.store_dirty = True
        self._changed()

    def _node_changed(self, kind: str, obj: Obj) -> None:
        key = obj_key(obj)
        if kind == "DELETED":
            self.nodes.pop(key, None)
        else:
            self.nodes[key] = node_view(obj)
        self._changed()

    def _nodes_synced(self, items: dict[str, Obj]) -> None:
        self.nodes = {key: node_view(obj) for key, obj in items.items()}
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        self.wake.set()

    def plans(self) -> dict[str, PoolPlan]:
        pods, nodes = list(self.pods.values()), list(self.nodes.values())
        return {name: plan(name, pool, pods, nodes) for name, pool in self.config.pools.items()}

    # --------------------------------------------------------------------------- ClusterView

    def pool_usage(self, pool: str) -> tuple[int, int]:
        version, usage = self._usage_cache
        if version != self.version:
            usage = {name: (p.capacity, p.in_use) for name, p in self.plans().items()}
            self._usage_cache = (self.version, usage)
        return usage.get(pool, (0, 0))

    def pod_exists(self, namespace: str, name: str) -> bool | None:
        if not self.pod_informer.synced.is_set():
            return None
        return f"{namespace}/{name}" in self.pods

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
        """Watches, the election and the leader's loop, until cancelled."""
        tasks = [
            asyncio.create_task(self.pod_informer.run(), name="pod-informer"),
            asyncio.create_task(self.node_informer.run(), name="node-informer"),
            asyncio.create_task(self.elector.run(), name="leader-election"),
            asyncio.create_task(self._leader_loop(), name="leader-loop"),
            *(asyncio.create_task(self._event_writer(), name=f"event-writer-{i}") for i in range(4)),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _leader_loop(self) -> None:
        leading = False
        await self.pod_informer.synced.wait()
        await self.node_informer.synced.wait()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_any(), timeout=self._next_wake())
            self.wake.clear()
            self.elector.changed.clear()
            if not self.elector.is_leader():
                if leading:
                    log.info("stopped leading: no more grants from this replica")
                leading = False
                continue
            if not leading:
                # A new leader trusts no cache another leader's writes may have outdated.
                await self.pod_informer.resync()
                self.store_dirty = True
                self.posted.clear()
                leading = True
                log.info("leading: granting slices", extra={"ctx": {"identity": self.identity}})
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad sync must not stop the queue
                log.exception("sync failed")

    async def _wait_any(self) -> None:
        waits = [asyncio.create_task(self.wake.wait()), asyncio.create_task(self.elector.changed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _next_wake(self) -> float:
        period = self.config.controller.reconcile_seconds
        if self.elector.is_leader():
            due, self.next_due = self.next_due - time.monotonic(), float("inf")
            if self.store_dirty and self.store_retry_at > time.monotonic():
                due = min(due, self.store_retry_at - time.monotonic())  # rebuild as soon as allowed
            return max(0.01, min(period, self.config.controller.event_min_interval_seconds or period, 5.0, due))
        return min(period, self.elector.retry)

    async def sync_once(self) -> None:
        """One pass: index changes, grants, Events, stuck heads, periodic rebuild, metrics."""
        now = datetime.now(UTC)
        gone, self.gone = self.gone, []
        await self._forget(gone, now)
        await self._index_new(now)
        plans = self.plans()
        for name, pool_plan in plans.items():
            await self._grant(name, pool_plan, now)
        plans = self.plans()
        for name, pool_plan in plans.items():
            await self._tell_positions(name, pool_plan, now)
            await self._check_stuck(name, pool_plan, now)
            self._export(name, pool_plan)
        if self.store_dirty or time.monotonic() - self.last_rebuild >= self.config.controller.reconcile_seconds:
            with metrics.RECONCILE_DURATION.time():
                await self._rebuild(plans)

    async def _store(self, op: str, call: Coroutine[Any, Any, T]) -> T | None:
        """A store call that degrades: on an outage, log, mark the index for a rebuild, go on.

        After a failure the store is left alone for ``_STORE_BACKOFF`` seconds: a hung Redis costs
        one timeout per backoff, never one per call, so grants do not queue up behind it.
        """
        if time.monotonic() < self.store_retry_at:
            call.close()
            return None
        try:
            return await call
        except StoreUnavailable as exc:
            if not self.store_dirty:
                log.warning(
                    "queue store unavailable; granting from the pods alone",
                    extra={"ctx": {"op": op, "error": str(exc)}},
                )
            self.store_dirty = True
            self.store_retry_at = time.monotonic() + _STORE_BACKOFF
            return None

    async def _forget(self, gone: list[PodView], now: datetime) -> None:
        for old in gone:
            self.posted.pop(old.key, None)
            self.stuck.discard(old.key)
            if old.pool is None:
                continue
            pool = self.config.pools[old.pool]
            if old.gated:
                store = self.store
                keep = 0 if old.removed else pool.keep_place_seconds
                if store is not None:
                    if old.key not in self.indexed and keep > 0:
                        # Gone before this leader indexed it: index it now, so its place is kept.
                        await self._store("enqueue", store.enqueue(old.pool, _entry(old), keep))
                    await self._store("remove", store.remove(old.pool, old.key, keep))
                self.indexed.discard(old.key)
                log.info(
                    "queued pod left",
                    extra={"ctx": {"pod": old.key, "user": old.user, "keep_place": pool.keep_place_seconds}},
                )
            else:
                self.freed_at.setdefault(old.pool, time.monotonic())
                store = self.store
                if store is not None:
                    await self._store("release", store.release(old.pool, old.key, now))

    async def _index_new(self, now: datetime) -> None:
        """Enqueue new queued pods; a kept place (tombstone) moves the pod's requested-at back."""
        store = self.store
        if store is None:
            return
        for view in list(self.pods.values()):
            if not view.queued or view.key in self.indexed or view.pool is None:
                continue
            pool = self.config.pools[view.pool]
            entry = _entry(view)
            effective = await self._store("enqueue", store.enqueue(view.pool, entry, pool.keep_place_seconds))
            if effective is None:
                return  # the store is down: retry on the next pass
            self.indexed.add(view.key)
            if view.requested_at is not None and effective.requested_at < view.requested_at:
                await self._restore_place(view, effective.requested_at)

    async def _restore_place(self, view: PodView, when: datetime) -> None:
        try:
            await self.set_requested_at(view.namespace, view.name, when)
        except KubeError as exc:
            log.warning("could not restore a kept place", extra={"ctx": {"pod": view.key, "error": str(exc)}})
            return
        self.pods[view.key] = replace(view, requested_at=when)
        waited = (datetime.now(UTC) - when).total_seconds()
        log.info(
            "kept place restored",
            extra={"ctx": {"pod": view.key, "user": view.user, "requested_at": format_time(when)}},
        )
        await self._event(
            view, "PlaceKept", f"Welcome back: your place in the GPU queue was kept (first asked {human(waited)} ago)"
        )

    async def _grant(self, name: str, pool_plan: PoolPlan, now: datetime) -> None:
        if not pool_plan.grants:
            return
        freed = self.freed_at.get(name, time.monotonic())
        settle = timedelta(seconds=self.config.controller.order_settle_seconds)
        for head in pool_plan.grants:
            if not self.elector.is_leader():
                return
            if head.requested_at is not None and now - head.requested_at < settle:
                # Someone stamped just before may not be visible yet: wait, keep the order (I2).
                due = (head.requested_at + settle - now).total_seconds()
                self.next_due = min(self.next_due, time.monotonic() + due)
                return
            self.freed_at.pop(name, None)
            granted = await self._ungate(head, now)
            if granted is None:
                continue
            metrics.GATE_REMOVAL_LATENCY.labels(name).observe(time.monotonic() - freed)
            metrics.GRANTS.labels(name).inc()
            waited = (now - head.requested_at).total_seconds() if head.requested_at else 0.0
            metrics.WAIT_TIME.labels(name).observe(max(0.0, waited))
            self.indexed.discard(head.key)
            self.posted.pop(head.key, None)
            store = self.store
            if store is not None:
                holder = _holder(replace(head, granted_at=now, node=granted.node))
                await self._store("grant", store.grant(name, holder.key, holder))
            log.info(
                "slice granted",
                extra={"ctx": {"pool": name, "pod": head.key, "user": head.user, "waited_seconds": round(waited, 3)}},
            )
            await self._event(head, "SliceGranted", f"GPU slice granted after {human(waited)}")

    async def _ungate(self, head: PodView, now: datetime) -> PodView | None:
        """Remove our gate (only ours) with a patch guarded by ``test`` ops; None if the pod is gone."""
        path = pod_path(head.namespace, head.name)
        gate = self.config.gate_name

        async def attempt() -> Obj | None:
            pod = await self.kube.request("GET", path)
            gates = (pod.get("spec") or {}).get("schedulingGates") or []
            index = next((i for i, g in enumerate(gates) if g.get("name") == gate), None)
            if index is None or (pod.get("metadata") or {}).get("deletionTimestamp"):
                return None
            admitted = f"/metadata/annotations/{pointer(self.config.admitted_at_annotation)}"
            ops: list[Obj] = [
                {"op": "test", "path": "/metadata/resourceVersion", "value": pod["metadata"]["resourceVersion"]},
                {"op": "test", "path": f"/spec/schedulingGates/{index}/name", "value": gate},
                {"op": "remove", "path": f"/spec/schedulingGates/{index}"},
            ]
            if isinstance((pod.get("metadata") or {}).get("annotations"), dict):
                ops.append({"op": "add", "path": admitted, "value": format_time(now)})
            else:
                ops.append(
                    {
                        "op": "add",
                        "path": "/metadata/annotations",
                        "value": {self.config.admitted_at_annotation: format_time(now)},
                    }
                )
            return await self.kube.patch_json(path, ops)

        try:
            result = await retry_on_conflict(attempt)
        except KubeError as exc:
            if exc.status != 404:
                log.warning("gate removal failed", extra={"ctx": {"pod": head.key, "error": str(exc)}})
            return None
        if result is None:
            return None
        view = pod_view(result, self.config)
        if view is not None:
            self.pods[view.key] = view  # count it as holding before the watch says so (I1)
            self._changed()
        return view

    async def _tell_positions(self, name: str, pool_plan: PoolPlan, now: datetime) -> None:
        """A new Event when a queued pod's position changes, at most one per pod per interval."""
        if not pool_plan.queue:
            return
        release_times: list[datetime] = []
        store = self.store
        if store is not None:
            release_times = await self._store("release_times", store.release_times(name)) or []
        pool = self.config.pools[name]
        interval = self.config.controller.event_min_interval_seconds
        clock = time.monotonic()
        length = len(pool_plan.queue)
        holders = [_holder(h) for h in pool_plan.holders]
        todo: list[tuple[PodView, str]] = []
        for index, view in enumerate(pool_plan.queue):
            position = index + 1
            last = self.posted.get(view.key)
            if last is not None and (last[0] == position or clock - last[1] < interval):
                continue
            eta = estimate(
                position=position,
                capacity=pool_plan.capacity,
                holders=holders,
                release_times=release_times,
                cull_timeout_seconds=pool.cull_timeout_seconds,
                now=now,
            )
            message = f"Waiting for a GPU slice: position {position} of {length}, {format_eta(eta)}"
            self.posted[view.key] = (position, clock)
            todo.append((view, message))
        for view, message in todo:
            await self._event(view, "Queued", message)

    async def _check_stuck(self, name: str, pool_plan: PoolPlan, now: datetime) -> None:
        """I7: a granted pod not Ready in time is reported, and per policy loses its slice."""
        pool: Pool = self.config.pools[name]
        limit = timedelta(seconds=pool.admit_timeout_seconds)
        for holder in pool_plan.holders:
            if holder.ready or holder.granted_at is None or holder.key in self.stuck or holder.deleting:
                continue
            if now - holder.granted_at < limit:
                continue
            self.stuck.add(holder.key)
            action = "released" if pool.stuck_policy is StuckPolicy.RELEASE else "kept"
            metrics.STUCK.labels(name, action).inc()
            waited = human((now - holder.granted_at).total_seconds())
            if pool.stuck_policy is StuckPolicy.RELEASE:
                message = f"GPU slice granted {waited} ago but the server is not ready: releasing it for the next user"
            else:
                message = (
                    f"GPU slice granted {waited} ago but the server is not ready; it keeps the slice (policy keep)"
                )
            log.warning("stuck admission", extra={"ctx": {"pool": name, "pod": holder.key, "action": action}})
            await self._event(holder, "StuckAdmission", message, kind="Warning")
            if pool.stuck_policy is StuckPolicy.RELEASE:
                await self._release_stuck(holder)

    async def _release_stuck(self, holder: PodView) -> None:
        """Mark the pod released (it stops counting as in use, even for a future leader), then
        delete it. On a node that is gone the delete may hang; the slice is given on regardless."""
        marker = f"/metadata/annotations/{pointer(self.config.released_annotation)}"
        try:
            await self.kube.patch_json(
                pod_path(holder.namespace, holder.name), [{"op": "add", "path": marker, "value": "stuck"}]
            )
        except KubeError as exc:
            log.warning("could not mark a stuck pod released", extra={"ctx": {"pod": holder.key, "error": str(exc)}})
            return
        self.pods[holder.key] = replace(holder, released=True)
        self.freed_at.setdefault(holder.pool or "", time.monotonic())
        self._changed()
        with contextlib.suppress(KubeError):
            await self.kube.delete(pod_path(holder.namespace, holder.name))

    async def _rebuild(self, plans: dict[str, PoolPlan]) -> None:
        store = self.store
        if store is None or time.monotonic() < self.store_retry_at:
            return
        ok = True
        for name, pool_plan in plans.items():
            entries = [_entry(v) for v in pool_plan.queue]
            holders = [_holder(h) for h in pool_plan.holders]
            done = await self._store("rebuild", _done(store.rebuild(name, entries, holders)))
            ok = ok and done is not None
        if ok:
            if self.store_dirty:
                log.info("queue index rebuilt from the pods")
            self.store_dirty = False
            self.indexed = {v.key for p in plans.values() for v in p.queue}
        self.last_rebuild = time.monotonic()

    def _export(self, name: str, pool_plan: PoolPlan) -> None:
        metrics.PENDING.labels(name).set(len(pool_plan.queue))
        metrics.ADMITTED_ACTIVE.labels(name).set(len(pool_plan.holders))
        metrics.CAPACITY.labels(name).set(pool_plan.capacity)
        metrics.IN_USE.labels(name).set(pool_plan.in_use)

    async def _event(self, view: PodView, reason: str, message: str, *, kind: str = "Normal") -> None:
        """Queue an Event for the writers: a grant never waits for 200 position Events to post."""
        try:
            self.events.put_nowait((view, reason, message, kind))
        except asyncio.QueueFull:
            metrics.EVENTS.labels("dropped").inc()

    async def _event_writer(self) -> None:
        while True:
            view, reason, message, kind = await self.events.get()
            try:
                await self._post_event(view, reason, message, kind=kind)
            finally:
                self.events.task_done()

    async def _post_event(self, view: PodView, reason: str, message: str, *, kind: str = "Normal") -> None:
        """A new core/v1 Event on the pod: stock KubeSpawner shows it on the spawn page."""
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


async def _done(awaitable: Awaitable[None]) -> bool:
    await awaitable
    return True


def _entry(view: PodView) -> QueueEntry:
    return QueueEntry(
        namespace=view.namespace,
        name=view.name,
        user=view.user,
        server=view.server,
        requested_at=view.requested_at or view.created_at or datetime.now(UTC),
        uid=view.uid,
    )


def _holder(view: PodView) -> Holder:
    return Holder(
        namespace=view.namespace,
        name=view.name,
        user=view.user,
        server=view.server,
        requested_at=view.requested_at,
        granted_at=view.granted_at or view.created_at or datetime.now(UTC),
        node=view.node,
        uid=view.uid,
    )
