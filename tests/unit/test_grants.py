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


def queued(name: str, seconds: float, namespace: str = "jhub") -> PodView:
    return PodView(namespace=namespace, name=name, pool="gpu", gated=True, requested_at=T0 + timedelta(seconds=seconds))


def holder(name: str, node: str = "gpu-1") -> PodView:
    return PodView(
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


class QueueModel(RuleBasedStateMachine):
    """Random arrivals, departures, capacity changes and controller restarts, against a model.

    After every sync: no grant was made while the pool was full (I1), and every grant went to the
    earliest requested-at still waiting (I2).
    """

    @initialize()
    def start(self) -> None:
        self.pods: dict[str, PodView] = {}
        self.slices = 8
        self.clock = 0
        self.granted_order: list[str] = []
        self.violations: list[str] = []

    def nodes(self) -> list[NodeView]:
        return [replace(GPU_NODE, allocatable={"nvidia.com/gpu": Decimal(self.slices)})]

    @rule(n=st.integers(1, 5))
    def arrive(self, n: int) -> None:
        for _ in range(n):
            self.clock += 1
            name = f"p{self.clock}"
            # Two pods may share a timestamp: the name breaks the tie.
            self.pods[name] = queued(name, self.clock // 2)

    @precondition(lambda self: any(p.queued for p in self.pods.values()))
    @rule(data=st.data())
    def cancel_queued(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(k for k, p in self.pods.items() if p.queued)))
        del self.pods[name]

    @precondition(lambda self: any(p.holding for p in self.pods.values()))
    @rule(data=st.data())
    def logout(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(k for k, p in self.pods.items() if p.holding)))
        del self.pods[name]

    @rule(slices=st.sampled_from([0, 4, 8, 16]))
    def change_capacity(self, slices: int) -> None:
        self.slices = slices

    @rule()
    def restart(self) -> None:
        """A new controller knows only the pods: nothing else carries over."""

    @rule()
    def sync(self) -> None:
        before = plan("gpu", POOL, self.pods.values(), self.nodes())
        for head in before.grants:
            waiting = [p for p in self.pods.values() if p.queued]
            if min(waiting, key=lambda p: p.order).name != head.name:
                self.violations.append(f"I2: granted {head.name} before an earlier pod")
            in_use_now = sum(1 for p in self.pods.values() if p.holding)
            if in_use_now >= self.slices:
                self.violations.append(f"I1: granted {head.name} with {in_use_now} of {self.slices} in use")
            self.pods[head.name] = replace(head, gated=False, granted_at=T0, phase="Running")
            self.granted_order.append(head.name)

    @invariant()
    def no_violation(self) -> None:
        assert not self.violations, self.violations

    @rule()
    def sync_then_no_slice_idles_while_someone_waits(self) -> None:
        self.sync()
        result = plan("gpu", POOL, self.pods.values(), self.nodes())
        if result.queue:
            assert result.in_use >= self.slices, "a slice is free and someone waits: not work-conserving"


TestQueueModel = QueueModel.TestCase
TestQueueModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
