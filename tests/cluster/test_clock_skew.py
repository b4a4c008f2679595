"""Arrival order across replicas whose clocks disagree: replica 0 runs 30 s fast (libfaketime),
replica 1 is right. Both stamp ``requested-at`` on the API server's clock as they estimate it, so
pods admitted by either keep their true order, and the Lease is not stolen or lost."""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gpu_queue_dev.cluster import DevCluster
from tests.helpers.cluster import cluster_session
from tests.helpers.waiting import wait_for
from tests.invariants import http_text, make_target
from tests.scenarios import DOUBLE_PROFILE_CONFIG, REQUESTED_AT, Target
from webhook.kube import Kube, load_client
from webhook.pods import parse_time

pytestmark = pytest.mark.timeout(300)
SKEW_SECONDS = 30
FAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))


@pytest.fixture(scope="module")
def skewed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    if not FAKETIME:
        if os.environ.get("REQUIRE_CLUSTER_TOOLS", "") not in ("", "0"):
            pytest.fail("libfaketime is not installed (Debian package libfaketime; scripts/setup.sh installs it)")
        pytest.skip("libfaketime is not installed (Debian package libfaketime)")
    # Replica 0's process (and only it) sees a wall clock 30 s ahead; its monotonic clock is real.
    wrapper = (
        'if [ "$POD_NAME" = gpu-queue-0 ]; then '
        f"export LD_PRELOAD={FAKETIME[0]} FAKETIME=+{SKEW_SECONDS}s FAKETIME_DONT_FAKE_MONOTONIC=1; fi; "
        'exec "$0" "$@"'
    )
    command = ["sh", "-c", wrapper, sys.executable, "-m", "webhook.cli", "serve"]
    with cluster_session(
        tmp_path_factory.mktemp("skewed"), config_overrides={"profiles": DOUBLE_PROFILE_CONFIG}, service_command=command
    ) as cluster:
        yield cluster


@pytest.fixture
async def target(skewed_cluster: DevCluster) -> AsyncIterator[Target]:
    kube = Kube(await load_client(skewed_cluster.kubeconfig))
    try:
        yield make_target(skewed_cluster, kube)
    finally:
        await kube.aclose()


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def _offset(cluster: DevCluster, replica: int) -> tuple[float, float] | None:
    text = await http_text(cluster.metrics_url(replica) + "/metrics")
    offset = _metric(text, "gpu_queue_clock_offset_seconds")
    spread = _metric(text, "gpu_queue_clock_offset_uncertainty_seconds")
    return None if offset is None or spread is None else (offset, spread)


async def _mutations(cluster: DevCluster, replica: int) -> float:
    text = await http_text(cluster.metrics_url(replica) + "/metrics")
    return sum(
        float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("gpu_queue_admission_requests_total{") and 'handler="mutate"' in line
    )


async def test_pods_admitted_by_a_replica_30s_fast_keep_their_true_arrival_order(
    skewed_cluster: DevCluster, target: Target
) -> None:
    cluster = skewed_cluster

    async def learnt(replica: int, want: float) -> tuple[float, float] | None:
        found = await _offset(cluster, replica)
        return found if found is not None and abs(found[0] - want) < 0.25 and found[1] < 0.1 else None

    fast = await wait_for(lambda: learnt(0, SKEW_SECONDS), 90, "replica 0 to learn it runs 30 s fast")
    right = await wait_for(lambda: learnt(1, 0.0), 90, "replica 1 to learn it is right")

    assert cluster.state.webhook_replica == 0
    order = [(await target.spawn(f"fast{i}"))["metadata"]["name"] for i in range(4)]
    before = await _mutations(cluster, 1)
    await cluster.point_webhooks_at(1)

    async def replica_1_admits() -> bool:
        await target.spawn(f"probe{int(await _mutations(cluster, 1))}", "cpu-only")
        return await _mutations(cluster, 1) > before

    await wait_for(replica_1_admits, 15, "the API server to call replica 1's webhook")
    order += [(await target.spawn(f"right{i}"))["metadata"]["name"] for i in range(4)]

    pods = await target.pods()
    stamps = [parse_time(pods[name]["metadata"]["annotations"][REQUESTED_AT]) for name in order]
    created = [
        datetime.fromisoformat(pods[name]["metadata"]["creationTimestamp"].replace("Z", "+00:00")) for name in order
    ]
    inversions = sum(1 for i in range(len(order)) for j in range(i + 1, len(order)) if stamps[i] >= stamps[j])
    # The API server sets creationTimestamp (whole seconds) just after admission: a stamp on its
    # clock lies within a second of it; the fast replica's own clock would be 30 s off.
    off = [
        abs(((s - c) if s is not None else timedelta(days=1)).total_seconds())
        for s, c in zip(stamps, created, strict=True)
    ]
    print(
        "[clock] "
        + json.dumps(
            {"replica0": fast, "replica1": right, "inversions": inversions, "max_stamp_minus_created": max(off)}
        )
    )
    assert inversions == 0, f"{inversions} of 28 pairs out of arrival order: {list(zip(order, stamps, strict=True))}"
    assert max(off) < 1.5, f"stamps are not on the API server's clock: {off}"


async def test_the_lease_is_neither_stolen_nor_lost_with_a_replica_30s_fast(
    skewed_cluster: DevCluster, target: Target
) -> None:
    lease_path = "/apis/coordination.k8s.io/v1/namespaces/gpu-queue/leases/gpu-queue-leader"
    lease = await target.kube.request("GET", lease_path)
    transitions = int(lease["spec"].get("leaseTransitions") or 0)
    holder = lease["spec"]["holderIdentity"]
    lease_seconds = skewed_cluster.service_config.controller.lease_duration_seconds
    deadline = datetime.now() + timedelta(seconds=4 * lease_seconds)

    async def watched_long_enough() -> bool:
        now = await target.kube.request("GET", lease_path)
        assert now["spec"]["holderIdentity"] == holder, "the Lease changed hands between two live replicas"
        assert int(now["spec"].get("leaseTransitions") or 0) == transitions
        return datetime.now() >= deadline

    await wait_for(watched_long_enough, 6 * lease_seconds, "four lease durations with one holder")
    leaders = [_metric(await http_text(skewed_cluster.metrics_url(i) + "/metrics"), "gpu_queue_leader") for i in (0, 1)]
    assert sorted(leaders) == [0.0, 1.0], leaders
    assert Path(FAKETIME[0]).exists()
