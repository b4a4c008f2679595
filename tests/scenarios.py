"""The seed scenarios, written once against a ``Target`` and run on two kinds of cluster:
the local control plane (``tests/cluster``) and kind (``tests/e2e``).

A Target is an admin connection to a cluster where gpu-queue runs: the hub namespace, the fake GPU
node, the queue API. Pods are built by a real KubeSpawner (``gpu_queue_dev.spawnerpods``) and created the
way the hub creates them. Every wait is a poll with a deadline; every assertion names what broke.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp

from gpu_queue_dev.spawnerpods import pod_manifest
from tests.helpers.waiting import wait_for
from webhook.kube import Kube, KubeError, pod_path
from webhook.pods import parse_time

GATE = "gpu-queue.io/slice"
REQUESTED_AT = "gpu-queue.io/requested-at"
ADMITTED_AT = "gpu-queue.io/admitted-at"
PROFILE_LABEL = "gpu-queue.io/profile"
# A profile that asks for two slices; the tiers' service config adds it (see DOUBLE_PROFILE_CONFIG).
DOUBLE_PROFILE = "gpu-double"
DOUBLE_PROFILE_CONFIG = {
    DOUBLE_PROFILE: {
        "displayName": "Two GPU slices",
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "2"},
        "pool": "gpu",
    }
}


@dataclass
class Target:
    """An admin's view of one cluster running gpu-queue."""

    kube: Kube
    namespace: str
    gpu_node: str
    api_url: str
    read_token: str
    ca_file: str
    set_slices: Callable[[int], Awaitable[None]]
    slices: int = 8
    # Where a real kubelet runs the pods (kind), a tiny image that starts at once.
    image: str | None = None
    # The CPU-only profile's requests as the tier configures them (kind shrinks the seed's requests
    # so that eight GPU users fit on a 2-core node; the limits stay the seed's).
    cpu_requests: dict[str, str] = field(default_factory=lambda: {"cpu": "500m", "memory": "1Gi"})
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------------------- pods

    async def spawn(self, user: str, profile: str | None = "gpu-enabled", server: str = "") -> dict[str, Any]:
        """Create the pod a KubeSpawner hub would create for ``user``'s ``server``."""
        extra = {"image": self.image} if self.image else None
        pod = await pod_manifest(user, profile, server, namespace=self.namespace, extra=extra)
        created: dict[str, Any] = await self.kube.request("POST", f"/api/v1/namespaces/{self.namespace}/pods", body=pod)
        return created

    async def spawn_double(self, user: str) -> dict[str, Any]:
        """A pod of a two-slice profile (``gpu-double``: the config must have it), as a hub with a
        profile that sets ``extra_resource_limits: {nvidia.com/gpu: "2"}`` builds it."""
        pod = await pod_manifest(
            user, "gpu-enabled", namespace=self.namespace, extra={"image": self.image} if self.image else None
        )
        pod["metadata"]["labels"][PROFILE_LABEL] = DOUBLE_PROFILE
        for container in pod["spec"]["containers"]:
            container.setdefault("resources", {}).setdefault("limits", {})["nvidia.com/gpu"] = "2"
        created: dict[str, Any] = await self.kube.request("POST", f"/api/v1/namespaces/{self.namespace}/pods", body=pod)
        return created

    async def logout(self, name: str) -> None:
        """What the hub does on logout or cull: delete the pod (grace 0 so kwok needs no kubelet)."""
        await self.kube.delete_if_present(pod_path(self.namespace, name), grace_seconds=0)

    async def pods(self) -> dict[str, dict[str, Any]]:
        listing = await self.kube.request(
            "GET", f"/api/v1/namespaces/{self.namespace}/pods", query={"labelSelector": "component=singleuser-server"}
        )
        return {
            p["metadata"]["name"]: p for p in listing.get("items") or [] if not p["metadata"].get("deletionTimestamp")
        }

    async def pod(self, name: str) -> dict[str, Any] | None:
        return await self.kube.get_if_present(pod_path(self.namespace, name))

    async def events(self, name: str) -> list[str]:
        listing = await self.kube.request(
            "GET",
            f"/api/v1/namespaces/{self.namespace}/events",
            query={"fieldSelector": f"involvedObject.name={name}"},
        )
        items = sorted(listing.get("items") or [], key=lambda e: (e.get("lastTimestamp") or "", e["metadata"]["name"]))
        return [str(e.get("message", "")) for e in items if (e.get("source") or {}).get("component") == "gpu-queue"]

    async def position(self, name: str) -> dict[str, Any]:
        """The queue API's answer for a pod (what the hub polls)."""
        context = ssl.create_default_context(cafile=self.ca_file)
        headers = {"Authorization": f"Bearer {self.read_token}"}
        url = f"{self.api_url}/api/v1/queue/{self.namespace}/{name}"
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(url, headers=headers, ssl=context) as response,
        ):
            data: dict[str, Any] = await response.json()
            data["_status"] = response.status
            return data


