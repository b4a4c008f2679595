"""Grants a scheduler can use, on the real local control plane: no slice of a NotReady node is
granted, a pending GPU pod of another namespace counts against the pool, and CPU-only users are
kept off the GPU node. The invariant checker watches every state the API server goes through
(its I1 counts the other namespace's pending GPU pods at every grant)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gpu_queue_dev.cluster import DevCluster
from tests import scenarios
from tests.helpers.waiting import wait_for
from tests.invariants import InvariantChecker, make_target, pool_status
from tests.scenarios import Target, gated, running
from webhook.kube import Kube, KubeError, load_client, pod_path

pytestmark = pytest.mark.timeout(240)
OTHERS = "ml-batch"  # a namespace outside the hub, where a team runs its own GPU jobs
GPU_PRESENT = "nvidia.com/gpu.present"


@pytest.fixture
async def watched(clean_cluster: DevCluster) -> AsyncIterator[tuple[DevCluster, Target, InvariantChecker]]:
    kube = Kube(await load_client(clean_cluster.kubeconfig))
    watch_kube = Kube(await load_client(clean_cluster.kubeconfig))
    try:
        await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": OTHERS}})
    except KubeError as exc:
        if exc.status != 409:
            raise
    checker = InvariantChecker(
        watch_kube,
        clean_cluster.hub_namespace,
        capacity=clean_cluster.slices,
        settle_seconds=clean_cluster.service_config.controller.order_settle_seconds,
        other_namespaces=(OTHERS,),
    )
    try:
        async with checker:
            yield clean_cluster, make_target(clean_cluster, kube), checker
    finally:
        await kube.delete(f"/api/v1/namespaces/{OTHERS}/pods", grace_seconds=0)
        await kube.aclose()
        await watch_kube.aclose()


async def _capacity_is(target: Target, slices: int) -> dict[str, Any] | None:
    status = await pool_status(target, "gpu")
    return status if status["capacity"] == slices else None


async def _hold_gated(target: Target, names: list[str], seconds: float, why: str) -> None:
    """For ``seconds``, every pod named stays gated (polled: nothing may be granted meanwhile)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pods = await target.pods()
        for name in names:
            assert gated(pods[name]), f"{name} was granted {why}"
        await asyncio.sleep(0.2)


async def test_no_slice_of_a_not_ready_gpu_node_is_granted_and_both_are_once_it_is_ready(
    watched: tuple[DevCluster, Target, InvariantChecker],
) -> None:
    """Eight users hold the slices, two wait; the GPU node goes NotReady (with the not-ready
    taints) and two holders log out. Neither waiting user is granted while the node is NotReady
    (the old code granted both: pods that could not schedule, then deleted as stuck); once it is
    Ready again both are granted, scheduled and Running."""
    cluster, target, checker = watched
    holders = await scenarios.fill_pool(target, target.slices, prefix="holder")
    waiting = [(await target.spawn(f"waiter{i}"))["metadata"]["name"] for i in range(2)]
    await checker.wait(lambda v: v.queued == waiting, 15, "two users queued")
    ready = False
    try:
        await cluster.set_node_ready(False)
        await wait_for(lambda: _capacity_is(target, 0), 15, "the service to count no slice of the NotReady node")
        for name in holders[:2]:
            await target.logout(name)
        await wait_for(lambda: _free_of(target, holders[:2]), 15, "the two holders to be gone")
        status = await pool_status(target, "gpu")
        assert (status["capacity"], status["inUse"]) == (0, 0), status
        await _hold_gated(target, waiting, 4.0, "while the GPU node was NotReady")
        marked = time.monotonic()
        await cluster.set_node_ready(True)
        ready = True
        await checker.wait(lambda v: not v.queued and set(waiting) <= set(v.holding), 15, "both to be granted")
        granted_after = time.monotonic() - marked

        async def both_running() -> bool:
            pods = await target.pods()
            return all(running(pods[n]) and pods[n]["spec"].get("nodeName") == cluster.gpu_node for n in waiting)

        await wait_for(both_running, 30, "both granted pods to run on the GPU node")
        running_after = time.monotonic() - marked
    finally:
        if not ready:
            await cluster.set_node_ready(True)
    summary = checker.check()
    result = {"granted_after_ready_s": round(granted_after, 2), "running_after_ready_s": round(running_after, 2)}
    print(f"[capacity] not-ready node: {json.dumps({**result, **summary}, default=str)}")


async def _free_of(target: Target, names: list[str]) -> bool:
    pods = await target.pods()
    return not set(names) & set(pods)


