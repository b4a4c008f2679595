"""The grant decision: given the pods, the nodes and a pool, who waits, who holds, who goes next.

Pure functions over the views of ``webhook.cluster_view``, so the invariants (I1 capacity, I2
order) are unit-testable against a model without a network. The controller feeds them from its
watch cache; the HTTP API feeds them the same cache for capacity and usage.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal

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


def slices_of(pod: PodView, pool: Pool) -> int:
    """Slices one of the pool's pods takes: its request of the pool's resource, at least one
    (a profile may ask for ``nvidia.com/gpu: 2``; a fractional amount rounds up)."""
    amount = pod.resources.get(pool.resource, Decimal(0))
    return max(1, int(amount.to_integral_value(rounding=ROUND_CEILING)))


def in_use(name: str, pool: Pool, pods: Iterable[PodView], nodes: Iterable[NodeView]) -> int:
    """Slices in use: the pool's holders plus other pods asking for the resource on its nodes (I1)."""
    node_names = {n.name for n in pool_nodes(pool, nodes)}
    used = Decimal(0)
    for pod in pods:
        if pod.pool == name:
            if pod.holding:
                used += slices_of(pod, pool)
        elif pod.pool is None and not pod.finished and pod.node in node_names:
            used += pod.resources.get(pool.resource, Decimal(0))
    return int(used.to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True)
class PoolPlan:
    """One pool's state and what to do now."""

    pool: str
    capacity: int
    in_use: int
    queue: list[PodView]  # in FIFO order
    holders: list[PodView]
    grants: list[PodView]  # the heads to ungate now, in order
    # Per queued pod, in queue order: the slices needed by it and everyone ahead of it (the ETA's
    # "how many slices must free"); equal to the position when every profile asks for one slice.
    slices_through: list[int] = field(default_factory=list)

    def position(self, key: str) -> int | None:
        for index, pod in enumerate(self.queue):
            if pod.key == key:
                return index + 1
        return None


_EPOCH = datetime.fromtimestamp(0, tz=UTC)


def _holder_order(pod: PodView) -> tuple[datetime, str]:
    return (pod.granted_at or pod.created_at or _EPOCH, pod.key)


def plan(name: str, pool: Pool, pods: Iterable[PodView], nodes: Iterable[NodeView]) -> PoolPlan:
    """Who waits (FIFO order), who holds, and which heads get slices now (never above capacity).

    Strict FIFO in slices: heads are granted while their slices fit in what is free; a head that
    does not fit yet (it asks for 2 and 1 is free) blocks everyone behind it, so a stream of
    one-slice users can never starve a two-slice one."""
    pods = list(pods)
    nodes = list(nodes)
    cap = capacity(pool, nodes)
    used = in_use(name, pool, pods, nodes)
    queue = sorted((p for p in pods if p.pool == name and p.queued), key=lambda p: p.order)
    holders = sorted((p for p in pods if p.pool == name and p.holding), key=_holder_order)
    free = max(0, cap - used)
    grants: list[PodView] = []
    through: list[int] = []
    total = 0
    for pod in queue:
        total += slices_of(pod, pool)
        through.append(total)
        if total <= free:  # cumulative: once a head does not fit, no one behind it does
            grants.append(pod)
    return PoolPlan(
        pool=name, capacity=cap, in_use=used, queue=queue, holders=holders, grants=grants, slices_through=through
    )
