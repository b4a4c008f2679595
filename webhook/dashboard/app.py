"""The dashboard's aiohttp sub-app: the pages, the hub login around them, the security headers.

Mounted at the service prefix (``DashboardSettings.mount_path``), because the hub's proxy keeps
the prefix. Each page asks for a session first: none (or a bad or expired one) sends an HTML
client to the hub's authorize URL and anything else gets a 401; a hub user who is not an admin
gets a 403 page unless ``allow_non_admins``, and then the view without names.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from webhook.dashboard.hub import HubError, authorize_url, user_for_code
from webhook.dashboard.render import (
    PageContext,
    PoolView,
    render_forbidden,
    render_message,
    render_overview,
    render_pool_page,
)
from webhook.dashboard.session import (
    SESSION_COOKIE,
    STATE_COOKIE,
    STATE_SECONDS,
    Viewer,
    check_state,
    new_state,
    session_value,
    state_value,
    viewer_of,
)
from webhook.dashboard.settings import DashboardSettings
from webhook.dashboard.source import DashboardSource
from webhook.protocols import StoreUnavailable

log = logging.getLogger("webhook.dashboard")

SETTINGS_KEY: Final = web.AppKey("gpu_queue_dashboard_settings", DashboardSettings)
SOURCE_KEY: Final = web.AppKey[DashboardSource]("gpu_queue_dashboard_source")
CLOCK_KEY: Final = web.AppKey[Callable[[], datetime]]("gpu_queue_dashboard_clock")

# 'none' for everything but inline styles (the page's and the charts') and data: images; the
# reload is a <meta> refresh, so no script is allowed at all.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _message(status: int, title: str, message: str, link: tuple[str, str] | None = None) -> web.Response:
    return _html(render_message(title, message, link=link), status)


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer of the sub-app, errors included, carries the headers; an HTTP error is a page."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _message(exc.status, exc.reason, exc.text or exc.reason)
    response.headers.update(SECURITY_HEADERS)
    return response


def _secure(request: web.Request) -> bool:
    """Secure cookies when the browser's side is https: directly, or as the hub's proxy says."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def _set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str, seconds: float) -> None:
    settings = request.app[SETTINGS_KEY]
    response.set_cookie(
        name,
        value,
        max_age=int(seconds),
        path=settings.service_prefix,
        httponly=True,
        samesite="Lax",
        secure=_secure(request),
    )


def _delete_cookie(request: web.Request, response: web.StreamResponse, name: str) -> None:
    settings = request.app[SETTINGS_KEY]
    response.del_cookie(name, path=settings.service_prefix, httponly=True, samesite="Lax", secure=_secure(request))


