"""The grant decision (pure): capacity, in-use, FIFO order, and a stateful model check of I1/I2."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from webhook.cluster_view import NodeView, PodView, node_view, pod_view
from webhook.config import load_config
from webhook.grants import capacity, in_use, plan

CONFIG = load_config(env={})
POOL = CONFIG.pools["gpu"]
T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
GPU_NODE = NodeView("gpu-1", {"nvidia.com/gpu.present": "true"}, {"nvidia.com/gpu": Decimal(8)})
CPU_NODE = NodeView("cpu-1", {}, {"cpu": Decimal(32)})


def queued(name: str, seconds: float, namespace: str = "jhub", slices: int = 1) -> PodView:
    return PodView(
        namespace=namespace,
        name=name,
        pool="gpu",
        gated=True,
        requested_at=T0 + timedelta(seconds=seconds),
        resources={"nvidia.com/gpu": Decimal(slices)},
    )


def holder(name: str, node: str = "gpu-1", slices: int = 1) -> PodView:
    return PodView(
        resources={"nvidia.com/gpu": Decimal(slices)},
        namespace="jhub",
        name=name,
        pool="gpu",
        gated=False,
        requested_at=T0,
        granted_at=T0,
        node=node,
        phase="Running",
        ready=True,
    )


def test_auto_capacity_is_the_allocatable_of_the_pools_nodes() -> None:
    assert capacity(POOL, [GPU_NODE, CPU_NODE]) == 8
    assert capacity(POOL, [GPU_NODE, replace(GPU_NODE, name="gpu-2")]) == 16
    assert capacity(POOL, [replace(GPU_NODE, schedulable=False)]) == 0


def test_fixed_capacity_ignores_the_nodes() -> None:
    fixed = POOL.model_copy(update={"capacity": 3})
    assert capacity(fixed, [GPU_NODE]) == 3


def test_other_pods_asking_for_the_resource_on_pool_nodes_count_as_in_use() -> None:
    other = PodView(
        namespace="ml", name="train", node="gpu-1", phase="Running", resources={"nvidia.com/gpu": Decimal(2)}
    )
    elsewhere = replace(other, name="x", node="cpu-1")
    done = replace(other, name="y", phase="Succeeded")
    assert in_use("gpu", POOL, [holder("a"), other, elsewhere, done], [GPU_NODE, CPU_NODE]) == 3


def test_terminating_holders_still_hold_their_slice() -> None:
    leaving = replace(holder("a"), deleting=True)
    assert in_use("gpu", POOL, [leaving], [GPU_NODE]) == 1


def test_queue_is_ordered_by_requested_at_then_namespace_and_name() -> None:
    pods = [queued("c", 5), queued("b", 1), queued("a", 1), queued("a", 1, namespace="hub2")]
    result = plan("gpu", POOL, pods, [GPU_NODE])
    assert [p.key for p in result.queue] == ["hub2/a", "jhub/a", "jhub/b", "jhub/c"]
    assert result.position("jhub/c") == 4


def test_only_free_slices_are_granted_to_the_heads() -> None:
    holders = [holder(f"h{i}") for i in range(6)]
    pods = holders + [queued(f"q{i}", i) for i in range(5)]
    result = plan("gpu", POOL, pods, [GPU_NODE])
    assert [p.name for p in result.grants] == ["q0", "q1"]
    full = plan("gpu", POOL, [*holders, holder("h6"), holder("h7"), queued("q", 0)], [GPU_NODE])
    assert full.grants == []


def test_pod_view_reads_gate_stamp_user_and_readiness() -> None:
    pod = {
        "metadata": {
            "name": "jupyter-bob",
            "namespace": "jhub",
            "uid": "u1",
            "resourceVersion": "7",
            "labels": {"component": "singleuser-server", "gpu-queue.io/profile": "gpu-enabled"},
            "annotations": {
                "gpu-queue.io/pool": "gpu",
                "gpu-queue.io/requested-at": "2026-11-28T09:00:00.000001Z",
                "hub.jupyter.org/username": "Bob.Smith",
                "hub.jupyter.org/servername": "ml",
            },
        },
        "spec": {
            "schedulingGates": [{"name": "gpu-queue.io/slice"}],
            "containers": [{"name": "notebook", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
        "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]},
    }
    view = pod_view(pod, CONFIG)
    assert view is not None and view.queued and view.user == "Bob.Smith" and view.server == "ml"
    assert view.requested_at == T0 + timedelta(microseconds=1)
    assert not view.ready and view.resources == {"nvidia.com/gpu": Decimal(1)}
    cpu_pod = {
        "metadata": {"name": "x", "namespace": "jhub", "labels": {"component": "singleuser-server"}},
        "spec": {"containers": [{"name": "notebook"}]},
    }
    assert pod_view(cpu_pod, CONFIG) is None


def test_node_view_reads_allocatable_and_cordon() -> None:
    node = {
        "metadata": {"name": "gpu-1", "labels": {"a": "b"}},
        "spec": {"unschedulable": True},
        "status": {"allocatable": {"nvidia.com/gpu": "16", "cpu": "32", "memory": "128Gi"}},
    }
    view = node_view(node)
    assert view.allocatable["nvidia.com/gpu"] == 16 and not view.schedulable


def test_a_two_slice_head_takes_two_and_blocks_those_behind_until_it_fits() -> None:
    holders = [holder(f"h{i}") for i in range(7)]  # 7 of 8 in use: one free
    pods = [*holders, queued("double", 0, slices=2), queued("single", 1)]
    result = plan("gpu", POOL, pods, [GPU_NODE])
    assert result.grants == []  # the single behind does not overtake the double (strict FIFO)
    assert result.slices_through == [2, 3]
    freed = plan("gpu", POOL, [*holders[:6], *pods[7:]], [GPU_NODE])
    assert [p.name for p in freed.grants] == ["double"]  # 2 free: the double, and nothing more
    more = plan("gpu", POOL, [*holders[:5], *pods[7:]], [GPU_NODE])
    assert [p.name for p in more.grants] == ["double", "single"]


def test_doubles_never_push_use_above_capacity() -> None:
    holders = [holder(f"h{i}") for i in range(6)]
    pods = [*holders, queued("d1", 0, slices=2), queued("d2", 1, slices=2)]
    result = plan("gpu", POOL, pods, [GPU_NODE])
    assert [p.name for p in result.grants] == ["d1"]  # 6 + 2 = 8; a second double would make 10


def test_in_use_counts_a_holders_slices() -> None:
    assert in_use("gpu", POOL, [holder("a", slices=2), holder("b")], [GPU_NODE]) == 3


def _fifo_key(entry: tuple[int, str, int]) -> tuple[int, str]:
    stamp, name, _ = entry
    return (stamp, f"jhub/{name}")


class QueueModel(RuleBasedStateMachine):
    """Random arrivals of one- and two-slice users, cancels, logouts, capacity changes and
    controller restarts, checked against an independent model of the queue.

    The model keeps its own waiting list (arrival stamp, name, slices) and holders (name -> slices)
    and its own rule: walk the waiting list in (stamp, namespace/name) order and grant while the
    head's slices fit in what is free. After every sync the implementation's grants must be
    exactly the model's: that is I1 (never above capacity, in slices), I2 (strict FIFO, a head that
    does not fit blocks the rest) and work conservation at once.
    """

    @initialize()
    def start(self) -> None:
        self.pods: dict[str, PodView] = {}
        self.waiting: list[tuple[int, str, int]] = []  # the model: (stamp, name, slices)
        self.holding: dict[str, int] = {}  # the model: name -> slices
        self.slices = 8
        self.clock = 0

    def nodes(self) -> list[NodeView]:
        return [replace(GPU_NODE, allocatable={"nvidia.com/gpu": Decimal(self.slices)})]

    @rule(n=st.integers(1, 5), data=st.data())
    def arrive(self, n: int, data: st.DataObject) -> None:
        for _ in range(n):
            self.clock += 1
            name = f"p{self.clock}"
            need = data.draw(st.sampled_from([1, 1, 2]))
            stamp = self.clock // 2  # two pods may share a stamp: the name breaks the tie
            self.pods[name] = queued(name, stamp, slices=need)
            self.waiting.append((stamp, name, need))

    @precondition(lambda self: bool(self.waiting))
    @rule(data=st.data())
    def cancel_queued(self, data: st.DataObject) -> None:
        entry = data.draw(st.sampled_from(self.waiting))
        self.waiting.remove(entry)
        del self.pods[entry[1]]

    @precondition(lambda self: bool(self.holding))
    @rule(data=st.data())
    def logout(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.holding)))
        del self.holding[name]
        del self.pods[name]

    @rule(slices=st.sampled_from([0, 3, 4, 8, 16]))
    def change_capacity(self, slices: int) -> None:
        self.slices = slices

    @rule()
    def restart(self) -> None:
        """A new controller knows only the pods: nothing else carries over."""

    def expected_grants(self) -> list[str]:
        free = self.slices - sum(self.holding.values())
        granted = []
        for _, name, need in sorted(self.waiting, key=_fifo_key):
            if need > free:
                break
            granted.append(name)
            free -= need
        return granted

    @rule()
    def sync(self) -> None:
        result = plan("gpu", POOL, self.pods.values(), self.nodes())
        assert result.in_use == sum(self.holding.values())
        assert [p.name for p in result.queue] == [name for _, name, _ in sorted(self.waiting, key=_fifo_key)]
        assert [p.name for p in result.grants] == self.expected_grants()
        for head in result.grants:
            self.pods[head.name] = replace(head, gated=False, granted_at=T0, phase="Running")
            entry = next(e for e in self.waiting if e[1] == head.name)
            self.waiting.remove(entry)
            self.holding[head.name] = entry[2]

    @invariant()
    def never_above_capacity_by_our_grants(self) -> None:
        """Use above capacity only ever comes from the capacity shrinking, never from a grant."""
        if sum(self.holding.values()) > self.slices:
            assert self.expected_grants() == []


TestQueueModel = QueueModel.TestCase
TestQueueModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
