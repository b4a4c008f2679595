"""Fixtures for the cluster tier: one real local control plane per session (``dev_cluster``), and
``clean_cluster`` to give each test the same starting state.

The whole tier skips with the missing binaries named (build them with ``tools/build.sh``) unless
REQUIRE_CLUSTER_TOOLS is set, as in CI, where a missing binary fails instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gpu_queue_dev.cluster import DevCluster
from tests.helpers.cluster import cluster_session, reset_cluster
from tests.scenarios import DOUBLE_PROFILE_CONFIG, Target
from webhook.kube import Kube, load_client

_HERE = Path(__file__).resolve().parent
STUCK_AFTER_SECONDS = 12


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this directory ``cluster`` (``-m 'not cluster'`` deselects the tier)."""
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def dev_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """The session's dev cluster: 2 replicas, 8 slices, webhooks on replica 0."""
    # kwok readies a pod within a second, so a short admit timeout only bites the stuck-head test.
    overrides = {"pools": {"gpu": {"admitTimeoutSeconds": STUCK_AFTER_SECONDS}}, "profiles": DOUBLE_PROFILE_CONFIG}
    with cluster_session(tmp_path_factory.mktemp("devcluster"), config_overrides=overrides) as cluster:
        yield cluster


@pytest.fixture
async def clean_cluster(dev_cluster: DevCluster) -> AsyncIterator[DevCluster]:
    """``dev_cluster`` after ``reset_cluster``: no pods or Events in the hub namespace, an empty
    Redis, every process running, the original slice count and webhook target."""
    await reset_cluster(dev_cluster)
    yield dev_cluster


@pytest.fixture
async def target(clean_cluster: DevCluster) -> AsyncIterator[Target]:
    """The scenarios' view of the clean dev cluster: an admin client, the hub namespace, the API."""
    kube = Kube(await load_client(clean_cluster.kubeconfig))
    try:
        yield Target(
            kube=kube,
            namespace=clean_cluster.hub_namespace,
            gpu_node=clean_cluster.gpu_node,
            api_url=clean_cluster.api_url(0),
            read_token=clean_cluster.read_token,
            ca_file=str(clean_cluster.ca_file),
            set_slices=clean_cluster.set_gpu_slices,
            slices=clean_cluster.slices,
        )
    finally:
        await kube.aclose()
