"""What ``gpu-queue status`` and ``queue`` print: pure functions from the API's answers to text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from webhook.api import EditResult, KeptPlaceList, QueueItem, QueueListing
from webhook.eta import format_eta
from webhook.models import PoolStatus


def format_duration(seconds: float) -> str:
    """Human durations with the two largest units: ``42s``, ``12m31s``, ``1h05m``, ``2d03h``."""
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """kubectl-style columns: upper-case headers, left-aligned, two spaces apart."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in [headers, *rows]
    ]
    return "\n".join(lines)


def _dash(text: str | None) -> str:
    return text if text else "-"


def render_holders(pool: PoolStatus, now: datetime) -> str:
    if not pool.holders:
        return "(no pod holds a slice)"
    rows = [
        [
            _dash(h.user),
            _dash(h.server),
            f"{h.namespace}/{h.name}",
            format_duration((now - h.granted_at).total_seconds()),
            _dash(h.node),
        ]
        for h in pool.holders
    ]
    return render_table(["USER", "SERVER", "POD", "SINCE", "NODE"], rows)


def render_kept(places: KeptPlaceList | None, now: datetime) -> str:
    """Who gets their old place back if they ask again soon (a cancel, a timeout)."""
    if places is None:
        return "(unknown while Redis is down: kept places live only there)"
    if not places.kept_places:
        return "(none)"
    rows = [
        [
            _dash(p.user),
            _dash(p.server),
            format_duration((now - p.requested_at).total_seconds()) + " ago",
            format_duration((p.expires_at - now).total_seconds()),
        ]
        for p in places.kept_places
    ]
    return render_table(["USER", "SERVER", "PLACE FROM", "EXPIRES IN"], rows)


def render_queue(listing: QueueListing, *, with_server: bool = False) -> str:
    if not listing.entries:
        return "(queue is empty)" if listing.queue_length == 0 else f"(no entries here; {listing.queue_length} queued)"
    policies = any(e.priority is not None or e.held_back is not None for e in listing.entries)
    headers = ["POS", "USER", *(["SERVER"] if with_server else []), "POD", "WAITING", "ETA"]
    headers += ["POLICY"] if policies else []
    rows = [
        [
            str(e.position),
            _dash(e.user),
            *([_dash(e.server)] if with_server else []),
            f"{e.namespace}/{e.name}",
            format_duration(e.waiting_seconds),
            format_eta(e.eta),
            *([_policy(e)] if policies else []),
        ]
        for e in listing.entries
    ]
    text = render_table(headers, rows)
    rest = listing.queue_length - listing.offset - len(listing.entries)
    if rest > 0:
        text += f"\n... and {rest} more"
    return text


def _policy(item: QueueItem) -> str:
    """What decided the place: the priority rank (and its group), a group limit holding it back."""
    parts = []
    if item.priority is not None:
        parts.append(f"rank {item.priority.rank} ({item.priority.group or 'no priority group'})")
    if item.held_back is not None:
        parts.append(f"held back: {item.held_back.group} holds {item.held_back.in_use}/{item.held_back.limit}")
    return "; ".join(parts) or "-"


def render_pool_header(pool: PoolStatus) -> str:
    free = max(0, pool.capacity - pool.in_use)
    header = (
        f"pool {pool.name} ({pool.resource}): capacity {pool.capacity}, in use {pool.in_use}, "
        f"free {free}, queued {pool.queued}"
    )
    if getattr(pool, "source", "store") == "cache":
        header += "\n(Redis is down: answered from the replica's watch cache; ETAs are unknown until it returns)"
    return header


def render_status(
    pools: Sequence[PoolStatus],
    queues: Mapping[str, QueueListing],
    now: datetime,
    kept: Mapping[str, KeptPlaceList | None] | None = None,
) -> str:
    """Per pool: a header line, the holders table, the queue table and the kept places."""
    if not pools:
        return "no pools are configured"
    blocks: list[str] = []
    for pool in pools:
        parts = [render_pool_header(pool), "", "HOLDERS", render_holders(pool, now), "", "QUEUE"]
        listing = queues.get(pool.name)
        parts.append(render_queue(listing) if listing is not None else "(queue not loaded)")
        if kept is not None:
            parts += ["", "KEPT PLACES", render_kept(kept.get(pool.name), now)]
        blocks.append("\n".join(parts))
    return "\n\n".join(blocks)


def render_edit(result: EditResult) -> str:
    pod = f"{result.namespace}/{result.name}"
    if result.action == "moved":
        return (
            f"moved {pod} in pool {result.pool} from position {result.previous_position} "
            f"to {result.position} of {result.queue_length}"
        )
    gone = "its pod was deleted" if result.pod_deleted else "its pod was already gone"
    return f"removed {pod} from pool {result.pool} (was position {result.previous_position}); {gone}"