def _batch_pod(name: str) -> dict[str, Any]:
    """A GPU job of another team: no hub, no gate, asks for one slice."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": OTHERS, "labels": {"app": "train"}},
        "spec": {
            "containers": [{"name": "train", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]
        },
    }


async def test_a_pending_gpu_pod_of_another_team_and_a_waiting_user_share_one_freed_slice(
    watched: tuple[DevCluster, Target, InvariantChecker],
) -> None:
    """The pool is full, a user waits, and a GPU pod of another namespace is pending (it asks for
    the same resource, no gate). One slice frees: exactly one of the two gets it, and nobody is
    left granted but unschedulable (the old code granted the user while the scheduler bound the
    other pod: one of them then waited on a node with no slice)."""
    cluster, target, checker = watched
    holders = await scenarios.fill_pool(target, target.slices, prefix="holder")
    user = (await target.spawn("waiter"))["metadata"]["name"]
    await checker.wait(lambda v: v.queued == [user], 15, "the user queued")
    other_path = pod_path(OTHERS, "train")
    await target.kube.request("POST", f"/api/v1/namespaces/{OTHERS}/pods", body=_batch_pod("train"))

    async def unschedulable() -> bool:
        pod = await target.kube.request("GET", other_path)
        conditions = (pod.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conditions)

    await wait_for(unschedulable, 15, "the other team's pod to be pending: no slice free")
    await wait_for(lambda: _in_use_is(target, target.slices + 1), 15, "the pending pod to count as in use")
    # The scheduler is slower than the controller here (as when the pod sits in its backoff, up to
    # 10 s): frozen while the slice frees, so the controller decides first, every time.
    scheduler = cluster.procs["kube-scheduler"].pid
    assert scheduler is not None
    os.kill(scheduler, signal.SIGSTOP)
    try:
        await target.logout(holders[0])
        await wait_for(lambda: _free_of(target, holders[:1]), 15, "the holder to be gone")
        await _hold_gated(target, [user], 2.0, "while the pending pod may still take the freed slice")
    finally:
        os.kill(scheduler, signal.SIGCONT)
    resumed = time.monotonic()

    async def bound() -> dict[str, Any] | None:
        pod = await target.kube.request("GET", other_path)
        return pod if pod["spec"].get("nodeName") else None

    other = await wait_for(bound, 30, "the scheduler to give the freed slice to the pending pod")
    bound_after = time.monotonic() - resumed
    await _hold_gated(target, [user], 3.0, "though the pending pod took the freed slice")
    await wait_for(lambda: _running_at(target, other_path), 20, "the other team's pod to run")
    assert other["spec"]["nodeName"] == target.gpu_node
    # Nobody granted but unschedulable: every ungated pool pod is on a node.
    pods = await target.pods()
    stranded = [n for n, p in pods.items() if not gated(p) and not p["spec"].get("nodeName")]
    assert not stranded, stranded
    status = await pool_status(target, "gpu")
    assert (status["capacity"], status["inUse"], status["queued"]) == (target.slices, target.slices, 1), status
    summary = checker.check()
    print(f"[capacity] pending other pod: {json.dumps({'bound_after_resume_s': round(bound_after, 2), **summary})}")


async def _in_use_is(target: Target, slices: int) -> bool:
    return bool((await pool_status(target, "gpu"))["inUse"] == slices)


async def _running_at(target: Target, path: str) -> bool:
    pod = await target.kube.request("GET", path)
    return running(pod)


async def test_cpu_only_users_get_the_anti_gpu_placement_and_run_on_the_cpu_node(
    watched: tuple[DevCluster, Target, InvariantChecker],
) -> None:
    """Four CPU users start on an idle cluster where both nodes have room: each pod carries the
    seed's `nvidia.com/gpu.present DoesNotExist` affinity and runs on the CPU node (the fake GPU
    node has that label, as NVIDIA's feature discovery sets it); a GPU user still lands on the
    GPU node."""
    cluster, target, checker = watched
    async with cluster.kube() as kube:
        gpu_node = await kube.get(f"/api/v1/nodes/{cluster.gpu_node}")
        cpu_node = await kube.get(f"/api/v1/nodes/{cluster.cpu_node}")
    assert GPU_PRESENT in gpu_node["metadata"]["labels"] and GPU_PRESENT not in cpu_node["metadata"]["labels"]
    names = [(await target.spawn(f"cpu{i}", "cpu-only"))["metadata"]["name"] for i in range(4)]
    gpu_user = (await target.spawn("gpuuser"))["metadata"]["name"]

    async def all_running() -> dict[str, dict[str, Any]] | None:
        pods = await target.pods()
        return pods if all(n in pods and running(pods[n]) for n in [*names, gpu_user]) else None

    pods = await wait_for(all_running, 30, "the CPU users and the GPU user to run")
    anti_gpu = {"key": GPU_PRESENT, "operator": "DoesNotExist"}
    for name in names:
        terms = pods[name]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert all(anti_gpu in t["matchExpressions"] for t in terms["nodeSelectorTerms"]), terms
        assert pods[name]["spec"]["nodeName"] == cluster.cpu_node, (name, pods[name]["spec"]["nodeName"])
    assert pods[gpu_user]["spec"]["nodeName"] == cluster.gpu_node
    summary = checker.check()
    placed = {n: pods[n]["spec"]["nodeName"] for n in [*names, gpu_user]}
    print(f"[capacity] cpu placement: {json.dumps({'nodes': placed, **summary})}")
