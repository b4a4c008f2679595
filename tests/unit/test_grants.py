"""The grant decision (pure): capacity, in-use, FIFO order, and a stateful model check of I1/I2."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from webhook.cluster_view import NodeView, PodView, node_view, pod_view
from webhook.config import Config, load_config
from webhook.grants import capacity, in_use, plan
from webhook.node_fit import NodeConstraints, Taint, Toleration, constraints_of

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


NOT_READY = (
    Taint("node.kubernetes.io/not-ready", "", "NoSchedule"),
    Taint("node.kubernetes.io/not-ready", "", "NoExecute"),
)


def config_with(**profile: object) -> Config:
    """The seed with the gpu-enabled profile's placement replaced."""
    data = CONFIG.model_dump(by_alias=True, mode="json")
    data["profiles"]["gpu-enabled"].update(profile)
    data["redis"]["url"] = "redis://localhost:6379/0"
    return Config.model_validate(data)


def test_a_not_ready_node_gives_no_capacity_with_or_without_its_taint() -> None:
    assert capacity(POOL, [replace(GPU_NODE, ready=False)]) == 0
    assert capacity(POOL, [replace(GPU_NODE, ready=False, taints=NOT_READY)]) == 0
    # The taint can outlive the condition by a moment (the node controller lifts it): still not counted.
    assert capacity(POOL, [replace(GPU_NODE, taints=NOT_READY)]) == 0
    unreachable = Taint("node.kubernetes.io/unreachable", "", "NoExecute")
    assert capacity(POOL, [replace(GPU_NODE, taints=(unreachable,))]) == 0
    assert capacity(POOL, [GPU_NODE, replace(GPU_NODE, name="gpu-2", ready=False)]) == 8


def test_not_ready_taints_block_even_when_a_profile_tolerates_them() -> None:
    """Every pod tolerates not-ready/unreachable NoExecute for 300 s; that only delays an eviction."""
    tolerant = config_with(tolerations=[{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}])
    assert capacity(tolerant.pools["gpu"], [replace(GPU_NODE, taints=NOT_READY)]) == 0


def test_a_cordoned_node_gives_no_capacity() -> None:
    cordoned = replace(GPU_NODE, schedulable=False, taints=(Taint("node.kubernetes.io/unschedulable"),))
    assert capacity(POOL, [cordoned]) == 0


def test_taints_count_only_when_every_profile_of_the_pool_tolerates_them() -> None:
    dedicated = Taint("nvidia.com/gpu", "present", "NoSchedule")
    assert capacity(POOL, [replace(GPU_NODE, taints=(dedicated,))]) == 0  # the seed does not tolerate it
    tolerant = config_with(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    assert capacity(tolerant.pools["gpu"], [replace(GPU_NODE, taints=(dedicated,))]) == 8
    # NoExecute is another effect: a NoSchedule toleration does not cover it.
    evicting = Taint("nvidia.com/gpu", "present", "NoExecute")
    assert capacity(tolerant.pools["gpu"], [replace(GPU_NODE, taints=(evicting,))]) == 0
    # PreferNoSchedule never keeps a pod off; the seed tolerates z2jh's dedicated user nodes.
    soft = Taint("example.org/soft", "", "PreferNoSchedule")
    z2jh = Taint("hub.jupyter.org/dedicated", "user", "NoSchedule")
    assert capacity(POOL, [replace(GPU_NODE, taints=(soft, z2jh))]) == 8
    # A second profile of the pool without the toleration: the node is not usable for it.
    data = tolerant.model_dump(by_alias=True, mode="json")
    data["redis"]["url"] = "redis://x:6379/0"
    data["profiles"]["gpu-other"] = {"limits": {"nvidia.com/gpu": "1"}, "pool": "gpu"}
    mixed = Config.model_validate(data)
    assert capacity(mixed.pools["gpu"], [replace(GPU_NODE, taints=(dedicated,))]) == 0


def test_profile_placement_narrows_the_pools_nodes() -> None:
    product = config_with(nodeSelector={"nvidia.com/gpu.product": "RTX-5090"})
    other = replace(GPU_NODE, name="gpu-2", labels={**GPU_NODE.labels, "nvidia.com/gpu.product": "A100"})
    fit = replace(GPU_NODE, labels={**GPU_NODE.labels, "nvidia.com/gpu.product": "RTX-5090"})
    assert capacity(product.pools["gpu"], [fit, other]) == 8
    affinity = config_with(
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["A100"]}]}
                    ]
                }
            }
        }
    )
    assert capacity(affinity.pools["gpu"], [fit, other]) == 8
    assert capacity(affinity.pools["gpu"], [fit]) == 0


