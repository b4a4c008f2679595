"""The kind tier: the seed scenarios and what only a real cluster shows, on a kind cluster where
``tests/e2e/run.sh`` (through ``scripts/kind-up.sh``) installed the image with the chart.

Skipped, with the reason, where Docker or kind is missing or no cluster was prepared (run.sh
exports GPU_QUEUE_E2E_KUBECONFIG). With REQUIRE_KIND set (run.sh sets it, and so does CI) a
reason to skip is an error instead: the tier never passes by not running.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.e2e.kind import RELEASE, PortForward, Release, clean_hub_namespace, set_slices
from tests.helpers.waiting import wait_for
from tests.scenarios import Target
from webhook.kube import Kube, load_client

_HERE = Path(__file__).resolve().parent
GPU_SLICES = 8
# A tiny image every kind node has (the node image preloads it for kubeadm): starts at once.
POD_IMAGE = "registry.k8s.io/pause:3.10"


def e2e_skip_reason() -> str | None:
    """Why the kind tier cannot run here, or None."""
    for tool in ("docker", "kind", "helm", "kubectl"):
        if shutil.which(tool) is None:
            return f"e2e (kind): `{tool}` is not on PATH; run the tier with tests/e2e/run.sh (make e2e)"
    try:
        subprocess.run(["docker", "info"], check=True, capture_output=True, timeout=20)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        return "e2e (kind): no Docker engine answers `docker info` (scripts/docker.sh starts one)"
    if not os.environ.get("GPU_QUEUE_E2E_KUBECONFIG"):
        return "e2e (kind): GPU_QUEUE_E2E_KUBECONFIG is not set; run the tier with tests/e2e/run.sh (make e2e)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if _HERE in Path(str(item.path)).resolve().parents]
    reason = e2e_skip_reason() if mine else None
    if reason and os.environ.get("REQUIRE_KIND"):
        raise pytest.UsageError(f"{reason} (REQUIRE_KIND is set: the kind tier must run)")
    for item in mine:
        item.add_marker(pytest.mark.e2e)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def forward() -> Iterator[PortForward]:
    forward = PortForward(os.environ["GPU_QUEUE_E2E_KUBECONFIG"])
    try:
        yield forward
    finally:
        forward.close()


@pytest.fixture
async def release(forward: PortForward) -> AsyncIterator[Release]:
    """The installed release, both replicas Ready (a scenario before may have replaced one)."""
    kubeconfig = os.environ["GPU_QUEUE_E2E_KUBECONFIG"]
    kube = Kube(await load_client(Path(kubeconfig)))
    release = Release(kube=kube, kubeconfig=kubeconfig, forward=forward)

    async def both_ready() -> bool:
        return await release.ready_replicas() == 2

    try:
        await wait_for(both_ready, 180, "2 of 2 gpu-queue replicas Ready and updated, none terminating")
        yield release
    finally:
        await kube.aclose()


@pytest.fixture
async def target(release: Release, tmp_path: Path) -> AsyncIterator[Target]:
    """The scenarios' view of the kind cluster: the hub namespace emptied, Redis emptied, 8 slices
    on the GPU node, the queue API through a port-forward, its read token and CA from the release's
    Secrets."""
    namespace = os.environ.get("GPU_QUEUE_E2E_NAMESPACE", "jhub")
    node = os.environ["GPU_QUEUE_E2E_GPU_NODE"]
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(await release.secret(f"{RELEASE}-tls", "ca.crt"))
    read_token = (await release.secret(f"{RELEASE}-api", "read-tokens")).split(",")[0]
    kube = release.kube
    await set_slices(kube, node, GPU_SLICES)
    await clean_hub_namespace(kube, namespace)
    await release.flush_redis()
    try:
        yield Target(
            kube=kube,
            namespace=namespace,
            gpu_node=node,
            api_url=await release.api_url(),
            read_token=read_token,
            ca_file=str(ca_file),
            set_slices=lambda n: set_slices(kube, node, n),
            slices=GPU_SLICES,
            image=POD_IMAGE,
        )
    finally:
        await set_slices(kube, node, GPU_SLICES)
        await clean_hub_namespace(kube, namespace)
