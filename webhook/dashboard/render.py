"""The dashboard's HTML: small pure functions from views to strings, no template engine.

Every piece of text that came from outside (pool, user and server names, error messages) goes
through ``_e`` (``html.escape``, quotes included), and every URL built from a name is quoted
before it is escaped. Charts come from ``webhook.charts`` (which escapes its own text). The page
carries its CSS inline (light and dark by ``prefers-color-scheme``) and reloads itself with a
``<meta http-equiv="refresh">``, so it needs no script, font or CDN and works offline.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote

from webhook.charts import share_waiting_bar, slices_in_use_chart, wait_percentiles_chart
from webhook.dashboard.session import Viewer
from webhook.dashboard.source import HolderRow, PoolSnapshot
from webhook.report import PoolReport, format_seconds, format_share, no_history_text, period_text

PERIODS: Final = (1, 7, 30)
HIDDEN: Final = "another user"

_CSS: Final = """
:root{color-scheme:light dark;--bg:#f6f8fa;--card:#fff;--fg:#1f2328;--muted:#57606a;--line:#d0d7de;
--accent:#0969da;--warn:#9a6700;--bad:#cf222e;--mark:#ddf4ff}
@media (prefers-color-scheme:dark){:root{--bg:#010409;--card:#0d1117;--fg:#e6edf3;--muted:#9198a1;
--line:#30363d;--accent:#58a6ff;--warn:#d29922;--bad:#ff7b72;--mark:#0c2d6b}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}
header,main,footer{max-width:1240px;margin:0 auto;padding:12px 16px}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:8px 24px}
h1{font-size:22px;margin:0}h2{font-size:18px;margin:0 0 4px}h3{font-size:14px;margin:16px 0 6px}
a{color:var(--accent)}
.who,.muted,caption,footer{color:var(--muted)}
nav ul{list-style:none;display:flex;gap:12px;margin:0;padding:0}
nav a[aria-current]{font-weight:600;color:var(--fg);text-decoration:none}
.pool{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px;margin:0 0 16px}
.stats{display:flex;flex-wrap:wrap;gap:4px 24px;margin:4px 0 8px}
.stats strong{font-size:20px}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:8px 24px;align-items:start}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
caption{text-align:left;padding:0 0 4px;caption-side:top}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600}td.n,th.n{text-align:right}
tr.current{background:var(--mark)}
.empty{color:var(--muted);font-style:italic}
.error{color:var(--bad)}
.sentences{margin:6px 0 0;padding-left:20px}
svg.gq-chart{max-width:100%;height:auto}
.share{display:flex;align-items:center;gap:12px}
""".strip()


@dataclass(frozen=True)
class PoolView:
    """One pool's card: its live state and report, or why either is missing."""

    pool: str
    snapshot: PoolSnapshot | None
    report: PoolReport | None
    snapshot_error: str = ""
    report_error: str = ""


