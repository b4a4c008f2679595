"""Grants that stay right when the cluster is not ideal, on the real local control plane, with the
invariant checker watching every state the API server goes through."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gpu_queue_dev.cluster import DevCluster
from tests import scenarios
from tests.helpers.waiting import wait_for
from tests.invariants import InvariantChecker, current_leader, http_text, make_target, pool_status
from tests.scenarios import Target
from webhook.kube import Kube, load_client

pytestmark = pytest.mark.timeout(240)
LEASE = "/apis/coordination.k8s.io/v1/namespaces/gpu-queue/leases/gpu-queue-leader"


@pytest.fixture
async def watched(clean_cluster: DevCluster) -> AsyncIterator[tuple[DevCluster, Target, InvariantChecker]]:
    kube = Kube(await load_client(clean_cluster.kubeconfig))
    watch_kube = Kube(await load_client(clean_cluster.kubeconfig))
    checker = InvariantChecker(
        watch_kube,
        clean_cluster.hub_namespace,
        capacity=clean_cluster.slices,
        settle_seconds=clean_cluster.service_config.controller.order_settle_seconds,
    )
    try:
        async with checker:
            yield clean_cluster, make_target(clean_cluster, kube), checker
    finally:
        await kube.aclose()
        await watch_kube.aclose()


async def test_two_slice_profiles_count_two_and_never_overfill_the_pool(
    watched: tuple[DevCluster, Target, InvariantChecker],
) -> None:
    cluster, target, checker = watched

    async def api_in_use() -> int:
        return int((await pool_status(target, "gpu"))["inUse"])

    async def raise_capacity(slices: int) -> None:
        checker.capacity = slices
        await cluster.set_gpu_slices(slices)

    result = await scenarios.two_slice_users_take_two_and_keep_their_turn(target, api_in_use, raise_capacity)
    # The scenario saw the late single's grant by a GET; the checker's watch may not have yet.
    await checker.wait(lambda v: result["single"] in v.holding, 10, "the checker's watch to see the single's grant")
    summary = checker.check()
    print(f"[grants] two-slice: {json.dumps({**result, **summary}, default=str)}")
    assert summary["I1_max_in_use"] == cluster.slices + 1


async def test_a_pod_at_the_annotation_size_limit_does_not_stop_the_controller(
    watched: tuple[DevCluster, Target, InvariantChecker],
) -> None:
    """A pod with 200 KB of annotations (the API server allows 256 KiB) arrives as one watch line
    of that size; the controller keeps granting afterwards and never restarted."""
    cluster, target, _ = watched
    await scenarios.fill_pool(target, 1, prefix="before")
    big = await target.spawn("big-annotation", "cpu-only")
    await target.kube.patch_json(
        f"/api/v1/namespaces/{target.namespace}/pods/{big['metadata']['name']}",
        [{"op": "add", "path": "/metadata/annotations/example.org~1blob", "value": "x" * 200_000}],
    )
    after = await scenarios.fill_pool(target, 1, prefix="after")
    assert after
    for replica in range(len(cluster.state.services)):
        async with (
            aiohttp.ClientSession() as session,
            session.get(cluster.metrics_url(replica) + "/readyz") as response,
        ):
            ready = await response.json()
        assert ready["components"]["controller"] == {"state": "running", "restarts": 0}, ready


async def _events_by(target: Target, identity: str) -> int:
    listing = await target.kube.request("GET", f"/api/v1/namespaces/{target.namespace}/events")
    return sum(1 for e in listing.get("items") or [] if e.get("reportingInstance") == identity)


async def test_a_leader_frozen_past_its_lease_writes_nothing_after_it_thaws(
    watched: tuple[DevCluster, Target, InvariantChecker],
) -> None:
    """SIGSTOP the leader while it has work in hand (six users just queued behind a full pool),
    keep it frozen past its lease while two slices free and the other replica takes over and
    grants them, then SIGCONT: the old leader must not post one Event or grant one slice more."""
    cluster, target, checker = watched
    holders = await scenarios.fill_pool(target, target.slices, prefix="holder")
    old = await current_leader(target.kube)
    identity = f"gpu-queue-{old}"
    assert (await target.kube.request("GET", LEASE))["spec"]["holderIdentity"] == identity
    if cluster.state.webhook_replica == old:  # the frozen replica must not be the one admitting
        await cluster.point_webhooks_at(1 - old)
    waiting = [(await target.spawn(f"waiter{i}"))["metadata"]["name"] for i in range(6)]
    pid = cluster.procs[f"service-{old}"].pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        await target.logout(holders[0])
        await target.logout(holders[1])
        lease = cluster.service_config.controller.lease_duration_seconds
        await wait_for(
            lambda: _holder_is(target.kube, f"gpu-queue-{1 - old}"), 4 * lease, "the other replica to take the Lease"
        )
        await checker.wait(lambda v: len(v.holding) == target.slices, 15, "the new leader to grant both slices")
        before = await _events_by(target, identity)
    finally:
        os.kill(pid, signal.SIGCONT)
    thawed = time.monotonic()

    async def knows_it_lost() -> bool:
        text = await http_text(cluster.metrics_url(old) + "/metrics")
        return "gpu_queue_leader 0.0" in text

    await wait_for(knows_it_lost, 15, "the thawed replica to notice it lost the Lease")
    # A bounded window for writes in flight at the freeze to show up, if any were sent.
    while time.monotonic() < thawed + 3.0:
        assert await _events_by(target, identity) == before, "the thawed old leader posted Events"
        await asyncio.sleep(0.25)
    fenced = await http_text(cluster.metrics_url(old) + "/metrics")
    summary = checker.check()  # I1 at every observation, one admitted-at per pod, I2
    print(
        "[grants] frozen leader: "
        + json.dumps({"events_before_thaw": before, "waiting": len(waiting), **summary}, default=str)
    )
    assert "gpu_queue_fenced_writes_total" in fenced


async def _holder_is(kube: Kube, identity: str) -> bool:
    return bool((await kube.request("GET", LEASE))["spec"].get("holderIdentity") == identity)


async def _admin_call(cluster: DevCluster, replica: int, method: str, path: str, body: Any = None) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=str(cluster.ca_file))
    headers = {"Authorization": f"Bearer {cluster.admin_token}", "X-Gpu-Queue-Actor": "test-admin"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.request(
            method, f"{cluster.api_url(replica)}/api/v1{path}", json=body, headers=headers, ssl=context
        ) as response,
    ):
        data: dict[str, Any] = await response.json()
        assert response.status == 200, (response.status, data)
        return data


async def test_admin_edits_sent_to_the_replica_that_does_not_lead_decide_the_next_grants(
    watched: tuple[DevCluster, Target, InvariantChecker],
) -> None:
    """The edit is applied where the admin sent it (Redis, in one script, and the pod); the leader
    grants from the pods, so the moved user goes next and the removed one keeps no place."""
    cluster, target, checker = watched
    holders = await scenarios.fill_pool(target, target.slices, prefix="holder")
    first, second, third = [(await target.spawn(u))["metadata"]["name"] for u in ("edita", "editb", "editc")]
    await wait_for(lambda: scenarios._queued_at(target, third, 3), 15, "three users queued")
    other = 1 - await current_leader(target.kube)

    moved = await _admin_call(
        cluster, other, "POST", f"/pools/gpu/queue/{target.namespace}/{third}/move", {"position": 1, "reason": "t"}
    )
    assert moved["position"] == 1
    removed = await _admin_call(cluster, other, "DELETE", f"/pools/gpu/queue/{target.namespace}/{first}?reason=t")
    assert removed["podDeleted"] is True

    await target.logout(holders[0])
    await checker.wait(lambda v: third in v.holding, 10, "the moved user to get the freed slice")
    assert second in checker.view().queued
    back = (await target.spawn("edita"))["metadata"]["name"]
    await wait_for(lambda: scenarios._queued_at(target, back, 2), 15, "the removed user back at the end, no place")
    summary = checker.check()
    print(f"[grants] edits on the replica that does not lead: {json.dumps(summary, default=str)}")


async def test_a_leader_stopped_gracefully_hands_the_lease_over_at_once(clean_cluster: DevCluster) -> None:
    """SIGTERM the leader (what a rollout or `kubectl delete pod` does): it empties the Lease's
    holder as it stops, so the other replica leads within one of its retry periods instead of
    waiting out the lease. Found in kind: the hand-over was cut short by a second cancellation of
    the elector, and every rollout paused grants for a whole lease duration."""
    cluster = clean_cluster
    kube = Kube(await load_client(cluster.kubeconfig))
    try:
        old = await current_leader(kube)
        lease = cluster.service_config.controller.lease_duration_seconds
        process = cluster.procs[f"service-{old}"]
        assert process.pid is not None
        stopped = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        await wait_for(lambda: _holder_is(kube, f"gpu-queue-{1 - old}"), 4 * lease, "the other replica to lead")
        took = time.monotonic() - stopped
    finally:
        await kube.aclose()
    print(f"[grants] graceful hand-over: {json.dumps({'takeover_seconds': round(took, 2), 'lease_seconds': lease})}")
    assert took < lease, f"the next leader waited {took:.1f} s: the Lease was not handed over (lease {lease} s)"
