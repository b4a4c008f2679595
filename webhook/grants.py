"""The grant decision: given the pods, the nodes and a pool, who waits, who holds, who goes next.

Pure functions over small immutable views of the cluster, so the invariants (I1 capacity, I2
order) are unit-testable against a model without a network. The controller feeds them from its
watch cache; the HTTP API feeds them the same cache for capacity and usage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from webhook.config import Config, Pool
from webhook.profiles import annotations_of, has_gate, is_singleuser, labels_of
from webhook.quantity import QuantityError, parse_quantity
from webhook.state import parse_requested_at, pod_key, score_of

FINISHED = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class PodView:
    """What the queue needs to know of one pod."""

    namespace: str
    name: str
    uid: str = ""
    resource_version: str = ""
    pool: str | None = None  # set for pods of one of our pools (the pool annotation)
    gated: bool = False  # our scheduling gate is present
    requested_at: datetime | None = None
    granted_at: datetime | None = None
    user: str = ""
    server: str = ""
    node: str = ""
    phase: str = "Pending"
    ready: bool = False
    deleting: bool = False
    removed: bool = False  # an admin took it out of the queue (`queue rm`): no kept place
    released: bool = False  # a stuck head whose slice was given to the next user (I7)
    created_at: datetime | None = None
    # The amount of each pool resource the pod asks for (for usage by pods that are not ours).
    resources: Mapping[str, Decimal] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return pod_key(self.namespace, self.name)

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    @property
    def queued(self) -> bool:
        """Waiting in its pool's FIFO: gated, not being deleted."""
        return self.pool is not None and self.gated and not self.deleting

    @property
    def holding(self) -> bool:
        """Holding a slice of its pool: ungated, not finished, not released as stuck (I7).

        A terminating pod still holds its slice until it is gone."""
        return self.pool is not None and not self.gated and not self.finished and not self.released

    @property
    def order(self) -> tuple[float, str]:
        """FIFO order: requested-at (creation time if the stamp is bad), then namespace/name."""
        when = self.requested_at or self.created_at
        return (score_of(when) if when is not None else 0.0, self.key)


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    allocatable: Mapping[str, Decimal] = field(default_factory=dict)
    schedulable: bool = True


def _parse_time(value: Any) -> datetime | None:
    return parse_requested_at(value) if isinstance(value, str) else None


def pod_view(pod: Mapping[str, Any], config: Config) -> PodView | None:
    """A PodView from the pod JSON, or None when the pod matters to no pool at all."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    namespace = str(meta.get("namespace", ""))
    annotations = annotations_of(dict(pod))
    ours = (not config.namespaces or namespace in config.namespaces) and is_singleuser(dict(pod), config)
    pool = annotations.get(config.pool_annotation) if ours else None
    if pool is not None and pool not in config.pools:
        pool = None
    resources: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        limits = ((container or {}).get("resources") or {}).get("limits") or {}
        for name in config.pool_resources:
            if name in limits:
                try:
                    resources[name] = resources.get(name, Decimal(0)) + parse_quantity(limits[name])
                except QuantityError:
                    continue
    if pool is None and not resources:
        return None
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions if isinstance(c, dict))
    return PodView(
        namespace=namespace,
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        pool=pool,
        gated=has_gate(dict(pod), config),
        requested_at=_parse_time(annotations.get(config.requested_at_annotation)),
        granted_at=_parse_time(annotations.get(config.admitted_at_annotation)),
        user=annotations.get("hub.jupyter.org/username") or labels_of(dict(pod)).get("hub.jupyter.org/username", ""),
        server=annotations.get("hub.jupyter.org/servername", ""),
        node=str(spec.get("nodeName") or ""),
        phase=str(status.get("phase") or "Pending"),
        ready=ready,
        deleting=meta.get("deletionTimestamp") is not None,
        removed=config.removed_annotation in annotations,
        released=config.released_annotation in annotations,
        created_at=_parse_time(meta.get("creationTimestamp")),
        resources=resources,
    )


def node_view(node: Mapping[str, Any]) -> NodeView:
    meta = node.get("metadata") or {}
    allocatable: dict[str, Decimal] = {}
    for name, value in ((node.get("status") or {}).get("allocatable") or {}).items():
        try:
            allocatable[str(name)] = parse_quantity(value)
        except QuantityError:
            continue
    return NodeView(
        name=str(meta.get("name", "")),
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        allocatable=allocatable,
        schedulable=not (node.get("spec") or {}).get("unschedulable", False),
    )


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