def test_holders_on_an_unusable_node_use_none_of_the_counted_slices() -> None:
    """Two GPU nodes, one NotReady with 8 holders on it: the other node's 8 slices are free."""
    down = replace(GPU_NODE, ready=False, taints=NOT_READY)
    up = replace(GPU_NODE, name="gpu-2")
    holders = [holder(f"h{i}") for i in range(8)]
    result = plan("gpu", POOL, [*holders, *(queued(f"q{i}", i) for i in range(9))], [down, up])
    assert (result.capacity, result.in_use) == (8, 0)
    assert [p.name for p in result.grants] == [f"q{i}" for i in range(8)]
    # One node, NotReady: nothing to grant, whatever logs out.
    alone = plan("gpu", POOL, [*holders[:6], queued("a", 0), queued("b", 1)], [down])
    assert (alone.capacity, alone.in_use, alone.grants) == (0, 0, [])
    # Granted but not bound yet: counted wherever it will land.
    assert in_use("gpu", POOL, [holder("unbound", node="")], [down]) == 1
    # A fixed capacity is the admin's number: every holder counts.
    fixed = POOL.model_copy(update={"capacity": 8})
    assert in_use("gpu", fixed, holders, [down]) == 8


def other_pending(name: str = "train", slices: int = 1, **spec: object) -> PodView:
    return PodView(
        namespace="ml",
        name=name,
        resources={"nvidia.com/gpu": Decimal(slices)},
        constraints=constraints_of(spec),
    )


def test_a_pending_pod_that_is_not_ours_counts_when_it_could_land_on_the_pool() -> None:
    holders = [holder(f"h{i}") for i in range(7)]
    waiting = queued("user", 0)
    pending = other_pending()
    result = plan("gpu", POOL, [*holders, waiting, pending], [GPU_NODE, CPU_NODE])
    assert result.in_use == 8 and result.grants == []  # the scheduler may give it the free slice
    assert in_use("gpu", POOL, [pending], [GPU_NODE]) == 1


def test_a_pending_pod_that_cannot_take_a_pool_slice_is_not_counted() -> None:
    nodes = [GPU_NODE, CPU_NODE]
    elsewhere = other_pending(nodeSelector={"nvidia.com/gpu.product": "A100"})
    excluded = other_pending(
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "DoesNotExist"}]}
                    ]
                }
            }
        }
    )
    gated = replace(other_pending(), any_gate=True)  # another controller holds it back
    leaving = replace(other_pending(), deleting=True)
    too_big = other_pending(slices=9)  # no node has 9: it never schedules
    finished = replace(other_pending(), phase="Failed")
    for pod in (elsewhere, excluded, gated, leaving, too_big, finished):
        assert in_use("gpu", POOL, [pod], nodes) == 0, pod
    # Matching selectors, and tolerations a tainted pool node needs, make it count.
    chosen = other_pending(nodeSelector={"nvidia.com/gpu.present": "true"})
    assert in_use("gpu", POOL, [chosen], nodes) == 1
    tainted = replace(GPU_NODE, taints=(Taint("hub.jupyter.org/dedicated", "user", "NoSchedule"),))
    assert in_use("gpu", POOL, [other_pending()], [tainted]) == 0
    tolerant = other_pending(tolerations=[{"key": "hub.jupyter.org/dedicated", "operator": "Exists"}])
    assert in_use("gpu", POOL, [tolerant], [tainted]) == 1
    # No usable pool node at all: nowhere to land.
    assert in_use("gpu", POOL, [other_pending()], [replace(GPU_NODE, ready=False)]) == 0


def test_pod_view_reads_what_a_pending_pod_that_is_not_ours_demands() -> None:
    pod = {
        "metadata": {"name": "train", "namespace": "ml"},
        "spec": {
            "nodeSelector": {"a": "b"},
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "2"}}}],
            "schedulingGates": [{"name": "example.org/quota"}],
        },
    }
    view = pod_view(pod, CONFIG)
    assert view is not None and view.pool is None and view.any_gate and not view.gated
    assert view.constraints == NodeConstraints({"a": "b"}, (), (Toleration("k", "Exists", "", "NoSchedule"),))
    bound = {**pod, "spec": {**pod["spec"], "nodeName": "gpu-1"}}
    view = pod_view(bound, CONFIG)
    assert view is not None and view.constraints is None and view.node == "gpu-1"


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
    # No Ready condition reported (yet): left to the taints, as the scheduler does; Kubernetes
    # taints a registering node not-ready until its kubelet reports Ready.
    assert view.ready and capacity(POOL, [replace(view, schedulable=True)]) == 16
    node["spec"] = {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]}
    assert capacity(POOL, [node_view(node)]) == 0


