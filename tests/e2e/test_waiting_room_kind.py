"""The waiting room (``webhook/hub_templates``) on kind, with the real hub, real JupyterLab and
headless Chromium, one GPU slice: Hana holds it; Abe waits 1st, Iris 2nd (she allowed
notifications), Noel 3rd (his browser runs no JavaScript). Iris reads her place, the queue, the
slices and the wait; Abe clicks "Start CPU Only instead", confirms, and reaches a CPU JupyterLab
while Iris and Noel move up one place; Hana stops and Iris's tab title changes, screen readers
are told, the notification fires and her page goes into JupyterLab by itself. The stock pages
with the same spawner are the seed story's (``test_hub_story.py``)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.async_api import Page

from tests.e2e.browser import User, chromium, new_user, watch_the_waiting_room, without_javascript
from tests.e2e.kind import Release, clean_hub_namespace, report, set_slices
from tests.e2e.kind_hub import HUB_NAMESPACE, installed_hub, keep_evidence, shots_folder
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def hub_url() -> Iterator[str]:
    """The kind hub as the docs configure it (the waiting room on); no culling while the test runs
    (the overlay's 2 minutes would stop Hana's idle server)."""
    with installed_hub(CULL_TIMEOUT="3600", CULL_EVERY="600") as url:
        yield url


async def pod_of(release: Release, user: str) -> dict[str, Any] | None:
    return await release.kube.get_if_present(f"/api/v1/namespaces/{HUB_NAMESPACE}/pods/jupyter-{user}")


def gpu_limit(pod: dict[str, Any]) -> str | None:
    notebook = {c["name"]: c for c in pod["spec"]["containers"]}["notebook"]
    return (notebook.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu")


async def plain_text(page: Page, user: str, hub: str) -> str:
    await page.goto(f"{hub}/hub/spawn-pending/{user}")
    return (await page.inner_text("body")).strip()


async def test_the_waiting_room_on_kind(hub_url: str, release: Release) -> None:
    shots = shots_folder("waiting-room")
    await set_slices(release.kube, os.environ["GPU_QUEUE_E2E_GPU_NODE"], 1)
    await clean_hub_namespace(release.kube, HUB_NAMESPACE)
    pages: dict[str, User] = {}
    figures: dict[str, Any] = {}
    async with chromium(secure_origins=[hub_url]) as browser:  # for Iris's notification
        try:
            admin = pages["admin"] = await new_user(browser, "admin", hub_url, shots)
            await admin.login()

            # Hana holds the only slice (her server started through the hub's API, as an admin may).
            await admin.api("POST", "/users/hana")
            await admin.api("POST", "/users/hana/server", {"profile": "gpu-enabled"})

            async def hana_ready() -> bool:
                return bool(((await admin.api("GET", "/users/hana")).get("servers") or {}).get("", {}).get("ready"))

            await wait_for(hana_ready, 240, "Hana's server to be ready")

            # Abe waits 1st, Iris 2nd.
            abe = pages["abe"] = await new_user(browser, "abe", hub_url, shots)
            await abe.login()
            await abe.open_options()
            await abe.start("gpu-enabled")
            await abe.shows("#gpu-queue-place", "1st in line")
            iris = pages["iris"] = await new_user(browser, "iris", hub_url, shots)
            saw = await watch_the_waiting_room(iris)
            await iris.login()
            await iris.open_options()
            await iris.start("gpu-enabled")
            figures["iris_place"] = await iris.shows("#gpu-queue-place", "2nd in line")

            # Noel waits 3rd, with JavaScript off: the page says it in plain text.
            await admin.api("POST", "/users/noel")
            await admin.api("POST", "/users/noel/server", {"profile": "gpu-enabled"})
            noel = await without_javascript(browser, "noel", hub_url)

            async def noel_third() -> str | None:
                text = await plain_text(noel, "noel", hub_url)
                return text if "position 3 of 3" in text else None

            noel_text = await wait_for(noel_third, 60, "Noel's plain page to say position 3 of 3")
            assert "Waiting for a GPU slice: position 3 of 3" in noel_text and "keeps its place" in noel_text

            await iris.shows("#gpu-queue-length", "3 people waiting")
            figures["iris_slices"] = await iris.text("#gpu-queue-slices")
            figures["iris_wait"] = await iris.text("#gpu-queue-wait")
            assert figures["iris_slices"] == "1 of 1", figures
            wait = figures["iris_wait"]
            # A range in the Events' words ("under 3 min", "less than a minute") or "unknown (why)".
            assert re.search(r"\d|less than a minute", wait) or (wait.startswith("unknown (") and wait.endswith(")")), (
                figures
            )
            assert "place is kept" in await iris.text("#gpu-queue-keep")
            await iris.shot("01-second-in-line")

            # Abe starts CPU Only instead: the question says what he gives up; he confirms.
            await abe.page.click("#gpu-queue-switch-ask")
            question = await abe.text("#gpu-queue-switch-question")
            assert "Give up your place in line?" in question, question
            await abe.shot("02-start-cpu-only-instead")
            clicked = time.monotonic()
            await abe.page.click("#gpu-queue-switch-yes")
            await abe.wait_for_lab(240)
            figures["cpu_instead_click_to_lab_seconds"] = round(time.monotonic() - clicked, 1)
            abe_pod = await pod_of(release, "abe")
            assert abe_pod is not None and gpu_limit(abe_pod) is None, "Abe's server has no GPU"
            assert abe_pod["metadata"]["labels"].get("gpu-queue.io/profile") == "cpu-only"
            assert await abe.run_cell("1+1") == "2"
            await abe.shot("03-cpu-only-jupyterlab")

            # The people behind him moved up one place.
            figures["iris_moved"] = await iris.shows("#gpu-queue-moved", "up 1 place")
            await iris.shows("#gpu-queue-place", "1st in line")
            assert await iris.text("#gpu-queue-length") == "2 people waiting"
            assert "position 2 of 2" in await plain_text(noel, "noel", hub_url), "Noel moved up too"
            await iris.shot("04-moved-up")

            # Hana stops: Iris is told, and her page goes into JupyterLab by itself.
            stopped = time.monotonic()
            await admin.api("DELETE", "/users/hana/server")
            await iris.shows("#gpu-queue-title", "It is your turn", within=120)
            figures["stop_to_told_seconds"] = round(time.monotonic() - stopped, 1)
            await iris.shot("05-your-turn")
            await iris.wait_for_lab(240)
            figures["stop_to_lab_seconds"] = round(time.monotonic() - stopped, 1)
            assert await iris.run_cell("1+1") == "2"
            titles = {value for kind, value in saw if kind == "title"}
            assert any(t.startswith("(2nd in line)") for t in titles), titles
            assert any(t.startswith("Your turn") for t in titles), titles
            assert any(kind == "announce" and "It is your turn" in value for kind, value in saw), saw
            assert [v for kind, v in saw if kind == "notification"] == ["Your GPU server is starting"], saw
            assert "position 1 of 1" in await plain_text(noel, "noel", hub_url), "Noel is next"
            await noel.context.close()
        except BaseException:
            await keep_evidence(pages, shots)
            raise
    print(f"[waiting room on kind] {json.dumps(figures)}")
    report("waiting room on kind", {**figures, "screenshots": str(shots)})
