"""The admins' dashboard behind a real JupyterHub's OAuth, in headless Chromium, on the dev
cluster: the service's dashboard (``webhook.service.build_dashboard``, the code ``serve`` runs on
``dashboard.port``) is registered with the hub as the service ``gpu-queue``. Hana holds the only
slice and Abe waits. An admin opening the dashboard is sent to the hub, logs in there, comes back
and sees both names, the charts and the what-if; Bob, not an admin, sees the same queue without
names; without a login the dashboard answers nothing but the way to the hub."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gpu_queue_dev.cluster import DevCluster
from gpu_queue_dev.cluster.procs import free_ports
from tests.e2e.browser import chromium, new_user
from tests.helpers.real_hub import RealHub, running_hub
from tests.helpers.waiting import wait_for
from tests.invariants import pool_status
from tests.scenarios import Target, gated
from webhook.config import Config
from webhook.redis_store import RedisQueueStore
from webhook.service import ClusterProxy, build_dashboard

pytestmark = pytest.mark.timeout(240)
PREFIX = "/services/gpu-queue/"


class RunningServiceUsage:
    """The slices in use as the running service's leader counts them (its queue API's
    ``/pools``), for a dashboard built in this process, which runs no controller of its own."""

    def __init__(self, pools: dict[str, tuple[int, int]]) -> None:
        self.pools = pools

    def pool_usage(self, pool: str) -> tuple[int, int]:
        return self.pools.get(pool, (0, 0))


@asynccontextmanager
async def dashboard(
    cluster: DevCluster, hub: RealHub, port: int, token: str, usage: RunningServiceUsage
) -> AsyncIterator[str]:
    """The dashboard as ``serve`` builds it, on the dev cluster's Redis, at 127.0.0.1:port."""
    base = cluster.service_config.model_dump(by_alias=True, mode="json")
    base["redis"]["url"] = cluster.redis_url
    base["dashboard"] = {
        "enabled": True,
        "port": port,
        "hubApiUrl": hub.url("/hub/api"),
        "hubPublicUrl": hub.base_url,
        "oauthRedirectUri": f"http://127.0.0.1:{port}{PREFIX}oauth_callback",  # its own port, not the hub's
        "apiToken": token,
    }
    config = Config.model_validate(base)
    store = RedisQueueStore.from_config(config)
    cluster_view = ClusterProxy()
    cluster_view.controller = usage  # type: ignore[assignment]  # only pool_usage is read
    runner = web.AppRunner(build_dashboard(config, store, cluster_view), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}{PREFIX}"
    finally:
        await runner.cleanup()
        await store.aclose()


async def test_admins_log_in_through_the_hub_and_see_names_others_see_the_queue_without(
    clean_cluster: DevCluster, target: Target, tmp_path: Path
) -> None:
    await clean_cluster.set_gpu_slices(1)
    await target.spawn("hana")
    await target.spawn("abe")

    async def abe_waits() -> bool:
        pod = await target.pod("jupyter-abe")
        return pod is not None and gated(pod)

    await wait_for(abe_waits, 30, "abe to wait behind hana")
    gpu = await pool_status(target, "gpu")
    usage = RunningServiceUsage({"gpu": (gpu["capacity"], gpu["inUse"])})
    assert usage.pools["gpu"] == (1, 1), gpu
    (port,) = free_ports(1)
    token = secrets.token_hex(32)
    service = {
        "name": "gpu-queue",
        "api_token": token,
        "url": f"http://127.0.0.1:{port}",
        "oauth_redirect_uri": f"http://127.0.0.1:{port}{PREFIX}oauth_callback",
        "oauth_no_confirm": True,
    }
    async with (
        running_hub(
            clean_cluster,
            tmp_path / "hub",
            services=[service],
            admin_users=["admin"],
            # what the docs' values give every user: the right to open the service (its OAuth)
            user_scopes=["access:services!service=gpu-queue"],
        ) as hub,
        dashboard(clean_cluster, hub, port, token, usage) as url,
        chromium() as browser,
    ):
        async with aiohttp.ClientSession() as anonymous, anonymous.get(url, allow_redirects=False) as answer:
            assert answer.status == 302, "no login: the way to the hub, nothing else"
            assert answer.headers["Location"].startswith(hub.url("/hub/api/oauth2/authorize?"))
            assert "hana" not in await answer.text()

        admin = await new_user(browser, "admin", hub.base_url, tmp_path)
        await admin.page.goto(url)
        await admin.page.wait_for_selector("#username_input")  # the hub's own login page
        await admin.page.fill("#username_input", "admin")
        await admin.page.fill("#password_input", "any")
        await admin.page.click("#login_submit")
        await admin.page.wait_for_url(f"{url}*", timeout=30_000)
        page = await admin.page.content()
        words = set(re.findall(r"\w+", await admin.page.inner_text("body")))
        assert {"hana", "abe"} <= words, "a hub admin sees who holds and who waits"
        assert page.count("<svg") >= 3, "the three charts"
        assert "What if" in page
        assert "1 / 1" in await admin.page.inner_text("body"), "in use of capacity, as the leader counts them"
        await admin.shot("dashboard-01-admin")

        bob = await new_user(browser, "bob", hub.base_url, tmp_path)
        await bob.login()
        await bob.page.goto(url)
        await bob.page.wait_for_url(f"{url}*", timeout=30_000)
        page = await bob.page.content()
        words = set(re.findall(r"\w+", await bob.page.inner_text("body")))
        assert not {"hana", "abe"} & words, "no names for users who are not admins"
        assert not re.search(r"\b(hana|abe)\b", page), "nor anywhere in the page's markup"
        assert "waiting" in await bob.page.inner_text("body"), "the queue itself is shown"