def test_node_view_reads_the_ready_condition_and_taints() -> None:
    node = {
        "metadata": {"name": "gpu-1"},
        "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}, "junk"]},
        "status": {"conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}]},
    }
    view = node_view(node)
    assert view.ready and view.taints == (Taint("node.kubernetes.io/not-ready", "", "NoExecute"),)
    for status in ("False", "Unknown"):
        node["status"] = {"conditions": [{"type": "Ready", "status": status}]}
        assert not node_view(node).ready


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
    """Random arrivals of one- and two-slice users, cancels, logouts, capacity changes, the node
    going NotReady and back, pending GPU pods that are not ours, and controller restarts, checked
    against an independent model of the queue.

    The model keeps its own waiting list (arrival stamp, name, slices), holders (name -> slices)
    and pending outsiders, and its own rule: the capacity is the node's slices while it is Ready
    (else 0), a pending outsider takes one slice when it could be scheduled (a Ready node with a
    slice at all), and the waiting list is walked in (stamp, namespace/name) order granting while
    the head's slices fit in what is free. After every sync the implementation's grants must be
    exactly the model's: that is I1 (never above capacity, in slices), I2 (strict FIFO, a head that
    does not fit blocks the rest) and work conservation at once.
    """

    @initialize()
    def start(self) -> None:
        self.pods: dict[str, PodView] = {}
        self.waiting: list[tuple[int, str, int]] = []  # the model: (stamp, name, slices)
        self.holding: dict[str, int] = {}  # the model: name -> slices
        self.outsiders: set[str] = set()  # the model: pending GPU pods of someone else
        self.slices = 8
        self.ready = True
        self.clock = 0

    def nodes(self) -> list[NodeView]:
        return [replace(GPU_NODE, allocatable={"nvidia.com/gpu": Decimal(self.slices)}, ready=self.ready)]

    def capacity(self) -> int:
        return self.slices if self.ready else 0

    def outside_use(self) -> int:
        return len(self.outsiders) if self.ready and self.slices >= 1 else 0

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

    @rule(ready=st.booleans())
    def node_readiness(self, ready: bool) -> None:
        self.ready = ready

    @precondition(lambda self: len(self.outsiders) < 3)
    @rule()
    def outsider_waits(self) -> None:
        self.clock += 1
        name = f"o{self.clock}"
        self.outsiders.add(name)
        self.pods[name] = PodView(
            namespace="ml", name=name, resources={"nvidia.com/gpu": Decimal(1)}, constraints=NodeConstraints()
        )

    @precondition(lambda self: bool(self.outsiders))
    @rule(data=st.data())
    def outsider_leaves(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.outsiders)))
        self.outsiders.remove(name)
        del self.pods[name]

    @rule()
    def restart(self) -> None:
        """A new controller knows only the pods: nothing else carries over."""

    def expected_grants(self) -> list[str]:
        free = self.capacity() - sum(self.holding.values()) - self.outside_use()
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
        assert result.capacity == self.capacity()
        assert result.in_use == sum(self.holding.values()) + self.outside_use()
        assert [p.name for p in result.queue] == [name for _, name, _ in sorted(self.waiting, key=_fifo_key)]
        assert [p.name for p in result.grants] == self.expected_grants()
        for head in result.grants:
            self.pods[head.name] = replace(head, gated=False, granted_at=T0, phase="Running")
            entry = next(e for e in self.waiting if e[1] == head.name)
            self.waiting.remove(entry)
            self.holding[head.name] = entry[2]

    @invariant()
    def never_above_capacity_by_our_grants(self) -> None:
        """Use above capacity only ever comes from the capacity shrinking (or an outsider's pod),
        never from a grant."""
        if sum(self.holding.values()) + self.outside_use() > self.capacity():
            assert self.expected_grants() == []


TestQueueModel = QueueModel.TestCase
TestQueueModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
