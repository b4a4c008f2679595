"""The grant decision: given the pods, the nodes and a pool, who waits, who holds, who goes next.

Pure functions over the views of ``webhook.cluster_view``, so the invariants (I1 capacity, I2
order) are unit-testable against a model without a network. The controller feeds them from its
watch cache; the HTTP API feeds them the same cache for capacity and usage.

A grant must be schedulable: capacity counts only the pool's nodes where its pods can run now
(``usable``), and in use counts every pod that takes, or may be given first, one of those slices:
the pool's holders and other pods bound there or pending and able to land there (``in_use``).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal

from webhook.cluster_view import NodeView, PodView
from webhook.config import Pool
from webhook.models import Admitted


def pool_nodes(pool: Pool, nodes: Iterable[NodeView]) -> list[NodeView]:
    """The pool's nodes: matching its selector and advertising its resource."""
    return [
        n
        for n in nodes
        if all(n.labels.get(k) == v for k, v in pool.node_selector.items()) and n.allocatable.get(pool.resource, 0) > 0
    ]


def usable(pool: Pool, node: NodeView) -> bool:
    """The pool's pods can run on this node of the pool now: it is Ready, not cordoned, no
    not-ready/unreachable/unschedulable taint, and every profile of the pool passes its
    selector, required affinity and NoSchedule/NoExecute taints (what admission gives the pods)."""
    return (
        node.ready and node.schedulable and all(c.allows(node.name, node.labels, node.taints) for c in pool.constraints)
    )


def usable_nodes(pool: Pool, nodes: Iterable[NodeView]) -> list[NodeView]:
    return [n for n in pool_nodes(pool, nodes) if usable(pool, n)]


def capacity(pool: Pool, nodes: Iterable[NodeView]) -> int:
    """Slices the pool may hand out: fixed, or ``auto`` = allocatable over its usable nodes."""
    if pool.capacity != "auto":
        return int(pool.capacity)
    total = sum((n.allocatable.get(pool.resource, Decimal(0)) for n in usable_nodes(pool, nodes)), Decimal(0))
    return int(total)


def slices_in(amount: Decimal) -> int:
    """Slices an amount of the pool's resource takes: at least one, a fraction rounds up."""
    return max(1, int(amount.to_integral_value(rounding=ROUND_CEILING)))


def slices_of(pod: PodView, pool: Pool) -> int:
    """Slices one of the pool's pods takes: its request of the pool's resource (a profile may ask
    for ``nvidia.com/gpu: 2``), as ``slices_in``."""
    return slices_in(pod.resources.get(pool.resource, Decimal(0)))


def competes(pod: PodView, pool: Pool, nodes: Iterable[NodeView]) -> bool:
    """A pending pod that is not ours could take one of the slices we would grant: the scheduler
    may bind it now (no scheduling gate, not being deleted) to one of ``nodes`` (the pool's usable
    nodes), its selector, affinity and tolerations allow it there and its request fits the node.
    One whose nodeSelector or affinity excludes every such node takes nothing of the pool."""
    amount = pod.resources.get(pool.resource, Decimal(0))
    if amount <= 0 or pod.node or pod.finished or pod.deleting or pod.any_gate or pod.constraints is None:
        return False
    wants = pod.constraints
    return any(
        wants.allows(n.name, n.labels, n.taints) and amount <= n.allocatable.get(pool.resource, Decimal(0))
        for n in nodes
    )


