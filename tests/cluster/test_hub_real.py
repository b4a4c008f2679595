"""A real JupyterHub, with ``QueueAwareKubeSpawner`` against the dev cluster, refuses a second GPU
server to a user whose first one waits in the queue, and stays up however often she asks.

JupyterHub exits 2 s after ``consecutive_failure_limit`` (z2jh: 5) spawns failed in a row, and 5.x
counts a refused spawn as a failure where 6.x does not: a unit test with a fake handler cannot show
whether the hub's own bookkeeping agrees, so this runs the hub's process. ``make test`` runs this
file on JupyterHub 5.5 (what zero-to-jupyterhub 4.x ships) and on the newest 6.x.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import jupyterhub
import pytest

from gpu_queue_dev.cluster import DevCluster
from tests.helpers.real_hub import RealHub, running_hub
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(240)

USER = "alice"
REFUSAL = "one GPU server at a time"
#: One more than consecutive_failure_limit: the hub would have aborted if refusals counted.
ROUNDS = 6
#: JupyterHub aborts 2 s after the limit is reached; watch for twice that.
WATCH_SECONDS = 4.0


async def _json(response: aiohttp.ClientResponse) -> Any:
    text = await response.text()
    try:
        return json.loads(text)
    except ValueError:
        return {"text": text[:500]}


async def _queue_state(cluster: DevCluster, user: str, server: str = "") -> str | None:
    """What the queue API says of one server's pod (``queued``, ``admitted``, ...)."""
    ssl_ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    headers = {"Authorization": f"Bearer {cluster.read_token}"}
    url = f"{cluster.api_url(0)}/api/v1/users/{user}"
    async with (
        aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(url, params={"server": server}, ssl=ssl_ctx) as response,
    ):
        if response.status != 200:
            return None
        state: str | None = (await response.json()).get("state")
        return state


async def _queue_state_is(cluster: DevCluster, state: str, server: str = "") -> bool:
    return await _queue_state(cluster, USER, server) == state


async def _start_server(api: aiohttp.ClientSession, hub: RealHub, path: str, profile: str) -> tuple[int, Any]:
    async with api.post(hub.url(f"/hub/api/users/{USER}/{path}"), json={"profile": profile}) as response:
        return response.status, await _json(response)


async def _queue_figures_through_the_hub(api: aiohttp.ClientSession, hub: RealHub) -> dict[str, Any]:
    """The first ``gpu_queue`` data of the hub's own progress stream (the EventSource the spawn
    page reads): JupyterHub passes the spawner's event through whole."""
    url = hub.url(f"/hub/api/users/{USER}/server/progress")
    async with api.get(url, timeout=aiohttp.ClientTimeout(total=30)) as response:
        assert response.status == 200, f"progress stream: {response.status}"
        async for raw in response.content:
            text = raw.decode().strip()
            if text.startswith("data:"):
                event = json.loads(text[len("data:") :])
                if "gpu_queue" in event:
                    figures: dict[str, Any] = event["gpu_queue"]
                    return figures
    raise AssertionError("the progress stream ended without queue figures")


async def _hub_stays_up(hub: RealHub, seconds: float) -> None:
    """Fail if the hub exits, or logs its abort, within ``seconds``: a bounded watch, since the
    behaviour under test is that nothing happens."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(hub.process.wait(), seconds)
    assert hub.running, f"the hub exited with {hub.process.returncode}\n{hub.log_tail()}"
    assert "Aborting due to" not in hub.log(), f"the hub is aborting\n{hub.log_tail()}"


async def test_refused_second_gpu_servers_neither_count_as_failures_nor_end_the_hub(
    clean_cluster: DevCluster, tmp_path: Path
) -> None:
    """Six refusals through the spawn form and six through the REST API (one more than the limit,
    each way), then the hub is still up and starts a CPU server."""
    cluster = clean_cluster
    await cluster.set_gpu_slices(0)  # every GPU pod waits in the queue
    seen: dict[str, Any] = {"jupyterhub": jupyterhub.__version__, "form": [], "rest": [], "rest_messages": []}
    async with running_hub(cluster, tmp_path / "hub") as hub, hub.api() as api:
        try:
            await _refusals_leave_the_hub_running(cluster, hub, api, seen)
        finally:
            seen["failure_count_logged"] = hub.failure_count_logged()
            print(f"[hub real] {json.dumps(seen)}")


async def _refusals_leave_the_hub_running(
    cluster: DevCluster, hub: RealHub, api: aiohttp.ClientSession, seen: dict[str, Any]
) -> None:
    """The test's steps; what the hub answered goes into ``seen`` (printed even on failure)."""
    async with api.get(hub.url("/hub/api/")) as response:
        version = (await response.json())["version"]
    assert version == jupyterhub.__version__, f"the hub runs JupyterHub {version}, not pytest's venv's"

    async with api.post(hub.url(f"/hub/api/users/{USER}")) as response:
        assert response.status == 201, f"create {USER}: {response.status} {await _json(response)}"
    status, body = await _start_server(api, hub, "server", "gpu-enabled")
    seen["first"] = status
    assert status == 202, f"the first GPU server should be pending: {status} {body}\n{hub.log_tail()}"
    await wait_for(lambda: _queue_state_is(cluster, "queued"), within=30, what=f"{USER}'s default server queued")
    async with api.get(hub.url(f"/hub/api/users/{USER}")) as response:
        default = (await response.json())["servers"][""]
    assert default["pending"] == "spawn", f"the queued server should still be spawning: {default}"
    figures = await _queue_figures_through_the_hub(api, hub)
    seen["progress_gpu_queue"] = figures
    assert figures["state"] == "queued" and figures["position"] == 1 and figures["queueLength"] == 1, figures
    assert figures["capacity"] == 0 and figures["keepsPlace"] is True, figures

    async with hub.browser(USER) as browser:
        form_url = hub.url(f"/hub/spawn/{USER}/second")
        async with browser.get(form_url) as page:
            assert page.status == 200 and 'name="profile"' in await page.text(), f"no spawn form: {page.status}"
        xsrf = hub.xsrf_token(browser)  # bound to alice's session now
        for _ in range(ROUNDS):
            form = {"profile": "gpu-enabled", "_xsrf": xsrf}
            async with browser.post(form_url, data=form, allow_redirects=False) as response:
                page_text = await response.text()
            seen["form"].append(response.status)
            assert REFUSAL in page_text and 'name="profile"' in page_text, (
                f"the form should come back with the refusal: {response.status} {page_text[:300]!r}\n{hub.log_tail()}"
            )

    for _ in range(ROUNDS):
        status, body = await _start_server(api, hub, "servers/third", "gpu-enabled")
        seen["rest"].append(status)
        message = str(body.get("message", body))
        if message not in seen["rest_messages"]:
            seen["rest_messages"].append(message)
        assert 400 <= status < 500, f"a second GPU server through the API: {status} {body}\n{hub.log_tail()}"
        assert REFUSAL in message, f"an API client should be told why: {body}"

    await _hub_stays_up(hub, WATCH_SECONDS)
    status, body = await _start_server(api, hub, "servers/cpu", "cpu-only")
    seen["cpu"] = status
    assert status in (201, 202), f"a CPU server should be accepted: {status} {body}\n{hub.log_tail()}"
