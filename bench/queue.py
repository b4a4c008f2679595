"""Queue store latency at 10, 1k and 100k queued entries, against a real redis-server.

Run ``python -m bench.queue`` (or ``python bench/queue.py``) from the repository root. It needs
``redis-server`` on PATH and starts its own on a free 127.0.0.1 port. It fills one pool per size
with ``rebuild``, then runs ``samples`` rounds. Each round visits every pool in a shuffled order,
so load drift on the machine hits all sizes alike. A visit enqueues a new tail entry (timed),
looks up the position of a random queued entry (timed) and grants the head (timed). The head is
then released, untimed, so each pool keeps its size.

It prints one JSON object:

- ``client_ms``: p50 and p99 per size and op as the caller sees them (client, event loop, network).
- ``server_ms``: the same from Redis's own execution times (SLOWLOG at threshold 0), which leave
  out client and scheduling noise.
- ``growth_<largest>_over_<smallest>``: the ratio of those percentiles between the largest and
  the smallest size.

Goal: position p99 < 1 ms at 100k entries, with flat growth.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's directory is sys.path[0] and would shadow the stdlib ``queue``.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
_ROOT = os.path.dirname(_HERE)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from redis.asyncio import Redis  # noqa: E402

import webhook.redis_scripts  # noqa: E402
from tests.helpers.redis_server import RedisServer, find_redis_server  # noqa: E402
from webhook.models import Holder, QueueEntry  # noqa: E402
from webhook.redis_store import RedisQueueStore  # noqa: E402

T0 = datetime(2026, 11, 28, 8, 0, 0, tzinfo=UTC)
PREFIX = "bench"
OPS = ("position", "enqueue", "grant")
# the store's scripts by the op they serve, to read Redis's own timings from SLOWLOG
_SCRIPTS = {"POSITION": "position", "ENQUEUE": "enqueue", "GRANT": "grant"}


def _entry(i: int) -> QueueEntry:
    # one arrival per 10 ms; every 7th shares its predecessor's time (a tie, broken by name)
    at = T0 + timedelta(milliseconds=10 * (i - i % 7 // 6))
    return QueueEntry(namespace="jhub", name=f"jupyter-user{i:07d}", user=f"user{i:07d}", requested_at=at)


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # the EVALSHA name, not a security use


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(_pct(values, 0.5) * 1e3, 4), "p99_ms": round(_pct(values, 0.99) * 1e3, 4)}


class _Pool:
    """One pool of a fixed size and the keys it holds, in FIFO order from ``head``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.name = f"gpu-{size}"
        self.keys = [_entry(i).key for i in range(size)]
        self.head = 0
        self.next_id = size
        self.times: dict[str, list[float]] = {op: [] for op in OPS}


async def _visit(store: RedisQueueStore, pool: _Pool, rng: random.Random) -> None:
    new = _entry(pool.next_id)
    pool.next_id += 1
    t = time.perf_counter()
    await store.enqueue(pool.name, new, 300)
    pool.times["enqueue"].append(time.perf_counter() - t)
    pool.keys.append(new.key)

    key = pool.keys[rng.randrange(pool.head, len(pool.keys))]
    t = time.perf_counter()
    found = await store.position(pool.name, key)
    pool.times["position"].append(time.perf_counter() - t)
    assert found is not None, key

    first = pool.keys[pool.head]
    namespace, _, name = first.partition("/")
    holder = Holder(namespace=namespace, name=name, granted_at=T0 + timedelta(hours=1))
    t = time.perf_counter()
    granted = await store.grant(pool.name, first, holder)
    pool.times["grant"].append(time.perf_counter() - t)
    assert granted, first
    pool.head += 1
    await store.release(pool.name, first, T0 + timedelta(hours=2))


def _server_times(log: list[dict[str, Any]], pools: list[_Pool]) -> dict[str, dict[str, dict[str, float]]]:
    """Redis's own execution time per size and op, from SLOWLOG entries ``EVALSHA sha n key...``."""
    shas = {_sha(getattr(webhook.redis_scripts, name)): op for name, op in _SCRIPTS.items()}
    by_tag = {f"{{{PREFIX}:{p.name}}}": str(p.size) for p in pools}
    found: dict[str, dict[str, list[float]]] = {str(p.size): {op: [] for op in OPS} for p in pools}
    for item in log:
        command = item.get("command", b"")
        parts = (command.decode() if isinstance(command, bytes) else str(command)).split()
        if len(parts) < 4 or parts[0].upper() != "EVALSHA" or parts[1] not in shas:
            continue
        size = by_tag.get(parts[3].partition("}")[0] + "}")
        if size is not None:
            found[size][shas[parts[1]]].append(float(item["duration"]) / 1e6)
    return {size: {op: _summary(v) for op, v in ops.items() if v} for size, ops in found.items()}


def _growth(small: dict[str, dict[str, float]], large: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        op: {q: round(large[op][f"{q}_ms"] / max(small[op][f"{q}_ms"], 1e-3), 2) for q in ("p50", "p99")}
        for op in small
        if op in large
    }


async def _run(sizes: list[int], samples: int, url: str) -> dict[str, Any]:
    rng = random.Random(1)
    store = RedisQueueStore(url, prefix=PREFIX, timeout_seconds=5.0, bulk_timeout_seconds=60.0)
    raw = Redis.from_url(url, decode_responses=True)
    pools = [_Pool(size) for size in sizes]
    try:
        fill: dict[str, float] = {}
        for pool in pools:
            started = time.perf_counter()
            await store.rebuild(pool.name, [_entry(i) for i in range(pool.size)], [])
            fill[str(pool.size)] = round(time.perf_counter() - started, 3)
        for pool in pools:  # warm-up: scripts loaded, connections open, not timed
            for _ in range(50):
                await _visit(store, pool, rng)
            pool.times = {op: [] for op in OPS}
        await raw.config_set("slowlog-log-slower-than", 0)
        await raw.config_set("slowlog-max-len", 5 * samples * len(pools) + 100)
        await raw.slowlog_reset()
        gc.collect()
        for _ in range(samples):
            for pool in rng.sample(pools, len(pools)):
                await _visit(store, pool, rng)
        server = _server_times(await raw.slowlog_get(-1), pools)
        for pool in pools:
            assert await store.length(pool.name) == pool.size
    finally:
        await store.aclose()
        await raw.aclose()

    client = {str(p.size): {op: _summary(v) for op, v in p.times.items()} for p in pools}
    small, large = str(sizes[0]), str(sizes[-1])
    return {
        "benchmark": "queue_store",
        "samples_per_size": samples,
        "client_ms": client,
        "server_ms": server,
        "fill_seconds": fill,
        f"growth_{large}_over_{small}": {
            "client": _growth(client[small], client[large]),
            "server": _growth(server[small], server[large]),
        },
        "goal": {
            "position_p99_ms_at_largest": client[large]["position"]["p99_ms"],
            "met": client[large]["position"]["p99_ms"] < 1.0,
            "server_position_p99_ms_at_largest": server[large]["position"]["p99_ms"],
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="Queue store latency against a real redis-server")
    parser.add_argument("--sizes", default="10,1000,100000", help="comma-separated queue sizes, smallest first")
    parser.add_argument("--samples", type=int, default=2000, help="timed rounds per size")
    args = parser.parse_args()
    if find_redis_server() is None:
        print(json.dumps({"error": "redis-server not found on PATH"}))
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-queue-bench-") as tmp, RedisServer(Path(tmp)) as server:
        out = asyncio.run(_run(sizes, args.samples, server.url))
    out["wall_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
