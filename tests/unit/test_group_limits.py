"""Group priorities and limits in the pure grant decision (``webhook.grants.plan``): an earlier
group of ``groupPriority`` goes first, FIFO within each; a member of a group at its limit waits
with slices free and keeps its place, nobody else is held back by it, and no limit or the pool's
capacity is ever exceeded, checked against an independent one-grant-at-a-time model."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from webhook.cluster_view import NodeView, PodView, pod_view
from webhook.config import Pool, load_config
from webhook.grants import GroupCap, plan

CONFIG = load_config(env={})
T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
GROUPS = ("course-a", "course-b", "staff")


def gpu_pool(capacity: int, limits: dict[str, int], priority: list[str] | None = None) -> Pool:
    update = {"capacity": capacity, "group_limits": limits, "group_priority": priority or []}
    return CONFIG.pools["gpu"].model_copy(update=update)


def node(slices: int = 8) -> NodeView:
    return NodeView("gpu-1", {"nvidia.com/gpu.present": "true"}, {"nvidia.com/gpu": Decimal(slices)})


def waiting(name: str, at: float, *groups: str, slices: int = 1, pool: Pool | None = None) -> PodView:
    return PodView(
        namespace="jhub",
        name=name,
        pool="gpu",
        gated=True,
        requested_at=T0 + timedelta(seconds=at),
        resources={"nvidia.com/gpu": Decimal(slices)},
        groups=tuple(sorted(groups)),
        rank=pool.rank_of(groups) if pool is not None else 0,
    )


def holding(name: str, *groups: str, slices: int = 1, pool: Pool | None = None) -> PodView:
    pod = waiting(name, -100, *groups, slices=slices, pool=pool)
    return replace(pod, gated=False, granted_at=T0, node="gpu-1", phase="Running", ready=True)


def names(pods: list[PodView]) -> list[str]:
    return [p.name for p in pods]


def test_a_member_of_a_group_at_its_limit_waits_with_slices_free_and_others_go() -> None:
    pool = gpu_pool(8, {"course-a": 2})
    pods = [
        holding("a1", "course-a"),
        holding("a2", "course-a"),
        waiting("a3", 1, "course-a"),
        waiting("b1", 2, "course-b"),
        waiting("nobody", 3),
    ]
    result = plan("gpu", pool, pods, [node()])
    assert names(result.grants) == ["b1", "nobody"], "the limit leaves no slice idle"
    assert result.capped == {"jhub/a3": GroupCap(group="course-a", limit=2, in_use=2)}
    assert result.position("jhub/a3") == 1, "it keeps its place"
    assert result.group_use == {"course-a": 2}


def test_when_the_group_frees_a_slice_its_waiting_member_is_first_in_line_again() -> None:
    pool = gpu_pool(3, {"course-a": 2})
    pods = [holding("a1", "course-a"), holding("b0", "course-b"), waiting("a3", 1, "course-a"), waiting("b1", 2)]
    assert names(plan("gpu", pool, pods, [node(3)]).grants) == ["a3"], "one slice free, a3 first, b1 waits"
    full = [holding("a1", "course-a"), holding("a2", "course-a"), waiting("a3", 1, "course-a"), waiting("b1", 2)]
    assert names(plan("gpu", pool, full, [node(3)]).grants) == ["b1"], "a3 capped: b1 takes the last slice"


def test_grants_in_one_pass_count_against_the_limit() -> None:
    pool = gpu_pool(8, {"course-a": 2})
    pods = [waiting(f"a{i}", i, "course-a") for i in range(4)]
    result = plan("gpu", pool, pods, [node()])
    assert names(result.grants) == ["a0", "a1"]
    assert set(result.capped) == {"jhub/a2", "jhub/a3"}


def test_a_pod_in_two_limited_groups_needs_room_in_both_and_counts_in_both() -> None:
    pool = gpu_pool(8, {"course-a": 2, "staff": 1})
    pods = [holding("s1", "staff"), waiting("both", 1, "course-a", "staff"), waiting("a1", 2, "course-a")]
    result = plan("gpu", pool, pods, [node()])
    assert result.capped["jhub/both"].group == "staff"
    assert names(result.grants) == ["a1"]


def test_a_multi_slice_request_counts_its_slices_against_the_limit() -> None:
    pool = gpu_pool(8, {"course-a": 3})
    pods = [
        holding("a1", "course-a", slices=2),
        waiting("double", 1, "course-a", slices=2),
        waiting("single", 2, "course-a"),
    ]
    result = plan("gpu", pool, pods, [node()])
    assert result.capped["jhub/double"] == GroupCap(group="course-a", limit=3, in_use=2)
    assert names(result.grants) == ["single"]


def test_a_limit_of_zero_keeps_the_group_waiting_and_unlisted_groups_are_unlimited() -> None:
    pool = gpu_pool(8, {"guests": 0})
    pods = [waiting("g", 1, "guests"), waiting("other", 2, "not-limited")]
    result = plan("gpu", pool, pods, [node()])
    assert names(result.grants) == ["other"] and set(result.capped) == {"jhub/g"}


def test_strict_fifo_still_holds_for_those_not_capped() -> None:
    """A two-slice head with one slice free blocks the single behind it, capped pods or not."""
    pool = gpu_pool(2, {"course-a": 1})
    pods = [
        holding("a1", "course-a"),
        waiting("a2", 1, "course-a"),
        waiting("double", 2, slices=2),
        waiting("single", 3),
    ]
    result = plan("gpu", pool, pods, [node(2)])
    assert result.grants == [] and set(result.capped) == {"jhub/a2"}
    assert result.grants_through == []


def test_an_earlier_priority_group_goes_first_fifo_within_each_and_nobody_is_preempted() -> None:
    pool = gpu_pool(1, {}, ["instructors", "students"])
    pods = [
        holding("running-student", "students", pool=pool),
        waiting("s1", 1, "students", pool=pool),
        waiting("guest", 2, pool=pool),
        waiting("s2", 3, "students", pool=pool),
        waiting("i1", 9, "instructors", pool=pool),
        waiting("i2", 10, "instructors", "students", pool=pool),
    ]
    result = plan("gpu", pool, pods, [node(1)])
    assert names(result.queue) == ["i1", "i2", "s1", "s2", "guest"], "by rank, FIFO within; no group: last"
    assert result.grants == [] and names(result.holders) == ["running-student"], "never preempts"
    freed = [p for p in pods if p.name != "running-student"]
    assert names(plan("gpu", pool, freed, [node(1)]).grants) == ["i1"]


def test_without_instructors_waiting_students_go_in_arrival_order() -> None:
    pool = gpu_pool(2, {}, ["instructors", "students"])
    pods = [waiting("s2", 2, "students", pool=pool), waiting("s1", 1, "students", pool=pool)]
    assert names(plan("gpu", pool, pods, [node(2)]).grants) == ["s1", "s2"]


def test_priority_and_limits_together_a_capped_instructor_lets_students_through() -> None:
    pool = gpu_pool(3, {"instructors": 1}, ["instructors", "students"])
    pods = [
        holding("i0", "instructors", pool=pool),
        waiting("i1", 5, "instructors", pool=pool),
        waiting("s1", 1, "students", pool=pool),
    ]
    result = plan("gpu", pool, pods, [node(3)])
    assert names(result.queue) == ["i1", "s1"] and result.position("jhub/i1") == 1
    assert names(result.grants) == ["s1"] and set(result.capped) == {"jhub/i1"}


def test_the_groups_annotation_reaches_the_pod_view() -> None:
    pod = {
        "metadata": {
            "name": "jupyter-ann",
            "namespace": "jhub",
            "labels": {"component": "singleuser-server"},
            "annotations": {CONFIG.pool_annotation: "gpu", CONFIG.groups_annotation: '["staff","course-a"]'},
        },
        "spec": {"containers": [{"name": "notebook"}]},
    }
    view = pod_view(pod, CONFIG)
    assert view is not None and view.groups == ("course-a", "staff")
    pod["metadata"]["annotations"][CONFIG.groups_annotation] = "course-a"  # not JSON
    view = pod_view(pod, CONFIG)
    assert view is not None and view.groups == ()


# --- the model ---------------------------------------------------------------------------------


@dataclass
class Request:
    name: str
    slices: int
    groups: frozenset[str]


@dataclass
class Model:
    """The policy as an admin would state it, one grant at a time: the first request in line that
    no limit holds back goes if its slices are free, else nobody goes; held-back requests keep
    their place and are passed over."""

    capacity: int
    limits: dict[str, int]
    priority: list[str] = field(default_factory=list)
    line: list[Request] = field(default_factory=list)  # arrival order
    holders: list[Request] = field(default_factory=list)

    def held(self, group: str) -> int:
        return sum(r.slices for r in self.holders if group in r.groups)

    def held_back(self, r: Request) -> bool:
        return any(self.held(g) + r.slices > self.limits[g] for g in r.groups if g in self.limits)

    def rank(self, r: Request) -> int:
        return min((i for i, g in enumerate(self.priority) if g in r.groups), default=len(self.priority))

    def in_line(self) -> list[Request]:
        """The line as the policy orders it: by priority rank, arrival order within a rank."""
        return sorted(self.line, key=self.rank)  # sorted() is stable: arrival order within a rank

    def grants(self) -> list[str]:
        granted: list[str] = []
        while True:
            free = self.capacity - sum(r.slices for r in self.holders)
            first = next((r for r in self.in_line() if not self.held_back(r)), None)
            if first is None or first.slices > free:
                return granted
            self.line.remove(first)
            self.holders.append(first)
            granted.append(first.name)


class GroupLimitsMachine(RuleBasedStateMachine):
    """Arrivals, releases and grant passes; after each pass plan() granted what the model grants."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.model = Model(0, {})

    @initialize(
        capacity=st.integers(0, 6),
        limits=st.dictionaries(st.sampled_from(GROUPS), st.integers(0, 4), max_size=3),
        priority=st.lists(st.sampled_from(GROUPS), unique=True, max_size=2),
    )
    def setup(self, capacity: int, limits: dict[str, int], priority: list[str]) -> None:
        self.model = Model(capacity, limits, priority)
        self.pool = gpu_pool(capacity, limits, priority)

    @rule(slices=st.integers(1, 3), groups=st.frozensets(st.sampled_from(GROUPS), max_size=2))
    def arrive(self, slices: int, groups: frozenset[str]) -> None:
        self.count += 1
        self.model.line.append(Request(f"u{self.count:03d}", slices, groups))

    @precondition(lambda self: self.model.holders)
    @rule(index=st.integers(0, 50))
    def release(self, index: int) -> None:
        self.model.holders.pop(index % len(self.model.holders))

    @rule()
    def grant_pass(self) -> None:
        result = plan("gpu", self.pool, self.pods(), [node(self.model.capacity)])
        assert names(result.queue) == [r.name for r in self.model.in_line()], "the queue's order"
        assert names(result.grants) == self.model.grants()

    def pods(self) -> list[PodView]:
        pool = self.pool
        line = [waiting(r.name, i, *r.groups, slices=r.slices, pool=pool) for i, r in enumerate(self.model.line)]
        return line + [holding(r.name, *r.groups, slices=r.slices, pool=pool) for r in self.model.holders]

    @invariant()
    def never_over_capacity_or_a_limit(self) -> None:
        assert sum(r.slices for r in self.model.holders) <= self.model.capacity
        for group, limit in self.model.limits.items():
            assert self.model.held(group) <= limit

    @invariant()
    def nothing_that_fits_is_left_waiting(self) -> None:
        """After a pass, nothing is both free and wanted: the first request no limit holds back
        needs more slices than are free (else it would have gone)."""
        result = plan("gpu", self.pool, self.pods(), [node(self.model.capacity)])
        if not result.grants:
            free = self.model.capacity - sum(r.slices for r in self.model.holders)
            first = next((r for r in self.model.in_line() if not self.model.held_back(r)), None)
            assert first is None or first.slices > free


TestGroupLimitsModel = GroupLimitsMachine.TestCase
TestGroupLimitsModel.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
