"""RedisQueueStore specifics against a real redis-server: keys, registry, prefixes, concurrency, faults.

What every ``QueueStore`` promises (order, kept places, grants, moves, rebuilds) is in
``test_store_contract.py``, which runs on this store and on the in-memory one.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from redis.asyncio import Redis

from tests.helpers.clock import FakeClock
from tests.helpers.queue_records import POOL, T0, entry, holder_for, queued_keys
from tests.helpers.redis_server import RedisServer
from webhook.config import load_config
from webhook.metrics import REGISTRY
from webhook.models import Holder, QueueEntry
from webhook.protocols import StoreUnavailable
from webhook.redis_store import RedisQueueStore

pytestmark = pytest.mark.redis


def errors_counted(op: str) -> float:
    return REGISTRY.get_sample_value("gpu_queue_redis_errors_total", {"op": op}) or 0.0


# -- keys, registry, prefixes ------------------------------------------------------------------


async def test_an_expired_tombstone_is_deleted_from_redis(
    store: RedisQueueStore, clock: FakeClock, redis_server: RedisServer, prefix: str
) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    clock.advance(300)
    back = await store.enqueue(POOL, entry("jupyter-alice", 400), 300)
    assert back.requested_at == T0 + timedelta(seconds=400)
    raw = Redis.from_url(redis_server.url)
    try:
        assert await raw.hlen(f"{{{prefix}:{POOL}}}:tombs") == 0
        assert await raw.zcard(f"{{{prefix}:{POOL}}}:tomb-expiry") == 0
    finally:
        await raw.aclose()


async def test_another_replica_learns_the_pools_from_the_registry(
    store: RedisQueueStore, redis_server: RedisServer, prefix: str
) -> None:
    alice_big = entry("jupyter-alice-big", 2, user="alice", server="big")
    await store.enqueue("a100", alice_big, 300)
    await store.grant("a100", alice_big.key, holder_for(alice_big))
    other = RedisQueueStore(redis_server.url, prefix=prefix)  # no pool list of its own
    try:
        assert {pool for pool, _ in await other.find_user("alice", "big")} == {"a100"}
    finally:
        await other.aclose()


async def test_from_config_uses_url_prefix_and_searches_the_configured_pools(
    store: RedisQueueStore, redis_server: RedisServer, prefix: str
) -> None:
    await store.enqueue("gpu", entry("jupyter-alice", 1), 300)
    raw = Redis.from_url(redis_server.url)
    try:
        await raw.delete(f"{{{prefix}}}:pools")  # the registry is gone; the config still names gpu
    finally:
        await raw.aclose()
    config = load_config(env={"GPU_QUEUE_REDIS__URL": redis_server.url, "GPU_QUEUE_REDIS__KEYPREFIX": prefix})
    assert "gpu" in config.pools
    configured = RedisQueueStore.from_config(config)
    try:
        assert [item.key for _, item in await configured.find_user("alice", "")] == ["jhub/jupyter-alice"]
    finally:
        await configured.aclose()


async def test_two_prefixes_on_one_redis_do_not_see_each_other(redis_server: RedisServer) -> None:
    one = RedisQueueStore(redis_server.url, prefix=f"one-{uuid.uuid4().hex[:6]}")
    two = RedisQueueStore(redis_server.url, prefix=f"two-{uuid.uuid4().hex[:6]}")
    try:
        await one.enqueue(POOL, entry("jupyter-alice", 1), 300)
        await two.enqueue(POOL, entry("jupyter-bob", 1), 300)
        await two.rebuild(POOL, [entry("jupyter-carol", 2)], [])
        assert await queued_keys(one) == ["jhub/jupyter-alice"]
        assert await queued_keys(two) == ["jhub/jupyter-carol"]
        assert await two.find_user("alice", "") == []
    finally:
        await one.aclose()
        await two.aclose()


# -- atomicity under concurrency ----------------------------------------------------------------


async def test_concurrent_enqueues_and_grants_from_two_clients_never_double_count(
    redis_server: RedisServer, prefix: str
) -> None:
    a = RedisQueueStore(redis_server.url, prefix=prefix, timeout_seconds=10)
    b = RedisQueueStore(redis_server.url, prefix=prefix, timeout_seconds=10)
    rng = random.Random(20261128)
    entries = [entry(f"jupyter-u{i:03}", rng.randint(0, 3)) for i in range(100)]
    try:
        jobs: list[tuple[str, QueueEntry, RedisQueueStore]] = []
        for e in entries:
            jobs += [("enqueue", e, a), ("enqueue", e, b)]
        for e in entries[:50]:
            jobs += [("grant", e, a), ("grant", e, b)]
        rng.shuffle(jobs)

        async def run(op: str, e: QueueEntry, s: RedisQueueStore) -> tuple[str, bool]:
            if op == "enqueue":
                await s.enqueue(POOL, e, 300)
                return e.key, False
            return e.key, await s.grant(POOL, e.key, holder_for(e))

        results = await asyncio.gather(*(run(op, e, s) for op, e, s in jobs))

        granted = [key for key, ok in results if ok]
        queued = set(await queued_keys(a))
        holding = {h.key for h in await b.holders(POOL)}
        assert len(granted) == len(set(granted)), "a key was granted twice"
        assert holding == set(granted)
        assert queued.isdisjoint(holding)
        assert queued | holding == {e.key for e in entries}
        assert len(await a.wait_samples(POOL)) == len(granted)
    finally:
        await a.aclose()
        await b.aclose()


# -- faults: dead, hung, flushed Redis ----------------------------------------------------------


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll a condition until a deadline (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


async def test_dead_redis_fails_fast_with_store_unavailable_and_recovers_after_restart(
    own_redis: RedisServer,
) -> None:
    timeout = 0.5
    store = RedisQueueStore(own_redis.url, prefix="fault", timeout_seconds=timeout)
    try:
        await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
        own_redis.kill()
        before = errors_counted("position")

        calls = {
            "position": store.position(POOL, "jhub/jupyter-alice"),
            "enqueue": store.enqueue(POOL, entry("jupyter-bob", 2), 300),
            "grant": store.grant(POOL, "jhub/jupyter-alice", holder_for(entry("jupyter-alice", 1))),
            "rebuild": store.rebuild(POOL, [], []),
        }
        for op, call in calls.items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=op):
                await call
            assert time.monotonic() - started < timeout + 0.5, op
        assert errors_counted("position") == before + 1
        assert await store.ping() is False

        own_redis.restart()
        await _eventually(store.ping)
        # the restart lost the data and the script cache: NOSCRIPT is reloaded transparently
        await store.enqueue(POOL, entry("jupyter-bob", 2), 300)
        assert await store.position(POOL, "jhub/jupyter-bob") == (1, 1)
    finally:
        await store.aclose()


async def test_hung_redis_fails_within_the_timeout_instead_of_hanging(own_redis: RedisServer) -> None:
    timeout = 0.3
    store = RedisQueueStore(own_redis.url, prefix="hung", timeout_seconds=timeout)
    try:
        await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
        own_redis.pause()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.position(POOL, "jhub/jupyter-alice")
        assert time.monotonic() - started < timeout + 0.5
        own_redis.resume()
        await _eventually(store.ping)
        assert await store.position(POOL, "jhub/jupyter-alice") == (1, 1)
    finally:
        own_redis.resume()
        await store.aclose()


async def test_flushall_then_rebuild_restores_the_same_order_and_holders(
    own_redis: RedisServer, clock: FakeClock
) -> None:
    own = RedisQueueStore(own_redis.url, prefix="flush", clock=clock)
    try:
        rng = random.Random(7)
        for i in range(40):
            await own.enqueue(POOL, entry(f"jupyter-u{i:02}", rng.randint(0, 9), ns=f"hub-{i % 3}"), 300)
        for key in (await queued_keys(own, POOL))[:3]:
            ns, _, name = key.partition("/")
            await own.grant(POOL, key, Holder(namespace=ns, name=name, granted_at=T0 + timedelta(minutes=1)))
        before_entries = await own.entries(POOL)
        before_holders = await own.holders(POOL)

        own_redis.flushall()
        assert await own.length(POOL) == 0

        await own.rebuild(POOL, before_entries, before_holders)
        assert await own.entries(POOL) == before_entries
        assert await own.holders(POOL) == before_holders
        assert await own.find_user(before_entries[0].user, "") == [(POOL, before_entries[0])]
    finally:
        await own.aclose()
