"""``gpu-queue report``: the queue's history read straight from Redis (``webhook.history``),
turned into figures by ``webhook.report`` (pure), printed as text or JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from webhook.config import Config, ConfigError, load_config
from webhook.history import HistoryStore
from webhook.protocols import StoreUnavailable
from webhook.report import PoolReport, build_report, default_what_if_counts, no_history_text, render_text, report_json


def _redis_where(url: str) -> str:
    """host:port of a Redis URL, never its password."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or parts.path or "?"
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "the configured address"


async def _pool_reports(config: Config, args: argparse.Namespace) -> list[PoolReport]:
    until = datetime.now(UTC)
    since = until - timedelta(days=args.days)
    store = HistoryStore.from_config(config)
    try:
        names = [args.pool] if args.pool is not None else await store.pools()
        reports = []
        for name in names:
            events = await store.read(name, since, until)
            pool = config.pools.get(name)
            capacity = pool.capacity if pool is not None and isinstance(pool.capacity, int) else None
            counts = args.what_if
            if counts is None:
                counts = default_what_if_counts(capacity, events, since, until)
            reports.append(build_report(name, events, since, until, capacity, list(counts)))
        return reports
    finally:
        await store.aclose()


def run_report(args: argparse.Namespace) -> int:
    """``gpu-queue report``: reads the history straight from Redis (``webhook.history``), so it
    needs the service's Redis URL; the numbers are made in ``webhook.report``."""
    history_log = logging.getLogger("webhook.history")
    if not history_log.handlers:  # the one-line error below says it; no stray log line
        history_log.addHandler(logging.NullHandler())
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"gpu-queue: {exc}", file=sys.stderr)
        return 1
    try:
        reports = asyncio.run(_pool_reports(config, args))
    except StoreUnavailable as exc:
        where = _redis_where(config.redis.url.get_secret_value())
        reason = str(exc).partition(" failed: ")[2] or str(exc)  # "redis history_read failed: <reason>"
        print(
            f"gpu-queue: cannot read the queue history from Redis at {where} ({reason}): point redis.url in --config "
            "(or GPU_QUEUE_REDIS__URL) at the service's Redis, or run the report in a gpu-queue pod (kubectl exec)",
            file=sys.stderr,
        )
        return 1
    if args.output == "json":
        sys.stdout.write(json.dumps(report_json(reports), indent=2, ensure_ascii=False) + "\n")
        return 0
    text = render_text(reports) if reports else no_history_text(None, args.days)
    if not config.history.enabled:
        text += "\n(history.enabled is false in this configuration: a leader that runs with it records no history)"
    sys.stdout.write(text + "\n")
    return 0
