"""The grant decision: given the pods, the nodes and a pool, who waits, who holds, who goes next.

Pure functions over the views of ``webhook.cluster_view``, so the invariants (I1 capacity, I2
order) are unit-testable against a model without a network. The controller feeds them from its
watch cache; the HTTP API feeds them the same cache for capacity and usage.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from webhook.cluster_view import NodeView, PodView
from webhook.config import Pool


def pool_nodes(pool: Pool, nodes: Iterable[NodeView]) -> list[NodeView]:
    """The pool's nodes: matching its selector and advertising its resource."""
    return [
        n
        for n in nodes
        if all(n.labels.get(k) == v for k, v in pool.node_selector.items()) and n.allocatable.get(pool.resource, 0) > 0
    ]


def capacity(pool: Pool, nodes: Iterable[NodeView]) -> int:
    """Slices the pool may hand out: fixed, or ``auto`` = allocatable over its schedulable nodes."""
    if pool.capacity != "auto":
        return int(pool.capacity)
    total = sum(
        (n.allocatable.get(pool.resource, Decimal(0)) for n in pool_nodes(pool, nodes) if n.schedulable), Decimal(0)
    )
    return int(total)


def in_use(name: str, pool: Pool, pods: Iterable[PodView], nodes: Iterable[NodeView]) -> int:
    """Slices in use: the pool's holders plus other pods asking for the resource on its nodes (I1)."""
    node_names = {n.name for n in pool_nodes(pool, nodes)}
    used = Decimal(0)
    for pod in pods:
        if pod.pool == name:
            if pod.holding:
                used += pod.resources.get(pool.resource, Decimal(1)) or Decimal(1)
        elif pod.pool is None and not pod.finished and pod.node in node_names:
            used += pod.resources.get(pool.resource, Decimal(0))
    return int(used)


@dataclass(frozen=True)
class PoolPlan:
    """One pool's state and what to do now."""

    pool: str
    capacity: int
    in_use: int
    queue: list[PodView]  # in FIFO order
    holders: list[PodView]
    grants: list[PodView]  # the heads to ungate now, in order

    def position(self, key: str) -> int | None:
        for index, pod in enumerate(self.queue):
            if pod.key == key:
                return index + 1
        return None


_EPOCH = datetime.fromtimestamp(0, tz=UTC)


def _holder_order(pod: PodView) -> tuple[datetime, str]:
    return (pod.granted_at or pod.created_at or _EPOCH, pod.key)


def plan(name: str, pool: Pool, pods: Iterable[PodView], nodes: Iterable[NodeView]) -> PoolPlan:
    """Who waits (FIFO order), who holds, and which heads get a slice now (never above capacity)."""
    pods = list(pods)
    nodes = list(nodes)
    cap = capacity(pool, nodes)
    used = in_use(name, pool, pods, nodes)
    queue = sorted((p for p in pods if p.pool == name and p.queued), key=lambda p: p.order)
    holders = sorted((p for p in pods if p.pool == name and p.holding), key=_holder_order)
    free = max(0, cap - used)
    return PoolPlan(pool=name, capacity=cap, in_use=used, queue=queue, holders=holders, grants=queue[:free])
