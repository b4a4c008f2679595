"""The admins' dashboard behind a real JupyterHub's OAuth, in headless Chromium, on the dev
cluster: the service's dashboard (``webhook.service.build_dashboard``, the code ``serve`` runs on
``dashboard.port``) is registered with the hub as the service ``gpu-queue``, with the docs'
``read:servers`` role. Hana's server, started through the hub, holds the only slice and Abe
waits; yesterday's history is a recorded day of synthetic traffic in the cluster's Redis. An admin
opening the dashboard is sent to the hub, logs in there, comes back and sees both names, Hana's
last activity as the hub reports it, the charts, the what-if and yesterday's waits; Bob, not an
admin, sees the same queue without names; without a login the dashboard answers nothing but the
way to the hub (an HTML client) or a 401."""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
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
from webhook.dashboard.session import SESSION_COOKIE
from webhook.history import HistoryEvent, HistoryStore
from webhook.redis_store import RedisQueueStore
from webhook.report import format_seconds
from webhook.service import ClusterProxy, build_dashboard

pytestmark = pytest.mark.timeout(240)
PREFIX = "/services/gpu-queue/"
#: What the docs' values give the service's token: the servers' activity for the holders' rows.
DASHBOARD_ROLE = {"name": "gpu-queue-dashboard", "scopes": ["read:servers"], "services": ["gpu-queue"]}


def yesterdays_traffic(day: datetime) -> tuple[list[HistoryEvent], list[float], int]:
    """A recorded day on one slice, as a strict FIFO would have served it: a request every 30 min
    from 08:00 to 18:00 and a class of 6 at 14:00, holds cycling 10-25 min; whoever would wait
    over 30 min gives up then. The events, the waits of the grants, the number given up."""
    arrivals = [day + timedelta(hours=8, minutes=30 * i) for i in range(21)]
    arrivals += [day + timedelta(hours=14, seconds=5 * i + 1) for i in range(6)]
    holds = [timedelta(minutes=m) for m in (10, 20, 25, 15)]
    events: list[HistoryEvent] = []
    waits: list[float] = []
    free_at = day
    gave_up = 0
    for i, arrived in enumerate(sorted(arrivals)):
        key = f"jhub/synthetic-{i}"
        events.append(HistoryEvent(kind="arrival", at=arrived, pool="gpu", slices=1, key=key))
        granted = max(arrived, free_at)
        wait = (granted - arrived).total_seconds()
        if wait > 30 * 60:
            gave_up += 1
            gone = arrived + timedelta(minutes=30)
            events.append(HistoryEvent(kind="cancel", at=gone, pool="gpu", slices=1, key=key, wait_seconds=1800.0))
            continue
        hold = holds[i % len(holds)]
        free_at = granted + hold
        waits.append(wait)
        events.append(HistoryEvent(kind="grant", at=granted, pool="gpu", slices=1, key=key, wait_seconds=wait))
        events.append(
            HistoryEvent(kind="release", at=free_at, pool="gpu", slices=1, key=key, hold_seconds=hold.total_seconds())
        )
    return sorted(events, key=lambda e: e.at), waits, gave_up