def in_use(name: str, pool: Pool, pods: Iterable[PodView], nodes: Iterable[NodeView]) -> int:
    """Slices in use (I1), counted against what ``capacity`` counts:

    - the pool's holders, except those bound to a pool node that is not usable (with ``auto``, that
      node's slices are not in the capacity either);
    - other pods asking for the resource: bound to a counted node, or pending and able to land on
      a usable one (``competes``): both take a slice the scheduler could give our granted pods."""
    members = pool_nodes(pool, nodes)
    usable_members = [n for n in members if usable(pool, n)]
    counted = {n.name for n in (usable_members if pool.capacity == "auto" else members)}
    outside = {n.name for n in members} - counted  # pool nodes whose slices are not counted
    used = Decimal(0)
    for pod in pods:
        if pod.pool == name:
            if pod.holding and pod.node not in outside:
                used += slices_of(pod, pool)
        elif pod.pool is None and not pod.finished:
            takes = pod.node in counted if pod.node else competes(pod, pool, usable_members)
            used += pod.resources.get(pool.resource, Decimal(0)) if takes else Decimal(0)
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
    # Per grant, in order: the slices of it and of the grants before it (what must be free).
    grants_through: list[int] = field(default_factory=list)
    # Queued pods that wait because a group of theirs holds its limit (``groupLimits``), even if
    # slices are free: key -> that group. They keep their place and block nobody behind them.
    capped: dict[str, GroupCap] = field(default_factory=dict)
    # Slices each limited group holds now (its holders'), for the API and status.
    group_use: dict[str, int] = field(default_factory=dict)

    def position(self, key: str) -> int | None:
        for index, pod in enumerate(self.queue):
            if pod.key == key:
                return index + 1
        return None


@dataclass(frozen=True)
class GroupCap:
    """Why a queued pod waits with slices free: ``group`` holds ``in_use`` of its ``limit``."""

    group: str
    limit: int
    in_use: int


_EPOCH = datetime.fromtimestamp(0, tz=UTC)


def limited_groups(pod: PodView, pool: Pool) -> list[str]:
    """The pod's groups that the pool limits, in the pod's order."""
    return [g for g in pod.groups if g in pool.group_limits]


def ahead_by_priority(pool: Pool, ahead: Iterable[PodView], view: PodView) -> dict[str, int]:
    """Of the pods ``ahead`` of ``view`` in the queue, those there for a better ``groupPriority``
    rank, counted by the group of that rank (what positions and Events tell the user)."""
    better: dict[str, int] = {}
    for other in ahead:
        if other.rank < view.rank:
            group = pool.rank_group(other.rank) or "-"
            better[group] = better.get(group, 0) + 1
    return better


def group_use(pool: Pool, holders: Iterable[PodView]) -> dict[str, int]:
    """Slices each limited group holds: a holder counts, in full, for every limited group it is in."""
    used = dict.fromkeys(pool.group_limits, 0)
    for pod in holders:
        for group in limited_groups(pod, pool):
            used[group] += slices_of(pod, pool)
    return used


def over_limit(pod: PodView, pool: Pool, used: dict[str, int]) -> GroupCap | None:
    """The first limited group of the pod that its slices would take past the limit, or None."""
    need = slices_of(pod, pool)
    for group in limited_groups(pod, pool):
        if used[group] + need > pool.group_limits[group]:
            return GroupCap(group=group, limit=pool.group_limits[group], in_use=used[group])
    return None


def _holder_order(pod: PodView) -> tuple[datetime, str]:
    return (pod.granted_at or pod.created_at or _EPOCH, pod.key)


