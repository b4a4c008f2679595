"""``webhook.dashboard``: the hub-OAuth login (against a fake hub on a test server), who sees
names, signed and expiring sessions, the rendered pages (charts, what-if, holders and queue in
order, escaping) and their security headers, and the history-backed source."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from tests.unit.test_report import synthetic_day
from webhook.dashboard import (
    SECURITY_HEADERS,
    DashboardSettings,
    HistorySource,
    HolderRow,
    PoolSnapshot,
    QueuedRow,
    create_dashboard_site,
    snapshot_from,
    with_activity,
)
from webhook.dashboard.hub import HubActivity
from webhook.dashboard.session import SESSION_COOKIE, STATE_COOKIE
from webhook.history import HistoryEvent
from webhook.models import Holder, QueueEntry
from webhook.protocols import StoreUnavailable
from webhook.report import PoolReport, build_report

PREFIX = "/services/gpu-queue/"
API_TOKEN = "service-api-token-0123456789"
DAY0 = datetime(2026, 11, 24, tzinfo=UTC)
NOW = DAY0 + timedelta(hours=14)
POOL = "gpu"
EVIL = '<script>alert("x")</script>&'
HOLDERS = ("alice", "carol")
QUEUE = ("dave", "erin", "bob")  # bob: the non-admin viewer, last in line
USERS: dict[str, dict[str, Any]] = {
    "alice": {"name": "alice", "admin": True, "groups": []},
    "bob": {"name": "bob", "admin": False, "groups": ["students"]},
    "tina": {"name": "tina", "admin": False, "groups": ["gpu-admins"]},
}

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[..., Awaitable[Client]]


# --- fakes -------------------------------------------------------------------------------------


@dataclass
class FakeHub:
    """The three hub endpoints of the OAuth flow; ``login_as`` is whom the hub's own cookie says."""

    login_as: str = "alice"
    codes: dict[str, str] = field(default_factory=dict)
    token_forms: list[dict[str, str]] = field(default_factory=list)
    refuse_tokens: bool = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/hub/api/oauth2/authorize", self.authorize)
        app.router.add_post("/hub/api/oauth2/token", self.token)
        app.router.add_get("/hub/api/user", self.user)
        return app

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        assert q["response_type"] == "code" and q["client_id"] == "service-gpu-queue"
        code = f"code-{len(self.codes)}-{self.login_as}"
        self.codes[code] = self.login_as
        target = URL(q["redirect_uri"]).update_query(code=code, state=q["state"])
        return web.Response(status=302, headers={"Location": str(target)})

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.token_forms.append(form)
        ok = (
            not self.refuse_tokens
            and form.get("client_secret") == API_TOKEN
            and form.get("grant_type") == "authorization_code"
            and form.get("redirect_uri") == f"{PREFIX}oauth_callback"
            and form.get("code") in self.codes
        )
        if not ok:
            return web.json_response({"error": "invalid_grant"}, status=400)
        return web.json_response({"access_token": f"access-{form['code']}", "token_type": "Bearer"})

    async def user(self, request: web.Request) -> web.Response:
        code = request.headers.get("Authorization", "").removeprefix("token access-")
        if code not in self.codes:
            return web.json_response({"message": "forbidden"}, status=403)
        return web.json_response({"kind": "user", **USERS[self.codes[code]]})


def pool_report(pool: str = POOL) -> PoolReport:
    events = synthetic_day(DAY0 + timedelta(hours=0), pool=pool)
    return build_report(pool, events, DAY0, DAY0 + timedelta(days=1), 4, range(4, 9))


def pool_snapshot(pool: str = POOL, queue: tuple[str, ...] = QUEUE) -> PoolSnapshot:
    return PoolSnapshot(
        pool=pool,
        capacity=4,
        in_use=3,
        holders=tuple(
            HolderRow(user=u, server="gpu-box" if i else "", since=NOW - timedelta(minutes=50 - 10 * i))
            for i, u in enumerate(HOLDERS)
        ),
        queue=tuple(QueuedRow(user=u, server="", waited_seconds=600.0 - 120 * i) for i, u in enumerate(queue)),
        taken_at=NOW,
    )


