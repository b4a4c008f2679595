"""The watch cache: this replica's pods and nodes as the informers last showed them.

Every replica keeps one, so its API answers capacity and usage without a call to the API server;
the leader plans its grants from it and records its own writes in it (a removed gate, a released
slice), so they count at once instead of when the watch catches up.
"""

from __future__ import annotations

import asyncio
import time

from webhook.cluster_view import NodeView, PodView, node_view, pod_view
from webhook.config import Config
from webhook.grants import PoolPlan, plan
from webhook.kube import Obj, obj_key


class WatchCache:
    """Pods and nodes by key. Every change bumps ``version`` and sets ``wake`` for the leader."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pods: dict[str, PodView] = {}
        self.nodes: dict[str, NodeView] = {}
        self.gone: list[PodView] = []  # last views of pods that left, for the leader's next pass
        self.freed_at: dict[str, float] = {}  # pool -> monotonic time a slice was seen free
        self.wake = asyncio.Event()
        self.version = 0
        self._planned: tuple[int, dict[str, PoolPlan]] = (-1, {})

    # ------------------------------------------------------------------ the informers' callbacks

    def pod_changed(self, kind: str, obj: Obj) -> None:
        """One watch event. A pod that leaves (or stops being ours) keeps its last view in
        ``gone``: the leader needs it to free its slice or keep its place."""
        key = obj_key(obj)
        view = None if kind == "DELETED" else pod_view(obj, self.config)
        if view is None:
            old = self.pods.pop(key, None)
            if old is not None:
                self.gone.append(old)
        else:
            self.pods[key] = view
        self._changed()

    def view_of(self, obj: Obj) -> PodView | None:
        """What the cache keeps of a listed pod (the pod informer's ``keep``)."""
        return pod_view(obj, self.config)

    def pod_views_synced(self, views: dict[str, PodView | None]) -> None:
        """A fresh list, as views (None: not one of ours), replaces the cache."""
        fresh = {key: view for key, view in views.items() if view is not None}
        self.gone.extend(view for key, view in self.pods.items() if key not in fresh)
        self.pods = fresh
        self._changed()

    def node_changed(self, kind: str, obj: Obj) -> None:
        key = obj_key(obj)
        if kind == "DELETED":
            self.nodes.pop(key, None)
        else:
            self.nodes[key] = node_view(obj)
        self._changed()

    def nodes_synced(self, items: dict[str, Obj]) -> None:
        self.nodes = {key: node_view(obj) for key, obj in items.items()}
        self._changed()

    # ---------------------------------------------------------------------- the leader's writes

    def record(self, view: PodView) -> None:
        """A write of ours that moves a slice (gate removed, stuck pod released): it counts before
        the watch shows it, so no second grant can use the same slice (I1). Never over what the
        watch said since (``_newer_seen``): a pod deleted while our write was answered stays gone."""
        if self._newer_seen(view):
            return
        self.pods[view.key] = view
        self._changed()

    def amend(self, view: PodView) -> None:
        """A write of ours that moves no slice (a restored requested-at): the pass in progress
        plans from it, and there is nothing to wake for."""
        if not self._newer_seen(view):
            self.pods[view.key] = view

    def _newer_seen(self, view: PodView) -> bool:
        """The watch already told more than our write's answer: the pod left (or is another pod of
        the same name), or its cached state is a later resourceVersion. Recording the answer then
        would bring back a pod that is gone: a holder that holds nothing, for good (found: a pod
        deleted as its gate was removed kept a slice in use until the next re-list)."""
        cached = self.pods.get(view.key)
        if cached is None or (cached.uid and view.uid and cached.uid != view.uid):
            return True
        if cached.resource_version.isdigit() and view.resource_version.isdigit():
            return int(cached.resource_version) > int(view.resource_version)
        return False

    def take_gone(self) -> list[PodView]:
        gone, self.gone = self.gone, []
        return gone

    def slice_freed(self, pool: str) -> None:
        """Note when a slice of ``pool`` was first seen free: the gate-removal latency counts from it."""
        self.freed_at.setdefault(pool, time.monotonic())

    # ---------------------------------------------------------------------------------- reading

    def plans(self) -> dict[str, PoolPlan]:
        pods, nodes = list(self.pods.values()), list(self.nodes.values())
        return {name: plan(name, pool, pods, nodes) for name, pool in self.config.pools.items()}

    def readers_plan(self, pool: str) -> PoolPlan | None:
        """The pool's plan for readers (the API), made at most once per cache version: it may ask
        often, and answers positions from it while the store is down. None for a pool that is not
        configured."""
        version, planned = self._planned
        if version != self.version:
            planned = self.plans()
            self._planned = (self.version, planned)
        return planned.get(pool)

    def pool_usage(self, pool: str) -> tuple[int, int]:
        """(capacity, in use) in slices."""
        found = self.readers_plan(pool)
        return (found.capacity, found.in_use) if found is not None else (0, 0)

    def slices_through(self, pool: str, key: str) -> int | None:
        """Slices a queued pod and everyone ahead of it ask for; None when it is not queued here."""
        found = self.readers_plan(pool)
        if found is None:
            return None
        for pod, through in zip(found.queue, found.slices_through, strict=True):
            if pod.key == key:
                return through
        return None

    def _changed(self) -> None:
        self.version += 1
        self.wake.set()