def plan(name: str, pool: Pool, pods: Iterable[PodView], nodes: Iterable[NodeView]) -> PoolPlan:
    """Who waits (FIFO order), who holds, and which heads get slices now (never above capacity).

    The queue is in ``PodView.order``: by ``groupPriority`` rank first (0 without priorities),
    FIFO within a rank. Strict FIFO in slices: heads are granted while their slices fit in what is free; a head that
    does not fit yet (it asks for 2 and 1 is free) blocks everyone behind it, so a stream of
    one-slice users can never starve a two-slice one.

    Group limits (``groupLimits``): a pod a limited group of which would go past its limit waits
    where it is, and the pods behind it go on as if it were not there: a limit never leaves a slice
    idle. Once its group frees a slice it is again the first in line it was."""
    pods = list(pods)
    nodes = list(nodes)
    cap = capacity(pool, nodes)
    used = in_use(name, pool, pods, nodes)
    queue = sorted((p for p in pods if p.pool == name and p.queued), key=lambda p: p.order)
    holders = sorted((p for p in pods if p.pool == name and p.holding), key=_holder_order)
    free = max(0, cap - used)
    groups = group_use(pool, holders)
    held = dict(groups)
    grants: list[PodView] = []
    through: list[int] = []
    granted_through: list[int] = []
    capped: dict[str, GroupCap] = {}
    total = granting = 0
    blocked = False
    for pod in queue:
        slices = slices_of(pod, pool)
        total += slices
        through.append(total)
        limit = over_limit(pod, pool, held)
        if limit is not None:
            capped[pod.key] = limit
            continue
        if not blocked and granting + slices <= free:
            granting += slices
            grants.append(pod)
            granted_through.append(granting)
            for group in limited_groups(pod, pool):
                held[group] += slices
        else:
            blocked = True  # strict FIFO: once a head does not fit, no one behind it goes
    return PoolPlan(
        pool=name,
        capacity=cap,
        in_use=used,
        queue=queue,
        holders=holders,
        grants=grants,
        slices_through=through,
        grants_through=granted_through,
        capped=capped,
        group_use=groups,
    )


def unseen_ahead(head: PodView, admitted: Iterable[Admitted], seen: Container[str]) -> list[Admitted]:
    """The notes of pods ``/mutate`` admitted that the watch has not delivered yet and that may
    have been stamped before ``head``: each may still arrive and must find its slice if ``head``
    goes first (I2). A note's ``since`` is no later than that pod's requested-at, so one with
    ``since`` after ``head``'s stamp is behind it, unless its rank is a better one (then it is
    ahead whenever it came)."""
    if head.requested_at is None:
        return []
    return [
        a
        for a in admitted
        if a.key not in seen and (a.rank < head.rank or (a.rank == head.rank and a.since <= head.requested_at))
    ]


def cannot_reorder(through: int, free: int, unseen: int) -> bool:
    """Granting a head now, before its settle window ends, overtakes nobody when the slices
    through it (``through``: its own and those of the heads granted before it) plus everything
    that may still arrive ahead of it (``unseen``) fit in what is free."""
    return through + unseen <= free


# A noted pod whose create has not reached the watch this long after its note is taken as failed
# (denied, or given up), so a lost create holds back grants for no longer than this.
NOTE_LAG = timedelta(seconds=10)


def due_grants(
    pool_plan: PoolPlan,
    now: datetime,
    settle: timedelta,
    admitted: Sequence[Admitted] | None,
    seen: Container[str],
) -> tuple[list[PodView], datetime | None]:
    """(the heads to ungate now, in order; when to look again at the first one held back, or None).

    ``admitted``: the notes ``/mutate`` wrote before stamping (None: they cannot be read). No head
    goes while a noted pod the watch has not delivered, stamped perhaps before it, would find no
    slice left (``cannot_reorder``): it is on its way, however late (up to ``NOTE_LAG``). A head
    stamped less than ``settle`` ago goes only with its own note among them (its replica writes
    notes: one that could not, or an older version, stamps its pods a window later and leaves
    them to the window); without notes, a young head waits out its window and an older one goes,
    as without this check. Everyone behind the first head held back waits too."""
    free = pool_plan.capacity - pool_plan.in_use
    fresh = None if admitted is None else [a for a in admitted if a.since >= now - NOTE_LAG]
    due: list[PodView] = []
    for index, head in enumerate(pool_plan.grants):
        young = head.requested_at is not None and now - head.requested_at < settle
        if young and (fresh is None or not any(a.key == head.key for a in fresh)):
            assert head.requested_at is not None
            return due, head.requested_at + settle
        if fresh is not None:
            ahead = unseen_ahead(head, fresh, seen)
            if not cannot_reorder(pool_plan.grants_through[index], free, sum(a.slices for a in ahead)):
                return due, min(a.since for a in ahead) + NOTE_LAG  # by then it came, or is taken as lost
        due.append(head)
    return due, None