def _wants_html(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return not accept or "text/html" in accept or "*/*" in accept


def _safe_next(settings: DashboardSettings, path: str) -> str:
    """Only a path of this dashboard: never another site or another service (open redirect)."""
    ok = path.startswith(settings.service_prefix) and "\\" not in path and not path.startswith("//")
    return path if ok else settings.service_prefix


def _login(request: web.Request) -> web.Response:
    """Off to the hub, remembering (signed) the state it must bring back and where to return."""
    settings = request.app[SETTINGS_KEY]
    if not _wants_html(request):
        return web.Response(status=401, text="log in through the hub: open this page in a browser")
    state = new_state()
    response = web.Response(status=302, headers={"Location": authorize_url(settings, state)})
    cookie = state_value(settings.signing_key("state"), state, _safe_next(settings, request.path_qs), _now(request))
    _set_cookie(request, response, STATE_COOKIE, cookie, STATE_SECONDS)
    return response


def _now(request: web.Request) -> datetime:
    return request.app[CLOCK_KEY]()


def _viewer(request: web.Request) -> Viewer | web.Response:
    """The signed-in viewer, or the answer to give instead (the login redirect, the 403 page)."""
    settings = request.app[SETTINGS_KEY]
    viewer = viewer_of(settings.signing_key("session"), request.cookies.get(SESSION_COOKIE), _now(request))
    if viewer is None:
        return _login(request)
    if not viewer.admin and not settings.allow_non_admins:
        return _html(render_forbidden(viewer.name, settings.admin_groups, f"{settings.service_prefix}logout"), 403)
    return viewer


def _days(request: web.Request) -> int | web.Response:
    settings = request.app[SETTINGS_KEY]
    raw = request.query.get("days", str(settings.default_days))
    if not raw.isdigit() or not 1 <= int(raw) <= settings.max_days:
        return _message(400, "Bad period", f"days must be a whole number from 1 to {settings.max_days}")
    return int(raw)


def _context(request: web.Request, viewer: Viewer, days: int) -> PageContext:
    settings = request.app[SETTINGS_KEY]
    names = settings.names_for == "everyone" or (settings.names_for == "admins" and viewer.admin)
    return PageContext(
        prefix=settings.service_prefix,
        viewer=viewer,
        show_names=names,
        days=days,
        now=_now(request),
        refresh_seconds=settings.refresh_seconds,
    )


def _failure(pool: str, part: str, result: BaseException) -> str:
    """What the page says about a part that failed; the log gets the detail."""
    if not isinstance(result, Exception):
        raise result  # cancellation and friends are not a page's business
    if isinstance(result, StoreUnavailable):
        log.warning("dashboard: queue store unavailable", extra={"ctx": {"pool": pool, "part": part}})
        return "the queue store (Redis) is unavailable; the page reloads by itself"
    log.error("dashboard: %s failed", part, exc_info=result, extra={"ctx": {"pool": pool}})
    return "an internal error (see the service's log)"


async def _pool_view(source: DashboardSource, pool: str, days: int) -> PoolView:
    """Live state and report at once; either may fail without taking the other with it."""
    snapshot, report = await asyncio.gather(source.snapshot(pool), source.report(pool, days), return_exceptions=True)
    return PoolView(
        pool=pool,
        snapshot=None if isinstance(snapshot, BaseException) else snapshot,
        report=None if isinstance(report, BaseException) else report,
        snapshot_error=_failure(pool, "snapshot", snapshot) if isinstance(snapshot, BaseException) else "",
        report_error=_failure(pool, "report", report) if isinstance(report, BaseException) else "",
    )


async def _pools(request: web.Request) -> list[str] | web.Response:
    try:
        return await request.app[SOURCE_KEY].pools()
    except Exception as exc:
        reason = _failure("-", "pools", exc)
        return _message(503, "Dashboard unavailable", f"The pools cannot be listed: {reason}.")


async def _page(request: web.Request) -> tuple[Viewer, int, list[str]] | web.Response:
    """Who asks, for which period, and the pools; or the answer that ends the request (a login
    to do, a bad period, pools that cannot be listed)."""
    viewer = _viewer(request)
    if isinstance(viewer, web.Response):
        return viewer
    days = _days(request)
    if isinstance(days, web.Response):
        return days
    pools = await _pools(request)
    if isinstance(pools, web.Response):
        return pools
    return viewer, days, pools


async def overview(request: web.Request) -> web.Response:
    """Every pool's card."""
    page = await _page(request)
    if isinstance(page, web.Response):
        return page
    viewer, days, pools = page
    source = request.app[SOURCE_KEY]
    views = await asyncio.gather(*(_pool_view(source, pool, days) for pool in pools))
    return _html(render_overview(views, _context(request, viewer, days)))


async def pool_page(request: web.Request) -> web.Response:
    """One pool, with the per-day table."""
    page = await _page(request)
    if isinstance(page, web.Response):
        return page
    viewer, days, pools = page
    pool = request.match_info["pool"]
    prefix = request.app[SETTINGS_KEY].service_prefix
    if pool not in pools:
        return _message(404, "No such pool", f"There is no pool named {pool}.", (prefix, "All pools"))
    view = await _pool_view(request.app[SOURCE_KEY], pool, days)
    return _html(render_pool_page(view, _context(request, viewer, days)))


async def oauth_callback(request: web.Request) -> web.Response:
    """The hub sends the browser back here with a code: check the state, ask the hub who it is,
    keep that in the session cookie and go where the login started."""
    settings = request.app[SETTINGS_KEY]
    prefix = settings.service_prefix
    again = (prefix, "Try again")
    if "error" in request.query:
        return _message(403, "Login refused", f"The hub did not log you in: {request.query['error']}.", again)
    code, state = request.query.get("code", ""), request.query.get("state", "")
    if not code or not state:
        return _message(400, "Bad login callback", "The callback is missing its code or state.", again)
    next_path = check_state(settings.signing_key("state"), request.cookies.get(STATE_COOKIE), state, _now(request))
    if next_path is None:
        log.warning("dashboard login refused: state does not match this browser's login")
        return _message(
            403, "Login not started here", "This login was not started by this browser, or took too long.", again
        )
    try:
        user = await user_for_code(settings, code)
    except HubError as exc:
        log.warning("dashboard login failed", extra={"ctx": {"reason": str(exc)}})
        return _message(502, "Login failed", f"The hub did not complete the login: {exc}.", again)
    admin = user.is_admin(settings.admin_groups)
    viewer = Viewer(name=user.name, admin=admin, expires=_now(request).timestamp() + settings.session_seconds)
    log.info("dashboard login", extra={"ctx": {"user": user.name, "admin": admin}})
    response = web.Response(status=302, headers={"Location": _safe_next(settings, next_path)})
    _set_cookie(
        request,
        response,
        SESSION_COOKIE,
        session_value(settings.signing_key("session"), viewer),
        settings.session_seconds,
    )
    _delete_cookie(request, response, STATE_COOKIE)
    return response


async def logout(request: web.Request) -> web.Response:
    """Forget the session here; the hub's own login is the hub's (its logout is on the hub)."""
    settings = request.app[SETTINGS_KEY]
    response = _message(
        200, "Signed out", "You are signed out of the GPU queue dashboard.", (settings.service_prefix, "Sign in again")
    )
    _delete_cookie(request, response, SESSION_COOKIE)
    return response


def create_dashboard_app(
    settings: DashboardSettings,
    source: DashboardSource,
    *,
    clock: Callable[[], datetime] = _utcnow,
) -> web.Application:
    """The dashboard as a sub-app: ``parent.add_subapp(settings.mount_path, app)``."""
    app = web.Application(middlewares=[security_headers])
    app[SETTINGS_KEY] = settings
    app[SOURCE_KEY] = source
    app[CLOCK_KEY] = clock
    app.router.add_get("/", overview, name="overview")
    app.router.add_get("/pools/{pool}", pool_page, name="pool")
    app.router.add_get("/oauth_callback", oauth_callback, name="oauth_callback")
    app.router.add_get("/logout", logout, name="logout")
    return app


def create_dashboard_site(
    settings: DashboardSettings,
    source: DashboardSource,
    *,
    clock: Callable[[], datetime] = _utcnow,
) -> web.Application:
    """A root app holding only the dashboard at its prefix: for a port of its own, the one the
    hub's ``services.gpu-queue.url`` points at."""
    root = web.Application()
    root.add_subapp(settings.mount_path, create_dashboard_app(settings, source, clock=clock))
    return root
