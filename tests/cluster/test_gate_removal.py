"""The grant's write (``webhook.controller.gate.ungate``) against the real API server, with the
service's own identity: one PATCH built from the watch cache's view when that view is current; a
read and a PATCH when it is stale; only our gate removed, ``admitted-at`` stamped, never a pod being
deleted. The pool has no slices, so the controller grants none of these pods itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from gpu_queue_dev.cluster import DevCluster
from gpu_queue_dev.spawnerpods import pod_manifest
from tests.helpers.waiting import wait_for
from webhook.cluster_view import PodView, pod_view
from webhook.controller.gate import ungate
from webhook.kube import Kube, Obj, load_client, pod_path

pytestmark = pytest.mark.timeout(120)
GATE = "gpu-queue.io/slice"


class CountingKube(Kube):
    """The service's client, noting each request's method."""

    calls: list[str]

    async def request(self, method: str, path: str, **kwargs: Any) -> Obj:
        self.calls.append(method)
        return await super().request(method, path, **kwargs)


@pytest.fixture
async def no_slices(clean_cluster: DevCluster) -> AsyncIterator[DevCluster]:
    await clean_cluster.set_gpu_slices(0)
    yield clean_cluster  # clean_cluster puts the slices back for the next test


@pytest.fixture
async def service(no_slices: DevCluster) -> AsyncIterator[CountingKube]:
    kube = CountingKube(await load_client(no_slices.service_kubeconfig))
    kube.calls = []
    try:
        yield kube
    finally:
        await kube.aclose()


async def _queued(c: DevCluster, admin: Kube, user: str, **metadata_or_spec: dict[str, Any]) -> PodView:
    """A GPU pod (with more ``metadata``/``spec`` fields) as the watch cache would hold it: gated by
    us, at its current resourceVersion."""
    manifest = await pod_manifest(user, namespace=c.hub_namespace)
    for part, fields in metadata_or_spec.items():
        manifest[part].update(fields)
    pod = await admin.request("POST", f"/api/v1/namespaces/{c.hub_namespace}/pods", body=manifest)
    view = pod_view(pod, c.service_config)
    assert view is not None and view.queued and view.gate_index is not None
    return view


async def test_a_current_view_is_granted_with_one_patch_removing_only_our_gate(
    no_slices: DevCluster, service: CountingKube
) -> None:
    c = no_slices
    admin = Kube(await load_client(c.kubeconfig))
    try:
        view = await _queued(c, admin, "fresh", spec={"schedulingGates": [{"name": "example.com/other"}]})
        assert view.gate_index == 1, "our gate is appended after the hub's own"
        granted = await ungate(service, c.service_config, view, datetime.now(UTC))
        assert service.calls == ["PATCH"], "a current view needs no read before the write"
        assert granted is not None and not granted.gated and granted.granted_at is not None
        pod = await admin.request("GET", pod_path(view.namespace, view.name))
        assert pod["spec"]["schedulingGates"] == [{"name": "example.com/other"}]
        assert "gpu-queue.io/admitted-at" in pod["metadata"]["annotations"]
    finally:
        await admin.aclose()


async def test_a_stale_view_reads_the_pod_and_keeps_what_changed(no_slices: DevCluster, service: CountingKube) -> None:
    c = no_slices
    admin = Kube(await load_client(c.kubeconfig))
    try:
        view = await _queued(c, admin, "stale")
        path = pod_path(view.namespace, view.name)
        await admin.patch_json(path, [{"op": "add", "path": "/metadata/labels/edited", "value": "later"}])
        granted = await ungate(service, c.service_config, view, datetime.now(UTC))
        assert service.calls == ["PATCH", "GET", "PATCH"], "the stale write fails its test op, then reads"
        assert granted is not None and not granted.gated
        pod = await admin.request("GET", path)
        assert not pod["spec"].get("schedulingGates")
        assert pod["metadata"]["labels"]["edited"] == "later"
    finally:
        await admin.aclose()


async def test_a_pod_being_deleted_is_not_granted(no_slices: DevCluster, service: CountingKube) -> None:
    c = no_slices
    admin = Kube(await load_client(c.kubeconfig))
    try:
        view = await _queued(c, admin, "leaving", metadata={"finalizers": ["example.com/hold"]})
        path = pod_path(view.namespace, view.name)
        await admin.delete(path, grace_seconds=0)

        async def deleting() -> bool:
            return (await admin.request("GET", path))["metadata"].get("deletionTimestamp") is not None

        await wait_for(deleting, 10, "the pod marked for deletion")
        assert await ungate(service, c.service_config, view, datetime.now(UTC)) is None
        assert service.calls == ["PATCH", "GET"], "the stale write fails; the read shows the deletion"
        pod = await admin.request("GET", path)
        assert {"name": GATE} in pod["spec"]["schedulingGates"]
        await admin.patch_json(path, [{"op": "remove", "path": "/metadata/finalizers"}])
    finally:
        await admin.aclose()
