"""The seed scenarios on a real local control plane (kube-apiserver, kube-scheduler, kwok GPU
node, etcd, redis-server, two gpu-queue replicas), plus the faults only this tier can inject."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from gpu_queue_dev.cluster import DevCluster
from tests import scenarios
from tests.scenarios import Target, gated, holders_and_queue, wait_for
from webhook.kube import KubeError

pytestmark = pytest.mark.timeout(240)


def report(name: str, data: Any) -> None:
    print(f"[scenario] {name}: {json.dumps(data, default=str)}")


async def test_seed_story_ninth_user_waits_then_gets_the_freed_slice(target: Target) -> None:
    result = await scenarios.seed_story(target)
    report("seed story", result)


async def test_cpu_pods_are_never_gated_while_the_gpu_pool_is_full(target: Target) -> None:
    await scenarios.cpu_never_gated(target)


async def test_burst_of_30_is_granted_in_requested_at_order(target: Target) -> None:
    report("burst", await scenarios.burst_in_order(target, 30))


async def test_slices_8_to_16_grants_next_8_and_16_to_8_evicts_nobody(target: Target) -> None:
    await scenarios.capacity_follows_the_node(target)


async def test_cancelled_user_returning_gets_the_old_place(target: Target) -> None:
    await scenarios.cancel_keeps_place(target)


async def test_only_the_service_account_may_remove_the_gate(target: Target) -> None:
    message = await scenarios.user_cannot_remove_the_gate(target, target.kube)
    report("gate removal denied", message)


async def test_webhook_down_gives_the_user_a_clear_error(target: Target, clean_cluster: DevCluster) -> None:
    clean_cluster.kill_service(clean_cluster.state.webhook_replica)
    with pytest.raises(KubeError) as caught:
        await target.spawn("unlucky")
    message = caught.value.reason
    report("webhook down", message)
    assert "failed calling webhook" in message and "gpu-queue" in message
    assert await target.pods() == {}, "failurePolicy Fail: no pod may slip through unqueued"


async def test_redis_outage_keeps_admitting_and_granting_in_order_then_rebuilds(
    target: Target, clean_cluster: DevCluster
) -> None:
    holders = await scenarios.fill_pool(target, target.slices)
    clean_cluster.redis_kill()
    queued = [(await target.spawn(f"nored{i}"))["metadata"]["name"] for i in range(4)]
    _, waiting = await wait_for(lambda: _queue_len(target, 4), 15, "4 pods admitted and gated without Redis")
    assert waiting == queued, "order comes from the pods' requested-at"
    await target.logout(holders[0])
    await wait_for(lambda: _holding(target, queued[0]), 10, "the head to be granted without Redis")
    holding, waiting = await holders_and_queue(target)
    assert len(holding) == target.slices and waiting == queued[1:]

    await clean_cluster.redis_start()  # empty: everything the index had is gone

    async def rebuilt() -> bool:
        answers = await asyncio.gather(*(target.position(n) for n in queued[1:]))
        return [a.get("position") for a in answers] == [1, 2, 3]

    started = time.monotonic()
    await wait_for(rebuilt, 15, "the FIFO to be rebuilt in the same order after Redis came back empty")
    report("redis rebuild seconds", round(time.monotonic() - started, 2))


async def test_leader_killed_mid_queue_the_other_takes_over_without_double_grants(
    target: Target, clean_cluster: DevCluster
) -> None:
    holders = await scenarios.fill_pool(target, target.slices)
    queued = [(await target.spawn(f"lq{i}"))["metadata"]["name"] for i in range(4)]
    await wait_for(lambda: _queue_len(target, 4), 15, "4 queued")
    leader = await _leader_index(target)
    clean_cluster.kill_service(leader)
    if clean_cluster.state.webhook_replica == leader:
        await clean_cluster.point_webhooks_at(1 - leader)  # what the Service does in a real cluster
    killed = time.monotonic()
    await target.logout(holders[0])
    await target.logout(holders[1])

    max_holding = 0

    async def two_granted() -> bool:
        nonlocal max_holding
        holding, waiting = await holders_and_queue(target)
        max_holding = max(max_holding, len(holding))
        return waiting == queued[2:] and len(holding) == target.slices

    await wait_for(two_granted, 30, "the new leader to grant the next two in order")
    took = time.monotonic() - killed
    assert max_holding <= target.slices, f"{max_holding} holders for {target.slices} slices"
    lease = clean_cluster.service_config.controller.lease_duration_seconds
    report("failover", {"seconds": round(took, 2), "lease_duration": lease})
    assert took < lease * 3, f"takeover took {took:.1f}s for a {lease}s lease"
    assert await _leader_index(target) == 1 - leader


async def _queue_len(target: Target, n: int) -> tuple[list[str], list[str]] | None:
    holding, waiting = await holders_and_queue(target)
    return (holding, waiting) if len(waiting) == n else None


async def _holding(target: Target, name: str) -> bool:
    pod = await target.pod(name)
    return pod is not None and not gated(pod)


async def _leader_index(target: Target) -> int:
    async def holder() -> int | None:
        lease = await target.kube.request(
            "GET", "/apis/coordination.k8s.io/v1/namespaces/gpu-queue/leases/gpu-queue-leader"
        )
        identity = (lease.get("spec") or {}).get("holderIdentity") or ""
        return int(identity.rsplit("-", 1)[1]) + 1 if identity.startswith("gpu-queue-") else None

    return await wait_for(holder, 20, "a leader") - 1


async def _admin(target: Target, cluster: DevCluster, method: str, path: str, body: Any = None) -> dict[str, Any]:
    import ssl

    import aiohttp

    context = ssl.create_default_context(cafile=target.ca_file)
    headers = {"Authorization": f"Bearer {cluster.admin_token}", "X-Gpu-Queue-Actor": "test-admin"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.request(method, f"{target.api_url}/api/v1{path}", json=body, headers=headers, ssl=context) as response,
    ):
        data: dict[str, Any] = await response.json()
        assert response.status == 200, (response.status, data)
        return data


async def test_admin_move_survives_a_redis_wipe_and_admin_rm_keeps_no_place(
    target: Target, clean_cluster: DevCluster
) -> None:
    await scenarios.fill_pool(target, target.slices)
    qa, qb, qc = [(await target.spawn(u))["metadata"]["name"] for u in ("ma", "mb", "mc")]
    await wait_for(lambda: scenarios._queued_at(target, qc, 3), 15, "mc at position 3")

    await _admin(
        target,
        clean_cluster,
        "POST",
        f"/pools/gpu/queue/{target.namespace}/{qc}/move",
        {"position": 1, "reason": "demo day"},
    )
    await wait_for(lambda: scenarios._queued_at(target, qc, 1), 15, "mc moved to position 1")
    # The pods are the truth: after Redis loses everything, the rebuilt order still has mc first.
    await clean_cluster.redis_flush()
    await wait_for(lambda: scenarios._queued_at(target, qc, 1), 15, "mc still first after the index is rebuilt")
    await wait_for(lambda: scenarios._queued_at(target, qa, 2), 15, "ma second")

    await _admin(target, clean_cluster, "DELETE", f"/pools/gpu/queue/{target.namespace}/{qa}?reason=duplicate")
    await wait_for(lambda: _gone(target, qa), 15, "ma's pod to be deleted")
    await wait_for(lambda: scenarios._queued_at(target, qb, 2), 15, "mb moves up to 2")
    back = (await target.spawn("ma"))["metadata"]["name"]
    await wait_for(
        lambda: scenarios._queued_at(target, back, 3), 15, "ma back at the end: an admin removal keeps no place"
    )


async def _gone(target: Target, name: str) -> bool:
    return await target.pod(name) is None


async def test_stuck_head_loses_its_slice_and_the_next_user_goes(target: Target, clean_cluster: DevCluster) -> None:
    """I7: a granted pod that never becomes Ready (here: bound to a GPU node no kubelet runs) is
    reported, marked released and deleted, and the next user gets the slice."""
    from tests.cluster.conftest import STUCK_AFTER_SECONDS

    dead = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "dead-gpu",
            "labels": {"nvidia.com/gpu.present": "true", "kubernetes.io/hostname": "dead-gpu"},
        },
        "status": {
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": "1"},
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": "1"},
        },
    }
    await target.set_slices(0)
    await target.kube.request("POST", "/api/v1/nodes", body=dead)
    try:
        first = (await target.spawn("stuck-first"))["metadata"]["name"]
        await wait_for(lambda: _holding(target, first), 15, "the first user to be granted the only slice")
        second = (await target.spawn("stuck-second"))["metadata"]["name"]
        await wait_for(lambda: scenarios._queued_at(target, second, 1), 15, "the second user queued at 1")

        async def reported() -> list[str] | None:
            events = await target.events(first)
            return events if any("its node has not started it" in e and "releasing it" in e for e in events) else None

        events = await wait_for(reported, STUCK_AFTER_SECONDS + 20, "the StuckAdmission Event")
        await wait_for(lambda: _holding(target, second), 15, "the next user to get the released slice")
        pod = await target.pod(first)
        assert pod is None or "gpu-queue.io/released" in pod["metadata"]["annotations"]
        report("stuck head", events[-1])
    finally:
        await target.kube.request("DELETE", "/api/v1/nodes/dead-gpu")


async def _play_kubelet(target: Target, pod: str, waiting: str, message: str) -> None:
    """What a kubelet writes: the notebook container waiting for ``waiting``."""
    status = {
        "status": {
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {
                    "name": "notebook",
                    "image": "registry.example.org/cuda-notebook:12.8",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": waiting, "message": message}},
                }
            ],
        }
    }
    await target.kube.request(
        "PATCH",
        f"/api/v1/namespaces/{target.namespace}/pods/{pod}/status",
        body=status,
        content_type="application/merge-patch+json",
    )


async def _kubelet_event(target: Target, pod: dict[str, Any], reason: str, message: str) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    name = pod["metadata"]["name"]
    await target.kube.request(
        "POST",
        f"/api/v1/namespaces/{target.namespace}/events",
        body={
            "metadata": {"name": f"{name}.{reason.lower()}", "namespace": target.namespace},
            "involvedObject": {
                "kind": "Pod",
                "name": name,
                "namespace": target.namespace,
                "uid": pod["metadata"]["uid"],
            },
            "reason": reason,
            "message": message,
            "type": "Normal",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": "kubelet", "host": "hand-gpu"},
        },
    )


async def test_a_slow_image_pull_keeps_its_slice_past_the_timeout_and_a_pull_error_is_released(
    target: Target, clean_cluster: DevCluster
) -> None:
    """The test plays the kubelet of a GPU node. A granted pod
    still pulling its image past admitTimeoutSeconds keeps its slice and is told so (SlowStart), the
    next user waits; when the pull turns into ImagePullBackOff it is released, the user is told why,
    and the next user goes."""
    from tests.cluster.conftest import STUCK_AFTER_SECONDS

    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "hand-gpu",
            "labels": {"nvidia.com/gpu.present": "true", "kubernetes.io/hostname": "hand-gpu"},
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "the test"}],
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": "1"},
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": "1"},
        },
    }
    await target.set_slices(0)
    await target.kube.request("POST", "/api/v1/nodes", body=node)
    try:
        first = (await target.spawn("slow-first"))["metadata"]["name"]

        async def bound() -> dict[str, Any] | None:
            pod = await target.pod(first)
            return pod if pod is not None and not gated(pod) and pod["spec"].get("nodeName") == "hand-gpu" else None

        pod = await wait_for(bound, 15, "the first user granted and bound to the hand-driven node")
        await _play_kubelet(target, first, "ContainerCreating", "")
        await _kubelet_event(target, pod, "Pulling", 'Pulling image "registry.example.org/cuda-notebook:12.8"')
        second = (await target.spawn("slow-second"))["metadata"]["name"]
        await wait_for(lambda: scenarios._queued_at(target, second, 1), 15, "the second user queued at 1")

        async def told(words: str) -> list[str] | None:
            events = await target.events(first)
            return events if any(words in e for e in events) else None

        slow = await wait_for(lambda: told("the slice is kept"), STUCK_AFTER_SECONDS + 20, "the SlowStart Event")
        pod = await target.pod(first)
        assert pod is not None and "gpu-queue.io/released" not in pod["metadata"]["annotations"]
        assert pod["metadata"].get("deletionTimestamp") is None, "a pod pulling its image was deleted"
        assert await scenarios._queued_at(target, second, 1), "the next user got the slice of a pull in progress"
        assert "Pulling image" in slow[-1]

        failed_at = time.monotonic()
        await _play_kubelet(target, first, "ImagePullBackOff", 'Back-off pulling image "cuda-notebook:12.8"')
        stuck = await wait_for(lambda: told("ImagePullBackOff"), 20, "the StuckAdmission Event naming the pull error")
        await wait_for(lambda: _holding(target, second), 15, "the next user to get the released slice")
        handed_on = time.monotonic() - failed_at
        report("slow start", {"slow": slow[-1], "stuck": stuck[-1], "pull_error_to_next_grant_s": round(handed_on, 2)})
    finally:
        await target.kube.request("DELETE", "/api/v1/nodes/hand-gpu")
