"""Grants that stay right when the cluster is not ideal, on the real local control plane, with the
invariant checker watching every state the API server goes through."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gpu_queue_dev.cluster import DevCluster
from tests import scenarios
from tests.invariants import InvariantChecker, make_target, pool_status
from tests.scenarios import Target
from webhook.kube import Kube, load_client

pytestmark = pytest.mark.timeout(240)


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
