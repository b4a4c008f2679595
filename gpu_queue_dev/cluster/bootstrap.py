"""What the dev cluster does through the API server: create the namespaces, the fake nodes and the
chart's ServiceAccount and RBAC, register the chart's webhooks and prove the API server calls them,
and the node and namespace edits of the fault and reset helpers.

Imported only when the API is used (it loads the Kubernetes client), so ``gpu-queue dev down`` and
``status`` stay quick.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from gpu_queue_dev.cluster import manifests
from gpu_queue_dev.cluster.chart import ServiceChart, object_path
from gpu_queue_dev.cluster.kube import DevKube
from gpu_queue_dev.cluster.procs import POLL_SECONDS, DevClusterError, ManagedProcess
from webhook.config import Config
from webhook.kube import KubeError
from webhook.pods import format_time


async def create_objects(
    kube: DevKube, chart: ServiceChart, namespaces: Iterable[str], nodes: Sequence[dict[str, Any]]
) -> None:
    """Namespaces and nodes, then the chart's ServiceAccount and RBAC (which live in those namespaces)."""
    await asyncio.gather(
        *(kube.create("/api/v1/namespaces", manifests.namespace(ns)) for ns in namespaces),
        *(kube.create("/api/v1/nodes", node) for node in nodes),
    )
    await apply_objects(kube, chart.objects)


async def apply_objects(kube: DevKube, objects: Iterable[Mapping[str, Any]]) -> None:
    await asyncio.gather(*(kube.apply(object_path(obj), dict(obj)) for obj in objects))


async def server_version(kube: DevKube) -> str:
    return str((await kube.get("/version")).get("gitVersion", ""))


async def wait_nodes_ready(kube: DevKube, kwok: ManagedProcess, names: Sequence[str], within: float) -> None:
    async def ready() -> bool:
        for name in names:
            node = await kube.get(f"/api/v1/nodes/{name}")
            conditions = node.get("status", {}).get("conditions") or []
            if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                return False
        return True

    await kwok.wait_until(ready, within, "did not make the fake nodes Ready")


async def probe_webhook(kube: DevKube, cfg: Config, hub_namespace: str, proc: ManagedProcess, within: float) -> None:
    """A dry-run pod create in the hub namespace: the API server must reach the webhook over TLS.

    A denial by the webhook still proves the wiring; only a failed call is an error. The
    configurations are read through an informer, so the first dry-run may not see them yet: retry
    until the webhook is seen to answer.
    """
    profile = next((n for n, p in cfg.profiles.items() if p.pool is None), cfg.default_profile or "")
    pod = manifests.probe_pod(hub_namespace, cfg.pod_selector, cfg.profile_label, profile)
    last = ""

    async def answered() -> bool:
        nonlocal last
        try:
            created = await kube.create(f"/api/v1/namespaces/{hub_namespace}/pods", pod, dry_run=True)
        except KubeError as exc:
            last = exc.reason
            return "failed calling webhook" not in exc.reason
        last = ""
        annotations = created.get("metadata", {}).get("annotations") or {}
        # Until the API server's webhook informer has the configuration, nothing patches.
        containers = created.get("spec", {}).get("containers") or [{}]
        return bool(containers[0].get("resources")) or any(k.startswith(cfg.prefix) for k in annotations)

    try:
        await proc.wait_until(answered, within, "was not called by the API server")
    except DevClusterError as exc:
        answer = last or "(no error, but the pod was not mutated)"
        raise DevClusterError(f"{exc}\nlast API server answer: {answer}") from None


async def set_gpu_slices(kube: DevKube, node: str, n: int, within: float) -> None:
    """Patch the node's GPU capacity and wait until the API server shows it."""
    await kube.merge_patch(f"/api/v1/nodes/{node}/status", manifests.gpu_slices_patch(n))
    deadline = time.monotonic() + within
    while True:
        got = await kube.get(f"/api/v1/nodes/{node}")
        if got.get("status", {}).get("allocatable", {}).get(manifests.GPU_RESOURCE) == str(n):
            return
        if time.monotonic() >= deadline:
            raise DevClusterError(f"node {node} does not show {n} GPU slices")
        await asyncio.sleep(POLL_SECONDS)


async def set_node_ready(kube: DevKube, node: str, ready: bool, within: float) -> None:
    """Mark ``node`` NotReady (Ready False, the not-ready taints) or Ready; wait until the API shows it."""
    path = f"/api/v1/nodes/{node}"
    node_patch, status_patch = manifests.readiness_patches(await kube.get(path), ready, format_time(datetime.now(UTC)))
    await kube.merge_patch(path, node_patch)
    await kube.merge_patch(f"{path}/status", status_patch)
    want = "True" if ready else "False"
    deadline = time.monotonic() + within
    while True:
        got = await kube.get(path)
        conditions = got.get("status", {}).get("conditions") or []
        tainted = any(t.get("key") == manifests.NOT_READY_TAINT for t in got.get("spec", {}).get("taints") or [])
        if any(c.get("type") == "Ready" and c.get("status") == want for c in conditions) and tainted != ready:
            return
        if time.monotonic() >= deadline:
            raise DevClusterError(f"node {node} does not show Ready={want}")
        await asyncio.sleep(POLL_SECONDS)


async def manage_node(kube: DevKube, node: str) -> None:
    """Give ``node`` back to kwok (its annotation), leaving its Ready condition and taints alone."""
    annotation = {"metadata": {"annotations": {manifests.KWOK_ANNOTATION: manifests.KWOK_ANNOTATION_VALUE}}}
    await kube.merge_patch(f"/api/v1/nodes/{node}", annotation)


async def wait_node_lease(kube: DevKube, node: str, within: float) -> None:
    """Until kwok heartbeats ``node`` again (it holds the node's Lease): it runs its pods from then."""
    path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"
    deadline = time.monotonic() + within
    while await kube.get_if_present(path) is None:
        if time.monotonic() >= deadline:
            raise DevClusterError(f"kwok did not take node {node} back (no Lease after {within:.0f} s)")
        await asyncio.sleep(POLL_SECONDS)


async def forget_node_leases(kube: DevKube, nodes: Iterable[str]) -> None:
    """Delete the nodes' Leases (kwok stopped): a kwok that starts finds none and takes the nodes at
    once, instead of after a renew interval (it tries to create a Lease its cache does not show yet)."""
    for node in nodes:
        await kube.delete_if_present(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}")


async def clean_namespace(kube: DevKube, namespace: str, within: float) -> None:
    """Delete every pod (grace 0) and Event in ``namespace`` and wait until the pods are gone."""
    ns_path = f"/api/v1/namespaces/{namespace}"
    await kube.delete(f"{ns_path}/pods", grace_seconds=0)
    await kube.delete(f"{ns_path}/events")
    deadline = time.monotonic() + within
    while True:
        left = [p["metadata"]["name"] for p in (await kube.get(f"{ns_path}/pods")).get("items", [])]
        if not left:
            return
        if time.monotonic() >= deadline:
            raise DevClusterError(f"pods in {namespace} not gone after deletion: {', '.join(left)}")
        await asyncio.sleep(POLL_SECONDS)