@dataclass
class FakeSource:
    snapshots: dict[str, PoolSnapshot]
    failing: set[str] = field(default_factory=set)
    asked_days: list[int] = field(default_factory=list)

    async def pools(self) -> list[str]:
        return list(self.snapshots)

    async def snapshot(self, pool: str) -> PoolSnapshot:
        if pool in self.failing:
            raise StoreUnavailable("redis holders failed: connection refused")
        return self.snapshots[pool]

    async def report(self, pool: str, days: int) -> PoolReport:
        self.asked_days.append(days)
        return pool_report(pool)


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Browser:
    """A dashboard client (with its cookie jar) plus its visits to the hub."""

    client: Client
    hub_client: Client
    hub: FakeHub
    source: FakeSource
    clock: Clock

    async def login(self, user: str = "alice", start: str = PREFIX) -> str:
        """The whole round trip; returns where the callback sends the browser."""
        self.hub.login_as = user
        first = await self.client.get(start, allow_redirects=False)
        assert first.status == 302, await first.text()
        at_hub = await self.hub_client.get(URL(first.headers["Location"]).path_qs, allow_redirects=False)
        assert at_hub.status == 302
        back = await self.client.get(at_hub.headers["Location"], allow_redirects=False)
        assert back.status == 302, await back.text()
        return back.headers["Location"]

    async def page(self, path: str = PREFIX) -> tuple[int, str]:
        response = await self.client.get(path, allow_redirects=False)
        return response.status, await response.text()


@pytest.fixture
def make_browser(aiohttp_client: Any, aiohttp_server: Any) -> Callable[..., Awaitable[Browser]]:
    async def make(source: FakeSource | None = None, **settings: Any) -> Browser:
        hub = FakeHub()
        hub_server: TestServer = await aiohttp_server(hub.app())
        values: dict[str, Any] = {
            "hub_api_url": str(hub_server.make_url("/hub/api")),
            "hub_public_url": str(hub_server.make_url("/")),
            "oauth_redirect_uri": f"{PREFIX}oauth_callback",  # the proxy's origin: the dashboard's here
            "api_token": API_TOKEN,
            **settings,
        }
        clock = Clock()
        source = source or FakeSource({POOL: pool_snapshot()})
        app = create_dashboard_site(DashboardSettings.model_validate(values), source, clock=clock)
        client = await aiohttp_client(app)
        return Browser(client, await aiohttp_client(hub_server), hub, source, clock)

    return make


# --- login -------------------------------------------------------------------------------------


async def test_unauthenticated_page_redirects_to_hub_authorize_with_client_id_redirect_uri_and_state(
    make_browser: Callable[..., Awaitable[Browser]],
) -> None:
    b = await make_browser()
    response = await b.client.get(PREFIX, allow_redirects=False)
    assert response.status == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/hub/api/oauth2/authorize"
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["client_id"] == "service-gpu-queue"
    assert query["redirect_uri"] == f"{PREFIX}oauth_callback"
    assert query["response_type"] == "code"
    assert len(query["state"]) >= 20
    assert response.cookies[STATE_COOKIE]["path"] == PREFIX


async def test_login_round_trip_sets_a_hardened_session_cookie_and_shows_the_overview(
    make_browser: Callable[..., Awaitable[Browser]],
) -> None:
    b = await make_browser()
    assert await b.login() == PREFIX
    form = b.hub.token_forms[0]
    assert form["client_id"] == "service-gpu-queue" and form["client_secret"] == API_TOKEN
    cookie = next(c for c in b.client.session.cookie_jar if c.key == SESSION_COOKIE)
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == PREFIX
    assert not cookie["secure"]  # plain http here; https gets Secure (next test)
    status, html = await b.page()
    assert status == 200 and "Signed in as <strong>alice</strong> (hub admin)" in html


async def test_session_cookie_is_secure_when_the_proxy_says_https(
    make_browser: Callable[..., Awaitable[Browser]],
) -> None:
    b = await make_browser()
    response = await b.client.get(PREFIX, headers={"X-Forwarded-Proto": "https"}, allow_redirects=False)
    assert response.cookies[STATE_COOKIE]["secure"]


