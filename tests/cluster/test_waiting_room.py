"""The waiting room (``webhook/hub_templates/spawn_pending.html``) in a real browser, on a real
JupyterHub with ``QueueAwareKubeSpawner`` against the dev cluster: one GPU slice, held by Hana;
Abe waits; Iris starts a GPU server in headless Chromium and reads her place, the queue, the
slices and the wait on the page; Abe leaves and her place moves up; Hana leaves and Iris's tab
title changes, screen readers are told, and the notification she allowed fires. Without
JavaScript the page shows the same line as plain text. (The pods run on kwok's fake nodes, so
no server ever answers: the redirect into JupyterLab is the kind tier's.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gpu_queue_dev.cluster import DevCluster
from tests.e2e.browser import chromium, new_user, watch_the_waiting_room, without_javascript
from tests.helpers.real_hub import running_hub
from tests.helpers.waiting import wait_for
from tests.scenarios import Target, gated

pytestmark = pytest.mark.timeout(240)
TEMPLATES = Path(__file__).resolve().parents[2] / "webhook" / "hub_templates"


async def _holding(target: Target, name: str) -> bool:
    pod = await target.pod(name)
    return pod is not None and not gated(pod)


async def _waiting(target: Target, name: str) -> bool:
    pod = await target.pod(name)
    return pod is not None and gated(pod)


@pytest.fixture
async def one_slice(clean_cluster: DevCluster, target: Target) -> AsyncIterator[tuple[DevCluster, Target]]:
    """One GPU slice, held by Hana; Abe waits for it. Their pods are made as KubeSpawner makes
    them, without the hub (a hub would stop Hana's server when kwok's pod never answers)."""
    await clean_cluster.set_gpu_slices(1)
    hana = (await target.spawn("hana"))["metadata"]["name"]
    await wait_for(lambda: _holding(target, hana), 30, "hana to hold the only slice")
    abe = (await target.spawn("abe"))["metadata"]["name"]
    await wait_for(lambda: _waiting(target, abe), 30, "abe to wait")
    yield clean_cluster, target


async def test_a_queued_user_reads_her_place_watches_it_move_and_is_told_her_turn(
    one_slice: DevCluster, tmp_path: Path
) -> None:
    cluster, target = one_slice
    seen: dict[str, Any] = {}
    async with running_hub(cluster, tmp_path / "hub", template_paths=[TEMPLATES]) as hub, chromium() as browser:
        iris = await new_user(browser, "iris", hub.base_url, tmp_path)
        saw = await watch_the_waiting_room(iris)
        await iris.login()
        await iris.open_options()
        await iris.start("gpu-enabled")
        seen["place"] = await iris.shows("#gpu-queue-place", "2nd in line")
        seen["length"] = await iris.text("#gpu-queue-length")
        seen["slices"] = await iris.text("#gpu-queue-slices")
        seen["wait"] = await iris.text("#gpu-queue-wait")
        seen["keep"] = await iris.text("#gpu-queue-keep")
        assert seen["length"] == "2 people waiting" and seen["slices"] == "1 of 1", seen
        assert seen["wait"].startswith("unknown (") and "release intervals observed" in seen["wait"], (
            "no release yet: the wait is unknown, and the page says why, in the queue API's words"
        )
        assert "close this page" in seen["keep"] and "place is kept" in seen["keep"], seen
        assert "2nd in line" in (await iris.page.title()), "the tab title carries the place"
        message, bar = await iris.progress()
        assert "position 2 of 2" in message, "the stock line stays under the bar"
        await iris.shot("waiting-room-01-second-in-line")

        await target.logout("jupyter-abe")
        seen["moved_place"] = await iris.shows("#gpu-queue-place", "1st in line")
        seen["moved"] = await iris.shows("#gpu-queue-moved", "up 1 place")
        assert await iris.text("#gpu-queue-length") == "1 person waiting"
        assert "position 1 of 1" in (await iris.progress())[0]
        assert (await iris.progress())[1] == bar, "the bar stays still while she waits"
        await iris.shot("waiting-room-02-moved-up")

        await target.logout("jupyter-hana")

        # The server starts at once on kwok and the page then leaves for it (the hub's redirect):
        # what the page did at the grant is what the watch script reported.
        async def told() -> list[tuple[str, str]] | None:
            return saw if any(kind == "notification" for kind, _ in saw) else None

        await wait_for(told, 30, "the notification of the grant")

        async def retitled() -> bool:
            return any(kind == "title" and value.startswith("Your turn") for kind, value in saw)

        await wait_for(retitled, 10, "the tab title of the grant")
        seen["titles"] = sorted({value for kind, value in saw if kind == "title"})
        seen["announced"] = [value for kind, value in saw if kind == "announce"]
        seen["notification"] = [value for kind, value in saw if kind == "notification"]
        assert any(t.startswith("Your turn") for t in seen["titles"]), seen
        assert any("It is your turn" in a for a in seen["announced"]), seen
        assert seen["notification"] == ["Your GPU server is starting"], seen
    print(f"[waiting room] {json.dumps(seen)}")


async def test_without_javascript_the_waiting_room_says_the_place_in_plain_text(
    one_slice: DevCluster, tmp_path: Path
) -> None:
    cluster, target = one_slice
    async with (
        running_hub(cluster, tmp_path / "hub", template_paths=[TEMPLATES]) as hub,
        hub.api() as api,
        chromium() as browser,
    ):
        async with api.post(hub.url("/hub/api/users/noel")) as response:
            assert response.status == 201, await response.text()
        async with api.post(hub.url("/hub/api/users/noel/server"), json={"profile": "gpu-enabled"}) as response:
            assert response.status == 202, await response.text()
        await wait_for(lambda: _waiting(target, "jupyter-noel"), 30, "noel's server to wait behind abe")
        page = await without_javascript(browser, "noel", hub.base_url)
        await page.goto(f"{hub.base_url}/hub/spawn-pending/noel")
        plain = (await page.inner_text("body")).strip()
        assert "Waiting for a GPU slice: position 2 of 2" in plain, plain[:500]
        assert "keeps its place" in plain, plain[:500]
        await page.context.close()


async def _gpu_limit(target: Target, name: str) -> str | None:
    pod = await target.pod(name)
    if pod is None:
        return "no pod"
    notebook = {c["name"]: c for c in pod["spec"]["containers"]}["notebook"]
    return (notebook.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu")


async def test_a_queued_user_starts_cpu_only_instead_and_the_user_behind_moves_up_on_his_home_page(
    one_slice: DevCluster, tmp_path: Path
) -> None:
    """Iris waits 2nd (behind Abe), Noel 3rd. Noel's home page shows his place next to Stop. Iris
    asks for CPU Only, reads what she gives up, keeps waiting once, then confirms: her GPU pod goes,
    a CPU pod (no GPU, never gated) takes its place, her page follows the new spawn, and Noel's
    home page says 2 of 2 without a reload."""
    cluster, target = one_slice
    seen: dict[str, Any] = {}
    async with (
        running_hub(cluster, tmp_path / "hub", template_paths=[TEMPLATES]) as hub,
        hub.api() as api,
        chromium() as browser,
    ):
        iris = await new_user(browser, "iris", hub.base_url, tmp_path)
        await iris.login()
        await iris.open_options()
        await iris.start("gpu-enabled")
        await iris.shows("#gpu-queue-place", "2nd in line")
        async with api.post(hub.url("/hub/api/users/noel")) as response:
            assert response.status == 201, await response.text()
        async with api.post(hub.url("/hub/api/users/noel/server"), json={"profile": "gpu-enabled"}) as response:
            assert response.status == 202, await response.text()
        await wait_for(lambda: _waiting(target, "jupyter-noel"), 30, "noel's server to wait behind iris")
        noel = await new_user(browser, "noel", hub.base_url, tmp_path)
        await noel.login()
        await noel.page.goto(f"{hub.base_url}/hub/home")
        seen["noel_home"] = await noel.shows(".gpu-queue-home-place", "position 3 of 3")
        beside_stop = await noel.page.evaluate(
            "document.querySelector('.gpu-queue-home-place').parentElement === "
            "document.getElementById('stop').parentElement"
        )
        assert beside_stop, "the place stands next to the Stop button"
        await noel.shot("waiting-room-03-home-page-place")

        ask = iris.page.locator("#gpu-queue-switch-ask")
        assert (await ask.inner_text()).strip() == "Start CPU Only instead"
        await ask.click()
        seen["question"] = await iris.text("#gpu-queue-switch-question")
        assert "Give up your place in line?" in seen["question"] and "move up" in seen["question"], seen
        await iris.shot("waiting-room-04-start-cpu-only-instead")
        await iris.page.click("#gpu-queue-switch-no")
        assert await iris.page.locator("#gpu-queue-switch-confirm").is_hidden()
        assert await _waiting(target, "jupyter-iris"), "'Keep waiting' keeps the queued server"
        assert await _gpu_limit(target, "jupyter-iris") == "1"
        gpu_uid = (await target.pod("jupyter-iris") or {})["metadata"]["uid"]

        await ask.click()
        await iris.page.evaluate("window.gpuQueueOldPage = true")
        await iris.page.click("#gpu-queue-switch-yes")

        async def cpu_pod() -> dict[str, Any] | None:
            pod = await target.pod("jupyter-iris")
            return pod if pod is not None and pod["metadata"]["uid"] != gpu_uid else None

        pod = await wait_for(cpu_pod, 90, "iris's CPU server's pod")
        assert pod["metadata"]["labels"].get("gpu-queue.io/profile") == "cpu-only", pod["metadata"]["labels"]
        assert await _gpu_limit(target, "jupyter-iris") is None, "CPU Only asks for no GPU"
        assert not gated(pod), "a CPU server does not queue"
        seen["noel_home_after"] = await noel.shows(".gpu-queue-home-place", "position 2 of 2")

        async def followed() -> bool:  # a new document: the page left for the new spawn's page
            return bool(await iris.page.evaluate("window.gpuQueueOldPage === undefined"))

        await wait_for(followed, 30, "iris's page to follow the CPU spawn")
        assert "/hub/" in iris.page.url and "iris" in iris.page.url, iris.page.url
        assert "'_xsrf' argument missing" not in hub.log(), "the page's API calls carry the XSRF token"
    print(f"[waiting room, cpu instead] {json.dumps(seen)}")
