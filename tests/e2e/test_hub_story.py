"""The seed story with a real JupyterHub and real JupyterLab, in a real browser, on kind.

The hub is deployed the way zero-to-jupyterhub deploys it (``scripts/kind-hub.sh``: hub and proxy
Deployments, the hub's own ServiceAccount and RBAC), configured from ``docs/z2jh-values.yaml`` (the
settings the docs give admins) with a small kind overlay (``tools/kind-hub/values.yaml``). Ten
people log in on the real login page, pick a profile on KubeSpawner's options page and click
Start: eight GPU users and a CPU user reach JupyterLab and run ``1+1``; Iris, the ninth GPU user,
sees her place and a bar that does not move; Alice clicks "Stop My Server" and Iris's page goes
into JupyterLab by itself; Alice queues again, and when Bob's idle server is culled (the idle
culler at a test-sized timeout) Alice gets the slice. Screenshots of every step are kept (in
``$GPU_QUEUE_E2E_ARTIFACTS/hub-story``) and the times the users waited go into the tier's report.

The eight GPU users start one after the other (each once the one before has its pod running):
eight JupyterLab servers starting at once on a 2-core node took longer than the hub's http_timeout
(30 s) to answer and the hub stopped three of them, which says nothing about the queue; the kind
overlay also gives KubeSpawner an http_timeout of 90 s for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser

from tests.e2e.browser import User, chromium, new_user
from tests.e2e.kind import Release, clean_hub_namespace, report, set_slices
from tests.e2e.kind_hub import HUB_NAMESPACE, installed_hub, keep_evidence, shots_folder
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(1500)

GPU_USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
NINTH, CPU_USER, ADMIN = "iris", "judy", "admin"
CULL_TIMEOUT, CULL_EVERY = 60, 10
# The server's memory limit as its kernel sees it: cgroup v2's memory.max, or v1's limit file.
MEMORY_LIMIT = (
    "import pathlib; next(int(p.read_text()) for p in map(pathlib.Path, ['/sys/fs/cgroup/memory.max', "
    "'/sys/fs/cgroup/memory/memory.limit_in_bytes']) if p.exists())"
)


@pytest.fixture(scope="module")
def hub_url() -> Iterator[str]:
    """The kind hub with the hub's stock pages (``STOCK_PAGES=1``): the story shows that
    ``QueueAwareKubeSpawner`` needs no template of its own (the waiting room's tests use them)."""
    with installed_hub(CULL_TIMEOUT=str(CULL_TIMEOUT), CULL_EVERY=str(CULL_EVERY), STOCK_PAGES="1") as url:
        yield url


@pytest.fixture
def shots() -> Path:
    return shots_folder("hub-story")


@contextlib.asynccontextmanager
async def keep_active(admin: User, idle: set[str]) -> AsyncIterator[None]:
    """The users at work: every 10 s their running servers report activity to the hub, as
    jupyterhub-singleuser does for a user who is using it; the names in ``idle`` report none."""

    errors: list[str] = []

    async def loop() -> None:
        while True:
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            try:
                for user in await admin.api("GET", "/users?state=ready"):
                    if user["name"] not in idle and "" in (user.get("servers") or {}):
                        body = {"last_activity": now, "servers": {"": {"last_activity": now}}}
                        await admin.api("POST", f"/users/{user['name']}/activity", body)
            except Exception as exc:  # a server stopped in the meantime: fine once, not always
                errors.append(repr(exc))
            await asyncio.sleep(10)  # the pace of activity reports, not a wait for a condition

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(errors) <= 3, f"activity reports failed: {errors[-3:]}"


async def pod_of(release: Release, user: str) -> dict[str, Any] | None:
    return await release.kube.get_if_present(f"/api/v1/namespaces/{HUB_NAMESPACE}/pods/jupyter-{user}")


async def test_the_seed_story_in_a_browser(hub_url: str, release: Release, shots: Path) -> None:
    figures: dict[str, Any] = {}
    await set_slices(release.kube, os.environ["GPU_QUEUE_E2E_GPU_NODE"], 8)
    await clean_hub_namespace(release.kube, HUB_NAMESPACE)  # kind-up.sh's check pods hold a slice
    pages: dict[str, User] = {}
    async with chromium() as browser:
        try:
            await _story(browser, hub_url, release, shots, figures, pages)
        except BaseException:
            await keep_evidence(pages, shots)
            raise
    report("hub story in a browser", {**figures, "screenshots": str(shots)})


async def _story(
    browser: Browser, hub_url: str, release: Release, shots: Path, figures: dict[str, Any], pages: dict[str, User]
) -> None:
    admin = pages[ADMIN] = await new_user(browser, ADMIN, hub_url, shots)
    await admin.login()
    idle: set[str] = set()
    async with keep_active(admin, idle):
        # Eight GPU users log in, pick "GPU Enabled" and click Start, each once the one before
        # has its pod running (eight JupyterLab servers booting at once on a 2-core node answer
        # the hub too late, and it stops them); then each runs 1+1 in its JupyterLab.
        users = {name: await new_user(browser, name, hub_url, shots) for name in GPU_USERS}
        pages.update(users)
        started = time.monotonic()
        for i, (name, user) in enumerate(users.items()):
            await user.login()
            await user.open_options()
            if i == 0:
                await user.shot("01-options-page")
            await user.start("gpu-enabled")
            await wait_for(functools.partial(_running, release, name), 180, f"{name}'s pod to run")
        for name, user in users.items():
            await user.page.wait_for_url(re.compile(rf".*/user/{name}/lab.*"), timeout=300_000)
        for name, user in users.items():
            await user.wait_for_lab(120)
            assert await user.run_cell("1+1") == "2", f"{name}'s kernel did not answer 1+1"
        figures["eight_labs_seconds"] = round(time.monotonic() - started, 1)
        await users["alice"].shot("02-gpu-user-jupyterlab")
        # Inside the server: the memory limit gpu-queue gave the GPU profile (8Gi).
        alice_memory = await users["alice"].run_cell(MEMORY_LIMIT)
        assert alice_memory == str(8 * 1024**3), alice_memory
        for name, user in users.items():
            if name != "alice":
                await user.page.goto(f"{hub_url}/hub/home")  # leave JupyterLab; the servers stay

        # The CPU-only user starts at once while the GPU slices are all taken.
        judy = pages[CPU_USER] = await new_user(browser, CPU_USER, hub_url, shots)
        await judy.login()
        await judy.open_options()
        clicked = time.monotonic()
        await judy.start("cpu-only")
        await judy.wait_for_lab(180)
        figures["cpu_user_lab_seconds"] = round(time.monotonic() - clicked, 1)
        assert await judy.run_cell("1+1") == "2"
        judy_memory = await judy.run_cell(MEMORY_LIMIT)
        assert judy_memory == str(4 * 1024**3), judy_memory
        await judy.shot("03-cpu-user-jupyterlab")

        # The pods as gpu-queue made them: a GPU limit for a GPU user, none for a CPU user.
        gpu_pod, cpu_pod = await pod_of(release, "alice"), await pod_of(release, CPU_USER)
        assert gpu_pod is not None and cpu_pod is not None
        notebook = {c["name"]: c for c in gpu_pod["spec"]["containers"]}["notebook"]
        assert notebook["resources"]["limits"].get("nvidia.com/gpu") == "1", notebook["resources"]
        cpu_notebook = {c["name"]: c for c in cpu_pod["spec"]["containers"]}["notebook"]
        assert "nvidia.com/gpu" not in cpu_notebook["resources"].get("limits", {}), cpu_notebook["resources"]

        # Iris, the ninth GPU user, waits: her place, and a bar that does not move.
        iris = pages[NINTH] = await new_user(browser, NINTH, hub_url, shots)
        await iris.login()
        await iris.open_options()
        await iris.start("gpu-enabled")

        async def told_her_place() -> tuple[str, str] | None:
            message, value = await iris.progress()
            return (message, value) if "position 1 of 1" in message else None

        message, bar = await wait_for(told_her_place, 60, "Iris's spawn page to show 'position 1 of 1'")
        assert message.startswith("Waiting for a GPU slice: position 1 of 1"), message
        watch_until = time.monotonic() + 6
        while time.monotonic() < watch_until:  # the bar must not move while she waits
            assert (await iris.progress())[1] == bar, "the progress bar moved while Iris was queued"
            await asyncio.sleep(0.5)
        await iris.shot("04-ninth-user-waiting")

        # Alice stops her server on the hub's home page; Iris's page goes into JupyterLab.
        alice = users["alice"]
        await alice.page.goto(f"{hub_url}/hub/home")
        await alice.shot("05-home-stop-my-server")
        iris_url = iris.page.url
        stopped = time.monotonic()
        await alice.page.click("#stop")
        # Beside the browser, where the time goes: Alice's pod gone (her slice free), Iris's pod
        # ungated (gpu-queue's grant), Iris's pod Running (the kubelet), then the page.
        steps = asyncio.create_task(_hand_over(release, stopped))
        await iris.wait_for_lab(240)
        figures["logout_to_ninth_lab_seconds"] = round(time.monotonic() - stopped, 1)
        figures.update(await steps)
        assert "/spawn-pending/" in iris_url, iris_url
        assert await iris.run_cell("1+1") == "2"
        figures["logout_to_ninth_kernel_answer_seconds"] = round(time.monotonic() - stopped, 1)
        await iris.shot("06-ninth-user-jupyterlab")

        # Alice wants her GPU back and queues; Bob has left his server idle: the culler stops
        # it after CULL_TIMEOUT and Alice gets the slice.
        await wait_for(lambda: _no_server(admin, "alice"), 120, "Alice's server to be stopped")
        await alice.open_options()
        await alice.start("gpu-enabled")

        async def alice_queued() -> bool:
            return "position 1 of 1" in (await alice.progress())[0]

        await wait_for(alice_queued, 60, "Alice at position 1 of 1")
        await alice.shot("07-queued-again")
        idle.add("bob")
        went_idle = time.monotonic()
        await alice.wait_for_lab(CULL_TIMEOUT + CULL_EVERY * 3 + 240)
        figures["idle_to_next_lab_seconds"] = round(time.monotonic() - went_idle, 1)
        assert await _no_server(admin, "bob"), "Bob's idle server should have been culled"
        others = [n for n in [*GPU_USERS, NINTH] if n not in ("alice", "bob")]
        culled_others = [n for n in others if await _no_server(admin, n)]
        assert not culled_others, f"active users were culled: {culled_others}"
        await alice.shot("08-after-cull-jupyterlab")


async def _running(release: Release, user: str) -> bool:
    pod = await pod_of(release, user)
    return pod is not None and pod["status"].get("phase") == "Running"


async def _hand_over(release: Release, stopped: float) -> dict[str, float]:
    """Seconds from Alice's click on "Stop My Server" to each step of the hand-over to Iris."""

    async def alice_gone() -> bool:
        return await pod_of(release, "alice") is None

    async def iris_granted() -> bool:
        pod = await pod_of(release, NINTH)
        return pod is not None and not pod["spec"].get("schedulingGates")

    async def iris_running() -> bool:
        pod = await pod_of(release, NINTH)
        return pod is not None and pod["status"].get("phase") == "Running"

    figures: dict[str, float] = {}
    steps = {"alice_pod_gone": alice_gone, "ninth_granted": iris_granted, "ninth_running": iris_running}
    for name, check in steps.items():
        await wait_for(check, 240, name.replace("_", " "))
        figures[f"logout_to_{name}_seconds"] = round(time.monotonic() - stopped, 2)
    return figures


async def _no_server(admin: User, name: str) -> bool:
    user = await admin.api("GET", f"/users/{name}")
    return "" not in (user.get("servers") or {})
