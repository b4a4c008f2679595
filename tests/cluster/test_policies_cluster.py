"""Group priorities and limits on the dev cluster: the replicas run with ``groupPriority:
[instructors]`` and ``groupLimits: {course-a: 1}``; pods come from the hub's service account (the
admin impersonates it, as only the hub may say which groups a user is in) with the groups
annotation the hub side writes. Two slices:

- a groups annotation from anyone else is denied by the API server (the validating webhook);
- Ida, an instructor who asked last, is first in line and goes first when a slice frees, never
  preempting anyone; Sam (course-a), first of the students, waits behind her with the reason;
- when the next slice frees, Sam's group already holds its one slice: Gus, behind him, goes
  (no slice left idle) and Sam keeps his place, told why; once his group's slice frees, he goes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gpu_queue_dev.cluster import DevCluster
from gpu_queue_dev.cluster.pki import ADMIN_USER
from gpu_queue_dev.spawnerpods import pod_manifest
from tests.e2e.browser import chromium, new_user
from tests.helpers.cluster import reconfigured
from tests.helpers.real_hub import running_hub
from tests.helpers.waiting import wait_for
from tests.invariants import queue_listing
from tests.scenarios import Target, gated
from webhook.kube import Kube, KubeError, load_client

pytestmark = pytest.mark.timeout(180)
HUB = "system:serviceaccount:jhub:hub"  # the default trusted account for the hub namespace jhub
GROUPS = "gpu-queue.io/groups"
TEMPLATES = Path(__file__).resolve().parents[2] / "webhook" / "hub_templates"
POLICIES = {"pools": {"gpu": {"groupPriority": ["instructors"], "groupLimits": {"course-a": 1}}}}


@pytest.fixture
async def as_hub(clean_cluster: DevCluster, target: Target) -> AsyncIterator[Kube]:
    """The replicas with the policies, two slices, and a client acting as the hub's account."""
    await clean_cluster.set_gpu_slices(2)
    async with reconfigured(clean_cluster, POLICIES):
        client = await load_client(clean_cluster.kubeconfig)
        client.set_default_header("Impersonate-User", HUB)
        client.set_default_header("Impersonate-Group", "system:masters")  # the dev cluster has no hub RBAC
        kube = Kube(client)
        try:
            yield kube
        finally:
            await kube.aclose()


async def spawn(kube: Kube, target: Target, user: str, *groups: str) -> str:
    pod = await pod_manifest(user, "gpu-enabled", namespace=target.namespace)
    if groups:
        pod["metadata"].setdefault("annotations", {})[GROUPS] = json.dumps(sorted(groups))
    created: dict[str, Any] = await kube.request("POST", f"/api/v1/namespaces/{target.namespace}/pods", body=pod)
    return str(created["metadata"]["name"])


async def holding(target: Target, name: str) -> bool:
    pod = await target.pod(name)
    return pod is not None and not gated(pod)


