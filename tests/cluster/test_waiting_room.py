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
from tests.e2e.browser import User, chromium, new_user
from tests.helpers.real_hub import running_hub
from tests.helpers.waiting import wait_for
from tests.scenarios import Target, gated

pytestmark = pytest.mark.timeout(240)
TEMPLATES = Path(__file__).resolve().parents[2] / "webhook" / "hub_templates"
# Reports the tab title, the screen-reader announcement and each notification to the test.
WATCH_SCRIPT = """
(() => {
  const Real = window.Notification;
  if (Real) {
    const Watched = function (title, options) {
      window.gpuQueueSaw("notification", title);
      return new Real(title, options);
    };
    Watched.prototype = Real.prototype;
    Object.defineProperty(Watched, "permission", { get: () => Real.permission });
    Watched.requestPermission = (...args) => Real.requestPermission(...args);
    window.Notification = Watched;
  }
  new MutationObserver(() => {
    window.gpuQueueSaw("title", document.title);
    const said = document.getElementById("gpu-queue-announce");
    if (said && said.textContent) window.gpuQueueSaw("announce", said.textContent);
  }).observe(document, { subtree: true, childList: true, characterData: true });
})();
"""


async def _holding(target: Target, name: str) -> bool:
    pod = await target.pod(name)
    return pod is not None and not gated(pod)


async def _waiting(target: Target, name: str) -> bool:
    pod = await target.pod(name)
    return pod is not None and gated(pod)


async def _text(user: User, selector: str) -> str:
    return (await user.page.inner_text(selector)).strip()


async def _shows(user: User, selector: str, words: str, within: float = 30) -> str:
    async def found() -> str | None:
        value = await _text(user, selector)
        return value if words in value else None

    return await wait_for(found, within, f"{selector!r} to say {words!r}", interval=0.2)


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
        await iris.context.grant_permissions(["notifications"], origin=hub.base_url)
        saw: list[tuple[str, str]] = []
        await iris.context.expose_binding("gpuQueueSaw", lambda _source, kind, value: saw.append((kind, value)))
        await iris.context.add_init_script(WATCH_SCRIPT)
        await iris.login()
        await iris.open_options()
        await iris.start("gpu-enabled")
        seen["place"] = await _shows(iris, "#gpu-queue-place", "2nd in line")
        seen["length"] = await _text(iris, "#gpu-queue-length")
        seen["slices"] = await _text(iris, "#gpu-queue-slices")
        seen["wait"] = await _text(iris, "#gpu-queue-wait")
        seen["keep"] = await _text(iris, "#gpu-queue-keep")
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
        seen["moved_place"] = await _shows(iris, "#gpu-queue-place", "1st in line")
        seen["moved"] = await _shows(iris, "#gpu-queue-moved", "up 1 place")
        assert await _text(iris, "#gpu-queue-length") == "1 person waiting"
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
        context = await browser.new_context(java_script_enabled=False)
        page = await context.new_page()
        await page.goto(f"{hub.base_url}/hub/login")
        await page.fill("#username_input", "noel")
        await page.fill("#password_input", "any")
        await page.click("#login_submit")
        await page.goto(f"{hub.base_url}/hub/spawn-pending/noel")
        plain = (await page.inner_text("body")).strip()
        assert "Waiting for a GPU slice: position 2 of 2" in plain, plain[:500]
        assert "keeps its place" in plain, plain[:500]
        await context.close()
