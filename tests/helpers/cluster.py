"""Dev-cluster plumbing shared by the cluster tier and the scenario tests.

One ``DevCluster`` per test session (start-up costs seconds, not minutes), reset between tests
with ``reset_cluster``. Its async methods open their own connections on every call, so they work
from any test's event loop; the session fixture starts and stops it from a worker thread so it
never touches the loops pytest-asyncio manages.

    from tests.helpers.cluster import cluster_session, reset_cluster, kube_api
    from tests.helpers.waiting import wait_for
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from gpu_queue_dev.cluster import DevCluster, DevClusterError, missing_cluster_tools
from gpu_queue_dev.cluster.service import deep_merge

T = TypeVar("T")

# Set (to anything but "" or "0") where the tools are built, e.g. in CI: a missing binary then
# fails the tier instead of skipping it. Not GPU_QUEUE_*: that prefix is the service's config.
REQUIRE_ENV = "REQUIRE_CLUSTER_TOOLS"

# The session cluster: two replicas, so leader-failover scenarios can share it.
SESSION_REPLICAS = 2
SESSION_SLICES = 8


def cluster_skip_reason() -> str | None:
    """Why the cluster tier cannot run here, or None."""
    missing = missing_cluster_tools()
    if not missing:
        return None
    return (
        f"cluster tier: {', '.join(missing)} not found; build them with tools/build.sh "
        "(cached in ~/.cache/gpu-queue/bin; CI builds them)"
    )


def require_cluster_tools() -> None:
    """Skip (or, with REQUIRE_CLUSTER_TOOLS set, fail) when the binaries are missing."""
    reason = cluster_skip_reason()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh loop in a worker thread.

    Works from sync fixtures and from inside a running loop alike, and leaves the calling thread's
    event loop (pytest-asyncio's) untouched.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="devcluster") as pool:
        return pool.submit(asyncio.run, coro).result()


def _progress(line: str) -> None:
    print(f"[dev cluster] {line}", file=sys.stderr, flush=True)


@contextmanager
def cluster_session(
    state_dir: Path,
    *,
    replicas: int = SESSION_REPLICAS,
    slices: int = SESSION_SLICES,
    config_overrides: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Iterator[DevCluster]:
    """Start a ``DevCluster`` for the duration of the block; always stop it, even on failure."""
    require_cluster_tools()
    cluster = DevCluster(
        state_dir, replicas=replicas, slices=slices, config_overrides=config_overrides, progress=_progress, **kwargs
    )
    try:
        run_sync(cluster.start())
    except DevClusterError as exc:
        pytest.fail(f"the dev cluster did not start:\n{exc}", pytrace=False)
    try:
        yield cluster
    finally:
        result = cluster.stop()
        left = {name: what for name, what in result.items() if what.startswith("still running")}
        if left:
            print(f"[dev cluster] processes left behind: {left}", file=sys.stderr)


async def reset_cluster(cluster: DevCluster, *, flush_redis: bool = True) -> None:
    """Undo what a test may have done, so the next one starts from the same state.

    Restarts any process a fault test left stopped, points the webhooks back at the first replica,
    restores the GPU node's slices, deletes every pod (grace 0) and Event in the hub namespace and
    waits until the pods are gone, then empties Redis (the queue is rebuilt from pods, and there
    are none). A controller may still be handling the deletions when Redis is flushed; a test that
    needs a quiet queue waits for it through the API.
    """
    await cluster.revive()
    if cluster.state.webhook_replica != 0 and cluster.replicas:
        await cluster.point_webhooks_at(0)
    if cluster.state.slices != cluster.slices:
        await cluster.set_gpu_slices(cluster.slices)
    await cluster.clean_hub_namespace()
    if flush_redis:
        await cluster.redis_flush()


@asynccontextmanager
async def kube_api(cluster: DevCluster, *, as_service: bool = False) -> AsyncIterator[Any]:
    """A ``kubernetes_asyncio`` ApiClient for the admin (or the service's own identity)."""
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    kubeconfig = cluster.service_kubeconfig if as_service else cluster.kubeconfig
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        yield api


async def _restart_services(cluster: DevCluster) -> None:
    for i in range(cluster.replicas):
        cluster.kill_service(i, signal.SIGTERM)
    for i in range(cluster.replicas):
        await cluster.start_service(i)


@asynccontextmanager
async def reconfigured(cluster: DevCluster, overrides: Mapping[str, Any]) -> AsyncIterator[DevCluster]:
    """The dev cluster's replicas restarted on their config file with ``overrides`` merged in (the
    same ports, tokens and certificates), and on the original again afterwards, whatever happens."""
    path = cluster.state.config
    original = path.read_text()
    path.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(original), overrides), sort_keys=False))
    cluster._service_config = None
    try:
        await _restart_services(cluster)
        yield cluster
    finally:
        path.write_text(original)
        cluster._service_config = None
        await _restart_services(cluster)