async def test_instructors_go_first_and_a_group_at_its_limit_waits_without_leaving_a_slice_idle(
    as_hub: Kube, target: Target
) -> None:
    with pytest.raises(KubeError) as forged:
        await spawn(target.kube, target, "mallory", "instructors")  # the admin's own identity
    assert forged.value.status in (400, 403) and "only the hub" in str(forged.value), str(forged.value)
    assert await target.pod("jupyter-mallory") is None

    course = await spawn(as_hub, target, "cora", "course-a")
    other = await spawn(as_hub, target, "otto")
    await wait_for(lambda: holding(target, course), 20, "cora (course-a) to hold a slice")
    await wait_for(lambda: holding(target, other), 20, "otto to hold the other")
    sam = await spawn(as_hub, target, "sam", "course-a", "students")
    gus = await spawn(as_hub, target, "gus")
    ida = await spawn(as_hub, target, "ida", "instructors")

    async def listed() -> list[dict[str, Any]] | None:
        entries: list[dict[str, Any]] = (await queue_listing(target, "gpu"))["entries"]
        return entries if len(entries) == 3 else None

    entries = await wait_for(listed, 20, "the three of them in the queue")
    assert [e["name"] for e in entries] == [ida, sam, gus], "the instructor first, then arrival order"
    assert entries[0]["priority"] == {"policy": "groupPriority", "rank": 0, "group": "instructors", "ahead": {}}
    assert entries[1]["priority"]["ahead"] == {"instructors": 1}
    assert entries[1]["heldBack"] == {"policy": "groupLimits", "group": "course-a", "limit": 1, "inUse": 1}
    sam_says = await target.position(sam)
    assert sam_says["position"] == 2 and sam_says["heldBack"]["group"] == "course-a"

    await target.logout(other)
    await wait_for(lambda: holding(target, ida), 15, "ida, the instructor, to get the freed slice")
    assert gated(await target.pod(sam) or {}) and gated(await target.pod(gus) or {}), "one slice, one grant"

    await target.logout(ida)
    await wait_for(lambda: holding(target, gus), 15, "gus to get the slice sam's group may not take")
    assert gated(await target.pod(sam) or {}), "course-a holds its limit: sam waits"

    async def told() -> list[str]:
        return [m for m in await target.events(sam) if "your group course-a holds 1 of its 1 slices" in m]

    await wait_for(told, 15, "sam to be told why he waits")
    await target.logout(course)
    await wait_for(lambda: holding(target, sam), 15, "sam to go once his group's slice is free")


async def test_the_waiting_room_says_who_went_ahead_by_priority_and_which_limit_holds_a_user_back(
    clean_cluster: DevCluster, target: Target, tmp_path: Path
) -> None:
    """Real hub, real groups, Chromium. Two slices: Cora (course-a) and Hana hold them. Sam
    (course-a) waits 1st and his page says his group holds its limit; Ida (instructors) asks after
    him and goes ahead: his page says so, live, and he is 2nd."""
    await clean_cluster.set_gpu_slices(2)
    # The dev cluster's hub creates pods as the cluster admin: that is the account to trust here.
    trusted = {**POLICIES, "policy": {"hubServiceAccounts": [ADMIN_USER]}}
    async with (
        reconfigured(clean_cluster, trusted),
        running_hub(clean_cluster, tmp_path / "hub", template_paths=[TEMPLATES]) as hub,
        hub.api() as api,
        chromium() as browser,
    ):
        for user in ("cora", "sam", "ida"):
            async with api.post(hub.url(f"/hub/api/users/{user}")) as response:
                assert response.status in (201, 409), await response.text()
        for group, users in (("course-a", ["cora", "sam"]), ("instructors", ["ida"])):
            async with api.post(hub.url(f"/hub/api/groups/{group}"), json={"users": users}) as response:
                assert response.status in (201, 409), await response.text()
        async with api.post(hub.url("/hub/api/users/cora/server"), json={"profile": "gpu-enabled"}) as response:
            assert response.status in (201, 202), await response.text()
        await target.spawn("hana")
        await wait_for(lambda: holding(target, "jupyter-cora"), 30, "cora (course-a, started by the hub) to hold")
        await wait_for(lambda: holding(target, "jupyter-hana"), 30, "hana to hold the other slice")
        cora = await target.pod("jupyter-cora")
        assert cora is not None and json.loads(cora["metadata"]["annotations"][GROUPS]) == ["course-a"]

        sam = await new_user(browser, "sam", hub.base_url, tmp_path)
        await sam.login()
        await sam.open_options()
        await sam.start("gpu-enabled")
        await sam.shows("#gpu-queue-place", "1st in line")
        held = await sam.shows("#gpu-queue-policy", "Your group course-a holds 1 of its 1 slices")
        assert "the people behind you may go first" in held, held

        async with api.post(hub.url("/hub/api/users/ida/server"), json={"profile": "gpu-enabled"}) as response:
            assert response.status in (201, 202), await response.text()
        await sam.shows("#gpu-queue-place", "2nd in line")
        why = await sam.shows("#gpu-queue-policy", "Ahead of you by priority: 1 in instructors")
        assert "Someone in instructors joined the queue ahead of you" in why, why
        await sam.shot("waiting-room-06-priority")