async def test_login_returns_to_the_page_that_started_it(make_browser: Callable[..., Awaitable[Browser]]) -> None:
    b = await make_browser()
    assert await b.login(start=f"{PREFIX}pools/{POOL}?days=1") == f"{PREFIX}pools/{POOL}?days=1"


@pytest.mark.parametrize("state", ["forged-state", ""])
async def test_callback_with_a_state_this_browser_did_not_send_is_refused(
    make_browser: Callable[..., Awaitable[Browser]], state: str
) -> None:
    b = await make_browser()
    first = await b.client.get(PREFIX, allow_redirects=False)
    at_hub = await b.hub_client.get(URL(first.headers["Location"]).path_qs, allow_redirects=False)
    code = parse_qs(urlsplit(at_hub.headers["Location"]).query)["code"][0]
    response = await b.client.get(f"{PREFIX}oauth_callback", params={"code": code, "state": state})
    assert response.status in (400, 403)
    assert SESSION_COOKIE not in response.cookies
    assert b.hub.token_forms == []  # the code is never traded on a forged callback


async def test_callback_without_the_state_cookie_is_refused(make_browser: Callable[..., Awaitable[Browser]]) -> None:
    b = await make_browser()
    first = await b.client.get(PREFIX, allow_redirects=False)
    at_hub = await b.hub_client.get(URL(first.headers["Location"]).path_qs, allow_redirects=False)
    b.client.session.cookie_jar.clear()  # a victim's browser lured to the attacker's callback URL
    response = await b.client.get(at_hub.headers["Location"], allow_redirects=False)
    assert response.status == 403 and SESSION_COOKIE not in response.cookies


async def test_hub_refusing_the_code_is_a_502_page_without_a_session(
    make_browser: Callable[..., Awaitable[Browser]],
) -> None:
    b = await make_browser()
    b.hub.refuse_tokens = True
    first = await b.client.get(PREFIX, allow_redirects=False)
    at_hub = await b.hub_client.get(URL(first.headers["Location"]).path_qs, allow_redirects=False)
    response = await b.client.get(at_hub.headers["Location"], allow_redirects=False)
    assert response.status == 502 and "HTTP 400" in await response.text()
    assert SESSION_COOKIE not in response.cookies