def nearest_rank(values: list[float], p: float) -> float:
    """The smallest value with at least p % of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered) / 100)) - 1]


class RunningServiceUsage:
    """The slices in use as the running service's leader counts them (its queue API's
    ``/pools``), for a dashboard built in this process, which runs no controller of its own."""

    def __init__(self, pools: dict[str, tuple[int, int]]) -> None:
        self.pools = pools

    def pool_usage(self, pool: str) -> tuple[int, int]:
        return self.pools.get(pool, (0, 0))


def _config(cluster: DevCluster, dashboard: dict[str, object] | None = None) -> Config:
    """The running service's config, on the dev cluster's Redis, with ``dashboard`` set."""
    base = cluster.service_config.model_dump(by_alias=True, mode="json")
    base["redis"]["url"] = cluster.redis_url
    if dashboard is not None:
        base["dashboard"] = dashboard
    return Config.model_validate(base)


@asynccontextmanager
async def dashboard(
    cluster: DevCluster, hub: RealHub, port: int, token: str, usage: RunningServiceUsage
) -> AsyncIterator[str]:
    """The dashboard as ``serve`` builds it, on the dev cluster's Redis, at 127.0.0.1:port."""
    config = _config(
        cluster,
        {
            "enabled": True,
            "port": port,
            "hubApiUrl": hub.url("/hub/api"),
            "hubPublicUrl": hub.base_url,
            "oauthRedirectUri": f"http://127.0.0.1:{port}{PREFIX}oauth_callback",  # its own port, not the hub's
            "apiToken": token,
        },
    )
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
    yesterday = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    traffic, waits, gave_up = yesterdays_traffic(yesterday)
    history = HistoryStore.from_config(_config(clean_cluster))
    try:
        await history.record_many(traffic)
    finally:
        await history.aclose()

    (port,) = free_ports(1)
    token = secrets.token_hex(32)
    service = {
        "name": "gpu-queue",
        "api_token": token,
        "url": f"http://127.0.0.1:{port}",
        "oauth_redirect_uri": f"http://127.0.0.1:{port}{PREFIX}oauth_callback",
        "oauth_no_confirm": True,
    }
    async with running_hub(
        clean_cluster,
        tmp_path / "hub",
        services=[service],
        admin_users=["admin"],
        # what the docs' values give every user: the right to open the service (its OAuth)
        user_scopes=["access:services!service=gpu-queue"],
        roles=[DASHBOARD_ROLE],
        http_timeout=200,  # the dev cluster's pods never answer: keep Hana's server the test's length
    ) as hub:
        async with hub.api() as api:
            async with api.post(hub.url("/hub/api/users/hana")) as response:
                assert response.status in (201, 409), await response.text()
            async with api.post(hub.url("/hub/api/users/hana/server"), json={"profile": "gpu-enabled"}) as response:
                assert response.status in (201, 202), await response.text()
        await target.spawn("abe")

        async def hana_holds_abe_waits() -> bool:
            hana, abe = await target.pod("jupyter-hana"), await target.pod("jupyter-abe")
            return hana is not None and not gated(hana) and abe is not None and gated(abe)

        await wait_for(hana_holds_abe_waits, 30, "hana (started by the hub) to hold the slice, abe to wait")
        async with hub.api() as api, api.get(hub.url("/hub/api/users/hana")) as response:
            reported = (await response.json())["servers"][""]["last_activity"]
        hana_active = datetime.fromisoformat(reported.replace("Z", "+00:00"))
        gpu = await pool_status(target, "gpu")
        usage = RunningServiceUsage({"gpu": (gpu["capacity"], gpu["inUse"])})
        assert usage.pools["gpu"] == (1, 1), gpu

        async with dashboard(clean_cluster, hub, port, token, usage) as url, chromium() as browser:
            async with aiohttp.ClientSession() as anonymous:
                async with anonymous.get(url, allow_redirects=False) as answer:
                    assert answer.status == 302, "no login: the way to the hub, nothing else"
                    assert answer.headers["Location"].startswith(hub.url("/hub/api/oauth2/authorize?"))
                    assert "hana" not in await answer.text()
                headers = {"Accept": "application/json"}
                async with anonymous.get(url, headers=headers, allow_redirects=False) as answer:
                    assert answer.status == 401, "a client that is not a browser gets a 401"
                    assert "hana" not in await answer.text()
                cookies = {SESSION_COOKIE: "admin|9999999999|forged"}
                async with anonymous.get(url, cookies=cookies, allow_redirects=False) as answer:
                    assert answer.status == 302, "a forged session is no session"

            admin = await new_user(browser, "admin", hub.base_url, tmp_path)
            await admin.page.goto(url)
            await admin.page.wait_for_selector("#username_input")  # the hub's own login page
            await admin.page.fill("#username_input", "admin")
            await admin.page.fill("#password_input", "any")
            await admin.page.click("#login_submit")
            await admin.page.wait_for_url(f"{url}*", timeout=30_000)
            page = await admin.page.content()
            text = await admin.page.inner_text("body")
            words = set(re.findall(r"\w+", text))
            assert {"hana", "abe"} <= words, "a hub admin sees who holds and who waits"
            assert page.count("<svg") >= 3, "the three charts"
            assert "What if" in page
            assert "1 / 1" in text, "in use of capacity, as the leader counts them"
            hana_row = next(line for line in text.splitlines() if line.startswith("hana"))
            assert f"{hana_active:%Y-%m-%d %H:%M} UTC" in hana_row, f"the hub's last activity: {hana_row!r}"
            assert "not reported" not in hana_row
            await admin.shot("dashboard-01-admin")

            await admin.page.goto(f"{url}pools/gpu?days=3")
            rows = (await admin.page.inner_text("table:has(caption:text('per UTC day'))")).splitlines()
            day_row = next(r for r in rows if r.startswith(f"{yesterday:%Y-%m-%d}")).split("\t")
            want = [str(27), str(len(waits)), str(gave_up), format_seconds(nearest_rank(waits, 50))]
            want.append(format_seconds(nearest_rank(waits, 95)))
            assert day_row[1:] == want, f"yesterday's recorded day: {day_row}"
            assert gave_up and waits.count(0.0) < len(waits), "the day has waits and people who gave up"

            bob = await new_user(browser, "bob", hub.base_url, tmp_path)
            await bob.login()
            await bob.page.goto(url)
            await bob.page.wait_for_url(f"{url}*", timeout=30_000)
            page = await bob.page.content()
            words = set(re.findall(r"\w+", await bob.page.inner_text("body")))
            assert not {"hana", "abe"} & words, "no names for users who are not admins"
            assert not re.search(r"\b(hana|abe)\b", page), "nor anywhere in the page's markup"
            assert "waiting" in await bob.page.inner_text("body"), "the queue itself is shown"
