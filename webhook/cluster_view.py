"""The cluster as the grant decision sees it: small immutable views of pods and nodes.

Built from the watch cache's JSON once per change, so the decision (``webhook.grants``) is pure and
unit-testable without a network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from webhook.config import Config
from webhook.models import RANK_SPAN, pod_key, ranked_score
from webhook.node_fit import NodeConstraints, Taint, constraints_of, taints_of
from webhook.pods import (
    annotations_of,
    gate_index,
    groups_of,
    is_singleuser,
    labels_of,
    parse_time,
    scheduling_gates,
)
from webhook.quantity import QuantityError, parse_quantity
from webhook.starting import NO_STATUS, StartState, start_state

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
    # Where our gate is in spec.schedulingGates at resource_version: the grant's patch removes it
    # from this view, without reading the pod again (a stale view fails the patch's test op).
    gate_index: int | None = None
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
    any_gate: bool = False  # some scheduling gate (ours or another's): the scheduler leaves it alone
    # Where the scheduler may put it: read only for a pending pod that is not ours (it competes
    # for the pool's slices when it could land on one of the pool's nodes).
    constraints: NodeConstraints | None = None
    # How its start is going (read for holders that are not Ready: stuck, or slow and progressing).
    start: StartState = NO_STATUS
    # The user's JupyterHub groups, as the hub put them on the pod (admission lets only the hub's
    # service account set them): what group limits count.
    groups: tuple[str, ...] = ()
    # When the hold limit warned this holder (``webhook.hold_limit``), as the leader marked it.
    hold_warned_at: datetime | None = None
    # Its pool's ``groupPriority`` rank (0 without priorities): a lower rank goes first.
    rank: int = 0

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
        """Queue order: the rank, then requested-at (creation time if the stamp is bad), then
        namespace/name; the store's order too (``webhook.models.ranked_score``)."""
        when = self.requested_at or self.created_at
        return (ranked_score(when, self.rank) if when is not None else float(self.rank * RANK_SPAN), self.key)


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    allocatable: Mapping[str, Decimal] = field(default_factory=dict)
    schedulable: bool = True  # not cordoned
    ready: bool = True  # the Ready condition is not False or Unknown (node_view: ``_ready``)
    taints: tuple[Taint, ...] = ()


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
    groups = groups_of(annotations.get(config.groups_annotation)) if pool is not None else ()
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions if isinstance(c, dict))
    node = str(spec.get("nodeName") or "")
    pending = pool is None and not node
    ours_at = gate_index(dict(pod), config)
    return PodView(
        namespace=namespace,
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        pool=pool,
        gated=ours_at is not None,
        gate_index=ours_at,
        requested_at=parse_time(annotations.get(config.requested_at_annotation)),
        granted_at=parse_time(annotations.get(config.admitted_at_annotation)),
        user=annotations.get("hub.jupyter.org/username") or labels_of(dict(pod)).get("hub.jupyter.org/username", ""),
        server=annotations.get("hub.jupyter.org/servername", ""),
        node=node,
        phase=str(status.get("phase") or "Pending"),
        ready=ready,
        deleting=meta.get("deletionTimestamp") is not None,
        removed=config.removed_annotation in annotations,
        released=config.released_annotation in annotations,
        groups=groups,
        hold_warned_at=parse_time(annotations.get(config.hold_warned_annotation)),
        rank=config.pools[pool].rank_of(groups) if pool is not None else 0,
        created_at=parse_time(meta.get("creationTimestamp")),
        resources=resources,
        any_gate=bool(scheduling_gates(dict(pod))),
        constraints=constraints_of(spec) if pending else None,
        start=start_state(pod) if pool is not None else NO_STATUS,
    )


def _ready(conditions: Any) -> bool:
    """The node's Ready condition is True. A node that has reported no Ready condition yet is left
    to its taints, as the scheduler does (Kubernetes taints a new node not-ready until it reports)."""
    found = [c for c in conditions or [] if isinstance(c, dict) and c.get("type") == "Ready"]
    return all(c.get("status") == "True" for c in found)


def node_view(node: Mapping[str, Any]) -> NodeView:
    meta = node.get("metadata") or {}
    status = node.get("status") or {}
    spec = node.get("spec") or {}
    allocatable: dict[str, Decimal] = {}
    for name, value in (status.get("allocatable") or {}).items():
        try:
            allocatable[str(name)] = parse_quantity(value)
        except QuantityError:
            continue
    return NodeView(
        name=str(meta.get("name", "")),
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        allocatable=allocatable,
        schedulable=not spec.get("unschedulable", False),
        ready=_ready(status.get("conditions")),
        taints=taints_of(spec.get("taints")),
    )
