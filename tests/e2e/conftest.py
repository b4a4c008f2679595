"""The kind tier: the same scenarios as ``tests/cluster``, on a kind cluster with the image and the
chart installed by ``tests/e2e/run.sh``. Skipped, with the reason, where Docker or kind is missing
or the script has not prepared a cluster (it exports GPU_QUEUE_E2E_KUBECONFIG and friends)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator

import pytest

from tests.scenarios import Target
from webhook.kube import Kube, load_client

E2E_ENV = ("GPU_QUEUE_E2E_KUBECONFIG", "GPU_QUEUE_E2E_API_URL", "GPU_QUEUE_E2E_TOKEN", "GPU_QUEUE_E2E_CA")


def e2e_skip_reason() -> str | None:
    """Why the kind tier cannot run here, or None."""
    for tool in ("docker", "kind", "helm", "kubectl"):
        if shutil.which(tool) is None:
            return f"e2e (kind): `{tool}` is not installed; run tests/e2e/run.sh where Docker and kind exist"
    try:
        subprocess.run(["docker", "info"], check=True, capture_output=True, timeout=20)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        return "e2e (kind): no Docker engine answers `docker info`; kind needs one"
    missing = [name for name in E2E_ENV if not os.environ.get(name)]
    if missing:
        names = ", ".join(missing)
        return f"e2e (kind): {names} not set; run the tier through tests/e2e/run.sh, which creates the cluster"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = e2e_skip_reason()
    for item in items:
        if "tests/e2e" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.e2e)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


async def _set_slices(kube: Kube, node: str, slices: int) -> None:
    """Advertise a fake ``nvidia.com/gpu`` count on the node (status patch), as the device plugin would."""
    ops = [
        {"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": str(slices)},
        {"op": "add", "path": "/status/allocatable/nvidia.com~1gpu", "value": str(slices)},
    ]
    await kube.patch_json(f"/api/v1/nodes/{node}/status", ops)


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    from pathlib import Path

    kube = Kube(await load_client(Path(os.environ["GPU_QUEUE_E2E_KUBECONFIG"])))
    namespace = os.environ.get("GPU_QUEUE_E2E_NAMESPACE", "jhub")
    node = os.environ.get("GPU_QUEUE_E2E_GPU_NODE", "gpu-queue-e2e-worker")
    await _set_slices(kube, node, 8)
    await _clean(kube, namespace)
    try:
        yield Target(
            kube=kube,
            namespace=namespace,
            gpu_node=node,
            api_url=os.environ["GPU_QUEUE_E2E_API_URL"],
            read_token=os.environ["GPU_QUEUE_E2E_TOKEN"],
            ca_file=os.environ["GPU_QUEUE_E2E_CA"],
            set_slices=lambda n: _set_slices(kube, node, n),
            slices=8,
            image="registry.k8s.io/pause:3.10",
        )
    finally:
        await _clean(kube, namespace)
        await kube.aclose()


async def _clean(kube: Kube, namespace: str) -> None:
    from tests.scenarios import wait_for

    await kube.request(
        "DELETE",
        f"/api/v1/namespaces/{namespace}/pods",
        query={"labelSelector": "component=singleuser-server", "gracePeriodSeconds": 0},
    )

    async def empty() -> bool:
        listing = await kube.request(
            "GET", f"/api/v1/namespaces/{namespace}/pods", query={"labelSelector": "component=singleuser-server"}
        )
        return not listing.get("items")

    await wait_for(empty, 60, "the hub namespace to be empty")