@dataclass(frozen=True)
class PageContext:
    """What every page's header needs, and whose names it may show."""

    prefix: str
    viewer: Viewer
    show_names: bool
    days: int
    now: datetime
    refresh_seconds: int


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _stamp(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _anchor(pool: str) -> str:
    """An id for any pool name: names may hold anything, ids may not."""
    return "pool-" + hashlib.sha256(pool.encode()).hexdigest()[:10]


def pool_url(prefix: str, pool: str, days: int) -> str:
    return f"{prefix}pools/{quote(pool, safe='')}?days={days}"


def document(title: str, body: str, *, refresh_seconds: int = 0) -> str:
    """A whole page; ``refresh_seconds`` > 0 reloads it (no script needed)."""
    refresh = f'<meta http-equiv="refresh" content="{refresh_seconds}">' if refresh_seconds > 0 else ""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'{refresh}<meta name="referrer" content="no-referrer"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _header(ctx: PageContext, heading: str, days_url: Callable[[int], str]) -> str:
    role = "hub admin" if ctx.viewer.admin else "hub user"
    links = "".join(
        f'<li><a href="{_e(days_url(d))}"{" aria-current=page" if d == ctx.days else ""}>{_e(period_text(d))}</a></li>'
        for d in PERIODS
    )
    refresh = f" · reloads every {ctx.refresh_seconds} s" if ctx.refresh_seconds > 0 else ""
    return (
        f"<header><h1>{_e(heading)}</h1>"
        f'<p class="who">Signed in as <strong>{_e(ctx.viewer.name)}</strong> ({role}) · '
        f'<a href="{_e(ctx.prefix)}logout">Log out</a></p>'
        f'<nav aria-label="Period"><ul>{links}</ul></nav>'
        f'<p class="muted">Updated {_e(_stamp(ctx.now))}{refresh}</p></header>'
    )


def _privacy_note(ctx: PageContext) -> str:
    if ctx.show_names:
        return ""
    return '<p class="muted">User names are hidden here; your own servers are marked “you”.</p>'


def _who(user: str, server: str, ctx: PageContext) -> tuple[str, str]:
    """(user cell, server cell): names when allowed, "you" for the viewer's own, else neither."""
    if ctx.show_names:
        return _e(user or "-"), _e(server or "default")
    if user and user == ctx.viewer.name:
        return "<strong>you</strong>", _e(server or "default")
    return f'<span class="muted">{HIDDEN}</span>', '<span class="muted">-</span>'


def render_holders(snapshot: PoolSnapshot, ctx: PageContext) -> str:
    caption = f"Holding a slice ({len(snapshot.holders)})"
    if not snapshot.holders:
        return f'<table><caption>{caption}</caption><tr><td class="empty">nobody holds a slice</td></tr></table>'
    rows = []
    for holder in snapshot.holders:
        user, server = _who(holder.user, holder.server, ctx)
        held = format_seconds(max((snapshot.taken_at - holder.since).total_seconds(), 0.0))
        rows.append(
            f'<tr><td>{user}</td><td>{server}</td><td>{_e(_stamp(holder.since))}</td><td class="n">{_e(held)}</td>'
            f"<td>{_idle(holder, snapshot.taken_at)}</td></tr>"
        )
    return (
        f"<table><caption>{caption}</caption><thead><tr><th scope=col>User</th><th scope=col>Server</th>"
        f'<th scope=col>Since</th><th scope=col class="n">For</th><th scope=col>Last active</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _idle(holder: HolderRow, now: datetime) -> str:
    """The hub's last activity: when, and how long ago (what the idle culler counts)."""
    if holder.last_activity is None:
        return '<span class="muted">not reported by the hub</span>'
    idle = (now - holder.last_activity).total_seconds()
    ago = "just now" if idle < 60 else f"idle {format_seconds(idle)}"
    return f"{_e(_stamp(holder.last_activity))} ({_e(ago)})"


def render_queue(snapshot: PoolSnapshot, ctx: PageContext) -> str:
    caption = f"Waiting, in order ({len(snapshot.queue)})"
    if not snapshot.queue:
        return f'<table><caption>{caption}</caption><tr><td class="empty">nobody is waiting</td></tr></table>'
    rows = []
    for position, item in enumerate(snapshot.queue, start=1):
        user, server = _who(item.user, item.server, ctx)
        rows.append(
            f'<tr><th scope=row class="n">{position}</th><td>{user}</td><td>{server}</td>'
            f'<td class="n">{_e(format_seconds(item.waited_seconds))}</td></tr>'
        )
    return (
        f'<table><caption>{caption}</caption><thead><tr><th scope=col class="n">#</th><th scope=col>User</th>'
        f'<th scope=col>Server</th><th scope=col class="n">Waiting</th></tr></thead><tbody>{"".join(rows)}</tbody>'
        "</table>"
    )


def _chart(draw: Callable[[], str]) -> str:
    """A chart, or a line saying it could not be drawn: one odd number must not cost the page."""
    try:
        return draw()
    except ValueError as exc:
        return f'<p class="error">chart unavailable: {_e(exc)}</p>'


def render_charts(report: PoolReport, capacity: int) -> str:
    series = [(step.at, step.in_use) for step in report.in_use]
    days = [(d.day, d.wait_p50_seconds, d.wait_p95_seconds) for d in report.by_day]
    return (
        '<div class="cols">'
        f"<div><h3>Slices in use</h3>"
        f"{_chart(lambda: slices_in_use_chart(series, capacity, report.since, report.until, width=580))}</div>"
        f"<div><h3>Wait for a slice per day</h3>{_chart(lambda: wait_percentiles_chart(days, width=580))}</div>"
        "</div>"
        "<h3>Share of time someone was waiting</h3>"
        f'<div class="share">{_chart(lambda: share_waiting_bar(report.share_time_waiting, width=480))}</div>'
    )


def render_what_if(report: PoolReport, capacity: int | None) -> str:
    if not report.what_if:
        return ""
    rows = []
    for row in report.what_if:
        current = ' class="current"' if row.slices == capacity else ""
        mark = " (now)" if row.slices == capacity else ""
        rows.append(
            f'<tr{current}><th scope=row class="n">{row.slices}{mark}</th>'
            f'<td class="n">{_e(format_seconds(row.wait_p50_seconds))}</td>'
            f'<td class="n">{_e(format_seconds(row.wait_p95_seconds))}</td>'
            f'<td class="n">{_e(format_share(row.share_queued))}</td>'
            f'<td class="n">{_e(format_share(row.share_started_within_5_min))}</td>'
            f'<td class="n">{row.abandoned}</td></tr>'
        )
    sentences = "".join(f"<li>{_e(row.summary)}</li>" for row in report.what_if)
    return (
        "<h3>What if the pool had another number of slices</h3>"
        f"<table class=whatif><caption>The requests of {_e(period_text(report.period_days))} replayed in strict "
        "FIFO order against each slice count</caption><thead><tr>"
        '<th scope=col class="n">Slices</th><th scope=col class="n">Wait p50</th>'
        '<th scope=col class="n">Wait p95</th><th scope=col class="n">Had to queue</th>'
        '<th scope=col class="n">Started within 5 min</th><th scope=col class="n">Gave up</th>'
        f'</tr></thead><tbody>{"".join(rows)}</tbody></table><ul class="sentences">{sentences}</ul>'
    )


def render_days(report: PoolReport) -> str:
    """The per-day table (the pool page only: the overview has the chart)."""
    rows = "".join(
        f'<tr><th scope=row>{d.day.isoformat()}</th><td class="n">{d.arrivals}</td><td class="n">{d.grants}</td>'
        f'<td class="n">{d.cancels}</td><td class="n">{_e(format_seconds(d.wait_p50_seconds))}</td>'
        f'<td class="n">{_e(format_seconds(d.wait_p95_seconds))}</td></tr>'
        for d in report.by_day
    )
    return (
        "<h3>Per day</h3><table><caption>Requests and waits per UTC day</caption><thead><tr>"
        '<th scope=col>Day (UTC)</th><th scope=col class="n">Requests</th><th scope=col class="n">Granted</th>'
        '<th scope=col class="n">Cancelled</th><th scope=col class="n">Wait p50</th>'
        f'<th scope=col class="n">Wait p95</th></tr></thead><tbody>{rows}</tbody></table>'
    )


def _stats(view: PoolView) -> str:
    parts = []
    if view.snapshot is not None:
        s = view.snapshot
        parts.append(f"<span><strong>{s.in_use} / {s.capacity}</strong> slices in use</span>")
        parts.append(f"<span><strong>{len(s.queue)}</strong> waiting</span>")
    if view.report is not None:
        r = view.report
        parts.append(
            f"<span>{_e(period_text(r.period_days))}: {r.arrivals} requests, wait p50 "
            f"{_e(format_seconds(r.wait_p50_seconds))}, p95 {_e(format_seconds(r.wait_p95_seconds))}</span>"
        )
    return f'<p class="stats">{"".join(parts)}</p>'


def render_pool_card(view: PoolView, ctx: PageContext, *, detail: bool = False) -> str:
    """One pool: state, holders, queue, charts, what-if; ``detail`` adds the per-day table."""
    hid = _anchor(view.pool)
    link = pool_url(ctx.prefix, view.pool, ctx.days)
    title = _e(view.pool) if detail else f'<a href="{_e(link)}">{_e(view.pool)}</a>'
    parts = [f'<section class="pool" aria-labelledby="{hid}"><h2 id="{hid}">Pool {title}</h2>', _stats(view)]
    if view.snapshot is not None:
        parts.append(f'<div class="cols"><div>{render_holders(view.snapshot, ctx)}</div>')
        parts.append(f"<div>{render_queue(view.snapshot, ctx)}</div></div>")
    else:
        parts.append(f'<p class="error">Live state unavailable: {_e(view.snapshot_error or "unknown error")}</p>')
    if view.report is not None:
        report = view.report
        capacity = view.snapshot.capacity if view.snapshot is not None else report.capacity
        if report.events == 0:
            parts.append(f'<p class="muted">{_e(no_history_text(view.pool, report.period_days))}</p>')
        parts.append(render_charts(report, capacity if capacity is not None else report.peak_in_use))
        parts.append(render_what_if(report, capacity))
        if detail:
            parts.append(render_days(report))
    else:
        parts.append(f'<p class="error">History unavailable: {_e(view.report_error or "unknown error")}</p>')
    parts.append("</section>")
    return "\n".join(parts)


def render_overview(views: Sequence[PoolView], ctx: PageContext) -> str:
    """The start page: every pool's card."""
    body = [
        _header(ctx, "GPU queue", lambda d: f"{ctx.prefix}?days={d}"),
        "<main>",
        _privacy_note(ctx),
        *(render_pool_card(v, ctx) for v in views),
    ]
    if not views:
        body.append('<p class="empty">No pools are configured.</p>')
    body += ["</main>", _footer()]
    return document("GPU queue", "\n".join(body), refresh_seconds=ctx.refresh_seconds)


def render_pool_page(view: PoolView, ctx: PageContext) -> str:
    """One pool with the per-day table, and the way back to the overview."""
    body = [
        _header(ctx, f"GPU queue: pool {view.pool}", lambda d: pool_url(ctx.prefix, view.pool, d)),
        f'<main><p><a href="{_e(ctx.prefix)}?days={ctx.days}">All pools</a></p>',
        _privacy_note(ctx),
        render_pool_card(view, ctx, detail=True),
        "</main>",
        _footer(),
    ]
    return document(f"GPU queue: pool {view.pool}", "\n".join(body), refresh_seconds=ctx.refresh_seconds)


def _footer() -> str:
    return (
        "<footer>Times in UTC. Waits are from the queue's history; the what-if replays the same "
        "requests and cannot know how people would have behaved with more slices.</footer>"
    )


def render_message(title: str, message: str, *, link: tuple[str, str] | None = None) -> str:
    """An error or notice page (no refresh: it would repeat the error)."""
    more = f'<p><a href="{_e(link[0])}">{_e(link[1])}</a></p>' if link is not None else ""
    return document(title, f"<main><h1>{_e(title)}</h1><p>{_e(message)}</p>{more}</main>")


def render_forbidden(name: str, admin_groups: Sequence[str], logout_url: str) -> str:
    """Who they are and what to ask for: a hub user, not an admin, on a dashboard for admins."""
    groups = f" or membership of the hub group(s) {', '.join(admin_groups)}" if admin_groups else ""
    message = (
        f"You are signed in to the hub as {name}, but this dashboard is for hub admins only. "
        f"Ask a hub admin for admin rights on the hub{groups}, or to let hub users see the "
        "dashboard without names (allow_non_admins)."
    )
    return render_message("Not allowed", message, link=(logout_url, "Sign out of the dashboard"))