async def test_tampered_session_cookie_is_treated_as_logged_out(
    make_browser: Callable[..., Awaitable[Browser]],
) -> None:
    b = await make_browser()
    await b.login(user="bob")
    value = next(c.value for c in b.client.session.cookie_jar if c.key == SESSION_COOKIE)
    body, _, mac = value.partition(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    admin = base64.urlsafe_b64encode(json.dumps({**payload, "a": True}).encode()).decode().rstrip("=")
    forged = f"{admin}.{mac}"  # bob makes himself an admin, keeping his MAC
    for bad in (forged, f"{body}.{mac[:-2]}xx", "garbage", f"{body}."):
        b.client.session.cookie_jar.update_cookies({SESSION_COOKIE: bad}, URL(str(b.client.make_url(PREFIX))))
        status, _ = await b.page()
        assert status == 302, bad


async def test_expired_session_sends_the_browser_back_to_the_hub(
    make_browser: Callable[..., Awaitable[Browser]],
) -> None:
    b = await make_browser(session_seconds=600)
    await b.login()
    b.clock.now += timedelta(seconds=599)
    assert (await b.page())[0] == 200
    b.clock.now += timedelta(seconds=2)
    response = await b.client.get(PREFIX, allow_redirects=False)
    assert response.status == 302 and "/hub/api/oauth2/authorize" in response.headers["Location"]
    assert await b.login() == PREFIX and (await b.page())[0] == 200


async def test_non_html_client_without_session_gets_401_not_a_redirect(
    make_browser: Callable[..., Awaitable[Browser]],
) -> None:
    b = await make_browser()
    response = await b.client.get(PREFIX, headers={"Accept": "application/json"}, allow_redirects=False)
    assert response.status == 401


async def test_logout_forgets_the_session(make_browser: Callable[..., Awaitable[Browser]]) -> None:
    b = await make_browser()
    await b.login()
    status, html = await b.page(f"{PREFIX}logout")
    assert status == 200 and "signed out" in html
    assert (await b.page())[0] == 302


async def test_login_logs_the_user_but_never_tokens_codes_or_cookies(
    make_browser: Callable[..., Awaitable[Browser]], caplog: pytest.LogCaptureFixture
) -> None:
    b = await make_browser()
    with caplog.at_level(logging.DEBUG):
        await b.login()
        await b.page()
    cookie = next(c.value for c in b.client.session.cookie_jar if c.key == SESSION_COOKIE)
    # Not aiohttp's access log: the server's runner turns it off (a callback URL carries the code).
    records = [r for r in caplog.records if r.name != "aiohttp.access"]
    logged = "\n".join(f"{r.getMessage()} {getattr(r, 'ctx', '')}" for r in records)
    assert "alice" in logged
    for secret in (API_TOKEN, *b.hub.codes, cookie, "access-code"):
        assert secret not in logged


# --- who sees what -----------------------------------------------------------------------------


async def test_admin_sees_user_names(make_browser: Callable[..., Awaitable[Browser]]) -> None:
    b = await make_browser()
    await b.login(user="alice")
    _, html = await b.page()
    for name in (*HOLDERS, *QUEUE):
        assert f"<td>{name}</td>" in html


async def test_non_admin_sees_no_names_but_their_own_server_as_you(
    make_browser: Callable[..., Awaitable[Browser]],
) -> None:
    b = await make_browser(names_for="admins")
    await b.login(user="bob")
    status, html = await b.page()
    assert status == 200
    for name in ("alice", "carol", "dave", "erin", "gpu-box"):
        assert name not in html
    assert "<strong>you</strong>" in html and "User names are hidden" in html


async def test_non_admin_is_forbidden_with_a_page_saying_who_they_are_when_non_admins_are_not_allowed(
    make_browser: Callable[..., Awaitable[Browser]],
) -> None:
    b = await make_browser(allow_non_admins=False, admin_groups=["gpu-admins"])
    await b.login(user="bob")
    status, html = await b.page()
    assert status == 403
    assert "signed in to the hub as bob" in html and "admin" in html and "gpu-admins" in html
    assert "carol" not in html


async def test_member_of_an_admin_group_counts_as_admin(make_browser: Callable[..., Awaitable[Browser]]) -> None:
    b = await make_browser(allow_non_admins=False, admin_groups=["gpu-admins"])
    await b.login(user="tina")
    status, html = await b.page()
    assert status == 200 and "<td>carol</td>" in html


@pytest.mark.parametrize(("names_for", "user", "shown"), [("everyone", "bob", True), ("nobody", "alice", False)])
async def test_names_for_decides_who_sees_names(
    make_browser: Callable[..., Awaitable[Browser]], names_for: str, user: str, shown: bool
) -> None:
    b = await make_browser(names_for=names_for)
    await b.login(user=user)
    _, html = await b.page()
    assert ("<td>carol</td>" in html) is shown


# --- the pages ---------------------------------------------------------------------------------


async def test_overview_has_the_three_charts_and_the_what_if_table_with_its_sentences(
    make_browser: Callable[..., Awaitable[Browser]],
) -> None:
    b = await make_browser()
    await b.login()
    _, html = await b.page()
    for kind in ("gq-slices", "gq-waits", "gq-share"):
        assert html.count(f'class="gq-chart {kind}"') == 1, kind
    assert "<table class=whatif><caption>" in html
    report = pool_report()
    assert [w.slices for w in report.what_if] == [4, 5, 6, 7, 8]
    for row in report.what_if:
        assert f"<li>{row.summary}</li>" in html
    assert '<tr class="current"><th scope=row class="n">4 (now)</th>' in html
    assert '<meta http-equiv="refresh" content="30">' in html


async def test_overview_lists_holders_and_the_queue_in_order_with_waits(
    make_browser: Callable[..., Awaitable[Browser]],
) -> None:
    b = await make_browser()
    await b.login()
    _, html = await b.page()
    queue = html[html.index("Waiting, in order (3)") :]
    positions = [queue.index(f"<td>{name}</td>") for name in QUEUE]
    assert positions == sorted(positions)
    assert '<th scope=row class="n">1</th><td>dave</td><td>default</td><td class="n">10 min</td>' in queue
    holders = html[html.index("Holding a slice (2)") : html.index("Waiting, in order")]
    assert "<td>alice</td><td>default</td><td>2026-11-24 13:10 UTC</td>" in holders
    assert "<strong>3 / 4</strong> slices in use" in html and "<strong>3</strong> waiting" in html


async def test_malicious_pool_and_user_names_are_escaped_everywhere(
    make_browser: Callable[..., Awaitable[Browser]],
) -> None:
    source = FakeSource({EVIL: pool_snapshot(EVIL, queue=(EVIL, "bob"))})
    b = await make_browser(source)
    await b.login()
    status, overview = await b.page()
    link = unescape(re.search(r'<h2 id="[^"]+">Pool <a href="([^"]+)"', overview)[1])  # type: ignore[index]
    for path in (PREFIX, link):
        status, page = await b.page(path)
        assert status == 200, path
        assert "<script" not in page and EVIL not in page
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
    assert "Pool &lt;script&gt;" in page and "Waiting, in order (2)" in page


async def test_pool_page_shows_the_per_day_table_for_the_asked_period(
    make_browser: Callable[..., Awaitable[Browser]],
) -> None:
    b = await make_browser()
    await b.login()
    status, html = await b.page(f"{PREFIX}pools/{POOL}?days=30")
    assert status == 200 and b.source.asked_days[-1] == 30
    assert "<caption>Requests and waits per UTC day</caption>" in html
    assert "<th scope=row>2026-11-24</th>" in html
    assert "aria-current=page>the last 30 days</a>" in html


async def test_unknown_pool_is_404_and_a_bad_period_is_400(make_browser: Callable[..., Awaitable[Browser]]) -> None:
    b = await make_browser()
    await b.login()
    assert (await b.page(f"{PREFIX}pools/nope"))[0] == 404
    for days in ("0", "31", "x", "-1"):
        assert (await b.page(f"{PREFIX}?days={days}"))[0] == 400, days


async def test_a_pool_whose_live_state_fails_still_shows_its_history_and_the_other_pools(
    make_browser: Callable[..., Awaitable[Browser]],
) -> None:
    source = FakeSource({POOL: pool_snapshot(), "other": pool_snapshot("other")}, failing={POOL})
    b = await make_browser(source)
    await b.login()
    status, html = await b.page()
    assert status == 200
    assert "Live state unavailable: the queue store (Redis) is unavailable" in html
    assert html.count('class="gq-chart gq-slices"') == 2 and "Waiting, in order (3)" in html


async def test_every_answer_carries_the_security_headers(make_browser: Callable[..., Awaitable[Browser]]) -> None:
    b = await make_browser()
    answers = [await b.client.get(PREFIX, allow_redirects=False)]
    await b.login()
    for path in (PREFIX, f"{PREFIX}pools/{POOL}", f"{PREFIX}pools/nope", f"{PREFIX}?days=0", f"{PREFIX}logout"):
        answers.append(await b.client.get(path, allow_redirects=False))
    assert [a.status for a in answers] == [302, 200, 200, 404, 400, 200]
    for answer in answers:
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers[name] == value, (answer.url, name)
    assert "script-src" not in SECURITY_HEADERS["Content-Security-Policy"]


# --- settings and the history-backed source ----------------------------------------------------


def test_settings_default_to_jupyterhubs_service_conventions() -> None:
    s = DashboardSettings(hub_api_url="http://hub:8081/hub/api/", api_token=API_TOKEN)
    assert s.oauth_client_id == "service-gpu-queue" and s.mount_path == "/services/gpu-queue"
    assert s.redirect_uri == "/services/gpu-queue/oauth_callback"
    assert s.token_url == "http://hub:8081/hub/api/oauth2/token"
    public = s.model_copy(update={"hub_public_url": "https://hub.example.org"})
    assert public.redirect_uri == "https://hub.example.org/services/gpu-queue/oauth_callback"
    assert public.authorize_url == "https://hub.example.org/hub/api/oauth2/authorize"
    assert s.signing_key("session") != s.signing_key("state")
    env = DashboardSettings.from_env(
        {
            "JUPYTERHUB_API_URL": "http://hub:8081/hub/api",
            "JUPYTERHUB_API_TOKEN": "t",
            "JUPYTERHUB_SERVICE_PREFIX": "/x/",
        }
    )
    assert env.service_prefix == "/x/" and env.oauth_client_id == "service-x"
    with pytest.raises(ValueError, match="api_token"):
        DashboardSettings(hub_api_url="http://hub", api_token="")
    with pytest.raises(ValueError, match="service_prefix"):
        DashboardSettings(hub_api_url="http://hub", api_token="t", service_prefix="/")


def test_snapshot_from_store_shapes_orders_holders_by_grant_and_counts_waits() -> None:
    holders = [
        Holder(namespace="jhub", name=f"jupyter-{u}", user=u, granted_at=NOW - timedelta(minutes=m))
        for u, m in (("late", 5), ("early", 30))
    ]
    entries = [QueueEntry(namespace="jhub", name="jupyter-q", user="q", requested_at=NOW - timedelta(seconds=90))]
    snap = snapshot_from(POOL, 4, 2, holders, entries, NOW)
    assert [h.user for h in snap.holders] == ["early", "late"]
    assert snap.queue == (QueuedRow(user="q", server="", waited_seconds=90.0),)


@dataclass
class FakeHistory:
    events: list[HistoryEvent]
    reads: list[tuple[str, datetime | None, datetime | None]] = field(default_factory=list)

    async def read(
        self, pool: str, since: datetime | None = None, until: datetime | None = None, limit: int | None = None
    ) -> list[HistoryEvent]:
        self.reads.append((pool, since, until))
        return [e for e in self.events if (since is None or e.at >= since) and (until is None or e.at <= until)]


async def test_history_source_builds_the_report_like_the_cli_and_keeps_it_a_minute() -> None:
    history = FakeHistory(synthetic_day(DAY0))
    clock = Clock(DAY0 + timedelta(days=1))

    async def live(pool: str) -> PoolSnapshot:
        return pool_snapshot(pool)

    source = HistorySource(history, live, lambda: {POOL: 4}, clock=clock, report_ttl_seconds=60)
    assert await source.pools() == [POOL]
    report = await source.report(POOL, 1)
    assert report == build_report(POOL, history.events, DAY0, clock.now, 4, range(4, 9))
    clock.now += timedelta(seconds=59)
    assert await source.report(POOL, 1) is report and len(history.reads) == 1
    clock.now += timedelta(seconds=2)
    await source.report(POOL, 1)
    assert len(history.reads) == 2
    assert (await source.snapshot(POOL)).pool == POOL


async def test_history_source_sizes_the_what_if_from_the_peak_when_capacity_is_auto() -> None:
    history = FakeHistory(synthetic_day(DAY0, capacity=3))
    source = HistorySource(history, lambda pool: _never(), lambda: {POOL: None}, clock=Clock(DAY0 + timedelta(days=1)))
    report = await source.report(POOL, 1)
    assert [w.slices for w in report.what_if] == list(range(report.peak_in_use, 2 * report.peak_in_use + 1))


async def _never() -> PoolSnapshot:
    raise AssertionError("not asked")


# --- the hub's activity of the holders ------------------------------------------------------------


@dataclass
class ActivityHub:
    """``GET /hub/api/users/{name}`` as JupyterHub answers a token with ``read:servers``."""

    servers: dict[str, dict[str, Any]]
    status: int = 200
    asked: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/hub/api/users/{name}", self.user)
        return app

    async def user(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.asked.append(name)
        if request.headers.get("Authorization") != f"token {API_TOKEN}":
            return web.json_response({"message": "bad token"}, status=403)
        if self.status != 200:
            return web.json_response({"message": "Action is not authorized"}, status=self.status)
        if name not in self.servers:
            return web.json_response({"message": "No such user"}, status=404)
        return web.json_response({"kind": "user", "name": name, "servers": self.servers[name]})


async def activity_of(
    aiohttp_server: Any, hub: ActivityHub, users: list[str], **kw: Any
) -> tuple[HubActivity, dict[tuple[str, str], datetime]]:
    server: TestServer = await aiohttp_server(hub.app())
    settings = DashboardSettings(hub_api_url=str(server.make_url("/hub/api")), api_token=API_TOKEN)
    activity = HubActivity(settings, **kw)
    return activity, await activity.last_activity(users)


async def test_holders_last_activity_comes_from_each_servers_last_activity_on_the_hub(aiohttp_server: Any) -> None:
    hub = ActivityHub(
        {
            "alice": {"": {"name": "", "last_activity": "2026-11-24T13:48:00.123000Z", "ready": True}},
            "carol": {
                "gpu-box": {"name": "gpu-box", "last_activity": "2026-11-24T12:00:00+00:00"},
                "other": {"name": "other", "last_activity": None},
            },
        }
    )
    _, found = await activity_of(aiohttp_server, hub, ["alice", "carol", "carol", "nobody"])
    assert found == {
        ("alice", ""): datetime(2026, 11, 24, 13, 48, 0, 123000, tzinfo=UTC),
        ("carol", "gpu-box"): datetime(2026, 11, 24, 12, tzinfo=UTC),
    }, "a server without activity and a user the hub does not know are simply not reported"
    assert sorted(hub.asked) == ["alice", "carol", "nobody"], "one request per user"


async def test_hub_activity_is_asked_once_per_ttl(aiohttp_server: Any) -> None:
    hub = ActivityHub({"alice": {"": {"last_activity": "2026-11-24T13:48:00Z"}}})
    ticks = iter([0.0, 10.0, 31.0])
    activity, _ = await activity_of(aiohttp_server, hub, ["alice"], clock=lambda: next(ticks))
    await activity.last_activity(["alice"])
    assert hub.asked == ["alice"], "a reload inside the TTL asks nobody"
    await activity.last_activity(["alice"])
    assert hub.asked == ["alice", "alice"], "after the TTL the hub is asked again"


async def test_a_token_without_read_servers_means_not_reported_logged_once_without_the_token(
    aiohttp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hub = ActivityHub({"alice": {"": {"last_activity": "2026-11-24T13:48:00Z"}}}, status=403)
    caplog.set_level(logging.WARNING, logger="webhook.dashboard")
    activity, found = await activity_of(aiohttp_server, hub, ["alice", "carol"], ttl_seconds=0.0)
    await activity.last_activity(["alice"])
    assert found == {}
    warnings = [r for r in caplog.records if "activity" in r.getMessage()]
    assert len(warnings) == 1, "the same failure is logged once"
    assert "HTTP 403" in str(getattr(warnings[0], "ctx", {}))
    assert API_TOKEN not in caplog.text


async def test_an_unreachable_hub_leaves_the_holders_without_activity(aiohttp_server: Any) -> None:
    settings = DashboardSettings(hub_api_url="http://127.0.0.1:9/hub/api", api_token=API_TOKEN)
    assert await HubActivity(settings).last_activity(["alice"]) == {}


async def test_holders_table_says_when_each_was_last_active_and_for_how_long_idle(
    make_browser: Callable[..., Awaitable[Browser]],
) -> None:
    snapshot = with_activity(
        pool_snapshot(),
        {("alice", ""): NOW - timedelta(minutes=42), ("carol", "gpu-box"): NOW - timedelta(seconds=20)},
    )
    browser = await make_browser(FakeSource({POOL: snapshot}))
    await browser.login("alice")
    _, page = await browser.page()
    text = re.sub(r"<[^>]+>", " ", unescape(page))
    assert "Last active" in text
    assert re.search(r"alice\s+default\s+\S+ \S+ UTC\s+50 min\s+2026-11-24 13:18 UTC \(idle 42 min\)", text), text
    assert "13:59 UTC (just now)" in text

    plain = await make_browser(FakeSource({POOL: pool_snapshot()}))
    await plain.login("alice")
    _, page = await plain.page()
    assert page.count("not reported by the hub") == len(HOLDERS)