def gated(pod: dict[str, Any]) -> bool:
    return any(g.get("name") == GATE for g in (pod.get("spec") or {}).get("schedulingGates") or [])


def requested_at(pod: dict[str, Any]) -> datetime:
    stamp = parse_time(pod["metadata"]["annotations"][REQUESTED_AT])
    assert stamp is not None
    return stamp


def admitted_at(pod: dict[str, Any]) -> datetime | None:
    text = (pod["metadata"].get("annotations") or {}).get(ADMITTED_AT)
    return parse_time(text) if text else None


def running(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running"


async def holders_and_queue(target: Target) -> tuple[list[str], list[str]]:
    """(ungated GPU pods, gated GPU pods in requested-at order)."""
    pods = await target.pods()
    gpu = [p for p in pods.values() if (p["metadata"].get("annotations") or {}).get("gpu-queue.io/pool")]
    holding = sorted(p["metadata"]["name"] for p in gpu if not gated(p))
    waiting = [
        p["metadata"]["name"]
        for p in sorted((p for p in gpu if gated(p)), key=lambda p: (requested_at(p), p["metadata"]["name"]))
    ]
    return holding, waiting


async def fill_pool(target: Target, count: int, prefix: str = "user") -> list[str]:
    """``count`` GPU users start; wait until all of them hold a slice and run."""
    names = [(await target.spawn(f"{prefix}{i}"))["metadata"]["name"] for i in range(count)]

    async def all_running() -> bool:
        pods = await target.pods()
        return all(n in pods and not gated(pods[n]) and running(pods[n]) for n in names)

    await wait_for(all_running, 60, f"{count} GPU pods to be granted and Running")
    return names


# ------------------------------------------------------------------------------------ scenarios


async def seed_story(target: Target) -> dict[str, Any]:
    """Eight users take the eight slices, the ninth waits at position 1 and is told so, a CPU user
    starts at once, one GPU user logs out, and the ninth gets the slice within a second."""
    first = await fill_pool(target, target.slices)
    ninth = (await target.spawn("user-nine"))["metadata"]["name"]
    pod = await wait_for(lambda: target.pod(ninth), 10, "the ninth pod")
    assert gated(pod), "the ninth GPU pod must wait for a slice"

    async def told_position_one() -> list[str] | None:
        events = await target.events(ninth)
        return events if any("Waiting for a GPU slice: position 1 of 1" in e for e in events) else None

    events = await wait_for(told_position_one, 15, "the 'position 1 of 1' Event on the ninth pod")
    answer = await wait_for(
        lambda: _queued_at(target, ninth, 1), 15, "the queue API to report the ninth pod at position 1"
    )
    assert answer["queueLength"] == 1 and answer["capacity"] == target.slices and answer["inUse"] == target.slices

    cpu = (await target.spawn("cpu-user", "cpu-only"))["metadata"]["name"]
    cpu_pod = await wait_for(lambda: _running(target, cpu), 20, "the CPU-only pod to run while the GPU pool is full")
    assert not gated(cpu_pod)

    await target.logout(first[3])
    left = time.monotonic()
    granted = await wait_for(lambda: _ungated(target, ninth), 5, "the ninth pod to get the freed slice")
    latency = time.monotonic() - left
    assert latency < 1.0, f"the grant followed the logout after {latency:.3f}s (want < 1 s)"
    await wait_for(lambda: _running(target, ninth), 20, "the ninth pod to run")

    async def told_granted() -> bool:
        return any(e.startswith("GPU slice granted after") for e in await target.events(ninth))

    await wait_for(told_granted, 10, "the 'GPU slice granted' Event")
    assert admitted_at(granted) is not None
    return {"grant_latency_seconds": round(latency, 3), "events": events}


async def cpu_never_gated(target: Target) -> None:
    """CPU pods are never gated and get the CPU profile's resources while the GPU pool is full."""
    await fill_pool(target, target.slices)
    await target.spawn("late-gpu")
    names = [(await target.spawn(f"cpu{i}", "cpu-only"))["metadata"]["name"] for i in range(3)]
    for name in names:

        async def runs(n: str = name) -> dict[str, Any] | None:
            return await _running(target, n)

        pod = await wait_for(runs, 20, f"CPU pod {name} to run")
        assert not gated(pod)
        notebook = next(c for c in pod["spec"]["containers"] if c["name"] == "notebook")
        from webhook.quantity import parse_quantity

        limits = {k: parse_quantity(v) for k, v in notebook["resources"]["limits"].items()}
        requests = {k: parse_quantity(v) for k, v in notebook["resources"]["requests"].items()}
        assert limits == {"cpu": 2, "memory": 4 * 1024**3}, limits
        assert requests == {k: parse_quantity(v) for k, v in target.cpu_requests.items()}, requests


async def burst_in_order(target: Target, count: int = 30) -> dict[str, Any]:
    """A burst of GPU spawns: the first ``slices`` by requested-at hold, the rest queue at 1..n in
    requested-at order, and as holders leave, grants follow that order exactly."""
    names = [f"burst{i:02d}" for i in range(count)]
    await asyncio.gather(*(target.spawn(n) for n in names))

    async def settled() -> tuple[list[str], list[str]] | None:
        holding, waiting = await holders_and_queue(target)
        return (holding, waiting) if len(holding) == target.slices and len(holding) + len(waiting) == count else None

    holding, waiting = await wait_for(settled, 30, f"{target.slices} holders and {count - target.slices} queued")
    pods = await target.pods()
    order = sorted(pods, key=lambda n: (requested_at(pods[n]), n))
    assert sorted(holding) == sorted(order[: target.slices]), "the first arrivals must hold the slices"
    assert waiting == order[target.slices :]

    async def positions_contiguous() -> bool:
        answers = await asyncio.gather(*(target.position(n) for n in waiting))
        return [a.get("position") for a in answers] == list(range(1, len(waiting) + 1))

    await wait_for(positions_contiguous, 15, "API positions 1..n in requested-at order")

    for holder in holding:
        await target.logout(holder)
    expected = waiting[: target.slices]

    async def next_granted() -> tuple[list[str], list[str]] | None:
        now_holding, now_waiting = await holders_and_queue(target)
        return (now_holding, now_waiting) if sorted(now_holding) == sorted(expected) else None

    _, still_waiting = await wait_for(next_granted, 15, f"exactly the next {len(expected)} in order to be granted")
    assert still_waiting == waiting[target.slices :]
    pods = await target.pods()
    stamps = [admitted_at(pods[n]) for n in expected]
    assert all(s is not None for s in stamps)
    # I2: along the queue order, grant times never go backwards.
    assert all(a <= b for a, b in itertools.pairwise(stamps)), list(zip(expected, stamps, strict=True))  # type: ignore[operator]
    granted_order = expected
    return {"granted_in_order": granted_order}


async def capacity_follows_the_node(target: Target) -> None:
    """8 -> 16 slices grants the next 8 in order at once; 16 -> 8 evicts nobody and grants nothing
    until usage is below 8."""
    await fill_pool(target, target.slices)
    late = [f"late{i:02d}" for i in range(10)]
    for name in late:
        await target.spawn(name)
    _, waiting = await wait_for(lambda: _queue_of(target, 10), 20, "10 queued pods")
    await target.set_slices(target.slices * 2)

    async def next_eight() -> bool:
        holding, queued = await holders_and_queue(target)
        return len(holding) == target.slices * 2 and queued == waiting[target.slices :]

    await wait_for(next_eight, 15, "the next 8 in order to be granted after 8 -> 16")
    holding, _ = await holders_and_queue(target)
    await target.set_slices(target.slices)
    await target.logout(holding[0])
    # Nothing may be granted while 15 of 8 slices are in use: watch for a while with a deadline.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        now_holding, queued = await holders_and_queue(target)
        assert len(now_holding) == target.slices * 2 - 1, "16 -> 8 must evict nobody"
        assert queued == waiting[target.slices :], "nothing may be granted above capacity"
        await asyncio.sleep(0.2)


async def cancel_keeps_place(target: Target) -> None:
    """A queued user cancels: everyone behind moves up; the same user returning within
    keepPlaceSeconds gets the old place back."""
    await fill_pool(target, target.slices)
    queued = [(await target.spawn(u))["metadata"]["name"] for u in ("qa", "qb", "qc")]
    await wait_for(lambda: _queued_at(target, queued[2], 3), 15, "qc at position 3")
    await target.logout(queued[1])
    await wait_for(lambda: _queued_at(target, queued[2], 2), 15, "qc to move up to position 2")
    back = (await target.spawn("qb"))["metadata"]["name"]
    await wait_for(lambda: _queued_at(target, back, 2), 15, "qb back at its old position 2")
    await wait_for(lambda: _queued_at(target, queued[2], 3), 15, "qc back at position 3")


async def user_cannot_remove_the_gate(target: Target, user_kube: Kube) -> str:
    """Patching the gate away as a user (not the service account) is denied with a clear message."""
    await fill_pool(target, target.slices)
    name = (await target.spawn("impatient"))["metadata"]["name"]
    try:
        await user_kube.patch_json(
            pod_path(target.namespace, name), [{"op": "remove", "path": "/spec/schedulingGates/0"}]
        )
    except KubeError as exc:
        assert exc.status in (400, 403), exc
        assert "only gpu-queue" in str(exc.reason), exc.reason
        pod = await target.pod(name)
        assert pod is not None and gated(pod)
        return str(exc.reason)
    raise AssertionError("a user removed the queue gate")


# ------------------------------------------------------------------------------------ helpers


async def _queued_at(target: Target, name: str, position: int) -> dict[str, Any] | None:
    answer = await target.position(name)
    return answer if answer.get("state") == "queued" and answer.get("position") == position else None


async def _running(target: Target, name: str) -> dict[str, Any] | None:
    pod = await target.pod(name)
    return pod if pod is not None and running(pod) else None


async def _ungated(target: Target, name: str) -> dict[str, Any] | None:
    pod = await target.pod(name)
    return pod if pod is not None and not gated(pod) else None


async def _queue_of(target: Target, length: int) -> tuple[list[str], list[str]] | None:
    holding, waiting = await holders_and_queue(target)
    return (holding, waiting) if len(waiting) == length else None


async def two_slice_users_take_two_and_keep_their_turn(
    target: Target, watch_use: Callable[[], Awaitable[int]], raise_capacity: Callable[[int], Awaitable[None]]
) -> dict[str, Any]:
    """Singles and doubles mixed: a double takes two slices; a double at the head blocks a single
    behind it until two are free (strict FIFO); one more slice on the node lets the single in.
    ``watch_use`` is what the service's API reports in use; the caller's checker watches I1."""
    singles = await fill_pool(target, target.slices - 2, prefix="single")
    first = (await target.spawn_double("double-a"))["metadata"]["name"]
    await wait_for(lambda: _running(target, first), 30, "the first double to take the last two slices")
    second = (await target.spawn_double("double-b"))["metadata"]["name"]
    late = (await target.spawn("single-late"))["metadata"]["name"]
    await wait_for(lambda: _queued_at(target, second, 1), 15, "the second double at position 1")
    await wait_for(lambda: _queued_at(target, late, 2), 15, "the late single at position 2")

    await target.logout(singles[0])
    await wait_until_value(watch_use, target.slices - 1, 15, "one slice free")
    # One slice is free: the single behind must not overtake the double at the head. Watch a while.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        pods = await target.pods()
        assert gated(pods[late]), "the single overtook the two-slice head with one slice free"
        assert gated(pods[second]), "the two-slice head was granted with one slice free"
        await asyncio.sleep(0.2)

    await target.logout(singles[1])
    await wait_for(lambda: _ungated(target, second), 10, "the double to be granted once two slices are free")
    assert gated((await target.pods())[late]), "the single was granted too: 10 of 8 slices in use"
    await wait_until_value(watch_use, target.slices, 15, "all slices in use")

    await raise_capacity(target.slices + 1)
    await wait_for(lambda: _ungated(target, late), 10, "the single to get the new slice")
    return {"doubles": [first, second], "single": late}


async def wait_until_value(read: Callable[[], Awaitable[int]], want: int, within: float, what: str) -> None:
    async def equal() -> bool:
        return await read() == want

    await wait_for(equal, within, f"{what} ({want})")
