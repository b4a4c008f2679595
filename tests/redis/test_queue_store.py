"""RedisQueueStore against a real redis-server: order, places, grants, admin edits, faults."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from tests.helpers.clock import FakeClock
from tests.helpers.redis_server import RedisServer
from webhook.config import load_config
from webhook.metrics import REGISTRY
from webhook.models import Holder, QueueEntry, score_of
from webhook.protocols import StoreUnavailable
from webhook.redis_store import RedisQueueStore

pytestmark = pytest.mark.redis

T0 = datetime(2026, 11, 28, 15, 0, 0, tzinfo=UTC)
POOL = "gpu"


def entry(name: str, at: float = 0.0, *, ns: str = "jhub", user: str | None = None, server: str = "") -> QueueEntry:
    return QueueEntry(
        namespace=ns,
        name=name,
        user=name.removeprefix("jupyter-") if user is None else user,
        server=server,
        requested_at=T0 + timedelta(seconds=at),
        uid=f"uid-{name}",
    )


def holder_for(e: QueueEntry, granted_after: float = 60.0, *, user: str | None = None) -> Holder:
    return Holder(
        namespace=e.namespace,
        name=e.name,
        user=e.user if user is None else user,
        server=e.server,
        granted_at=e.requested_at + timedelta(seconds=granted_after),
        node="gpu-node-1",
    )


async def queued_keys(store: RedisQueueStore, pool: str = POOL) -> list[str]:
    return [e.key for e in await store.entries(pool)]


def errors_counted(op: str) -> float:
    return REGISTRY.get_sample_value("gpu_queue_redis_errors_total", {"op": op}) or 0.0


# -- FIFO order and positions -----------------------------------------------------------------


async def test_entries_come_out_in_requested_at_order_not_arrival_order(store: RedisQueueStore) -> None:
    for name, at in [("jupyter-carol", 3), ("jupyter-alice", 1), ("jupyter-bob", 2)]:
        await store.enqueue(POOL, entry(name, at), 300)
    assert await queued_keys(store) == ["jhub/jupyter-alice", "jhub/jupyter-bob", "jhub/jupyter-carol"]


async def test_equal_requested_at_is_ordered_by_namespace_then_name(store: RedisQueueStore) -> None:
    for ns, name in [("hub-b", "jupyter-a"), ("hub-a", "jupyter-z"), ("hub-a", "jupyter-b")]:
        await store.enqueue(POOL, entry(name, 5, ns=ns), 300)
    assert await queued_keys(store) == ["hub-a/jupyter-b", "hub-a/jupyter-z", "hub-b/jupyter-a"]


async def test_one_microsecond_earlier_wins_over_name_order(store: RedisQueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-a", 1.000001), 300)
    await store.enqueue(POOL, entry("jupyter-z", 1.0), 300)
    assert await queued_keys(store) == ["jhub/jupyter-z", "jhub/jupyter-a"]


async def test_requested_at_round_trips_exactly_to_the_microsecond(store: RedisQueueStore) -> None:
    when = datetime(2026, 11, 28, 16, 14, 6, 123457, tzinfo=UTC)
    e = QueueEntry(namespace="jhub", name="jupyter-alice", user="alice", requested_at=when, uid="u1")
    returned = await store.enqueue(POOL, e, 300)
    [listed] = await store.entries(POOL)
    assert returned == e
    assert listed == e
    assert listed.requested_at == when


async def test_positions_are_one_based_with_the_queue_length(store: RedisQueueStore) -> None:
    names = [f"jupyter-u{i}" for i in range(5)]
    for i, name in enumerate(names):
        await store.enqueue(POOL, entry(name, i), 300)
    assert [await store.position(POOL, f"jhub/{n}") for n in names] == [(i, 5) for i in range(1, 6)]
    assert await store.position(POOL, "jhub/jupyter-nobody") is None
    assert await store.length(POOL) == 5


async def test_entries_slice_uses_inclusive_zero_based_bounds(store: RedisQueueStore) -> None:
    for i in range(6):
        await store.enqueue(POOL, entry(f"jupyter-u{i}", i), 300)
    assert [e.name for e in await store.entries(POOL, 1, 3)] == ["jupyter-u1", "jupyter-u2", "jupyter-u3"]
    assert [e.name for e in await store.entries(POOL, 4)] == ["jupyter-u4", "jupyter-u5"]
    assert await store.entries("empty-pool") == []


async def test_enqueue_of_a_queued_key_keeps_the_first_requested_at(store: RedisQueueStore) -> None:
    first = await store.enqueue(POOL, entry("jupyter-alice", 10), 300)
    again = await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    assert again.requested_at == first.requested_at == T0 + timedelta(seconds=10)
    assert await store.length(POOL) == 1


# -- place kept (I5) ----------------------------------------------------------------------------


async def test_returning_user_gets_the_old_place_back_within_keep_place(
    store: RedisQueueStore, clock: FakeClock
) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.enqueue(POOL, entry("jupyter-bob", 2), 300)
    removed = await store.remove(POOL, "jhub/jupyter-alice", 300)
    assert removed is not None and removed.requested_at == T0 + timedelta(seconds=1)
    assert [t.user for t in await store.tombstones(POOL)] == ["alice"]

    clock.advance(299)
    back = await store.enqueue(POOL, entry("jupyter-alice", 400), 300)

    assert back.requested_at == T0 + timedelta(seconds=1)
    assert await queued_keys(store) == ["jhub/jupyter-alice", "jhub/jupyter-bob"]
    assert await store.tombstones(POOL) == []


async def test_tombstone_is_used_once(store: RedisQueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    await store.enqueue(POOL, entry("jupyter-alice", 50), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 0)
    again = await store.enqueue(POOL, entry("jupyter-alice", 90), 300)
    assert again.requested_at == T0 + timedelta(seconds=90)


async def test_tombstone_restores_the_place_for_a_new_pod_name_of_the_same_server(store: RedisQueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    back = await store.enqueue(POOL, entry("jupyter-alice-2", 70, user="alice"), 300)
    assert back.key == "jhub/jupyter-alice-2"
    assert back.requested_at == T0 + timedelta(seconds=1)


async def test_expired_tombstone_is_ignored_and_deleted(
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


async def test_tombstone_belongs_to_one_user_and_server(store: RedisQueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    other_server = await store.enqueue(POOL, entry("jupyter-alice-big", 50, user="alice", server="big"), 300)
    other_user = await store.enqueue(POOL, entry("jupyter-bob", 60), 300)
    assert other_server.requested_at == T0 + timedelta(seconds=50)
    assert other_user.requested_at == T0 + timedelta(seconds=60)
    assert [t.user for t in await store.tombstones(POOL)] == ["alice"]


async def test_a_second_removal_keeps_the_earlier_place(store: RedisQueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    await store.enqueue(POOL, entry("jupyter-alice", 50), 0)  # not restored: keep-place off
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    [tomb] = await store.tombstones(POOL)
    assert tomb.requested_at == T0 + timedelta(seconds=1)


async def test_remove_without_keep_place_or_without_user_leaves_no_tombstone(store: RedisQueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.enqueue(POOL, entry("jupyter-anon", 2, user=""), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 0)
    await store.remove(POOL, "jhub/jupyter-anon", 300)
    assert await store.tombstones(POOL) == []
    assert await store.remove(POOL, "jhub/jupyter-alice", 300) is None


async def test_enqueue_with_keep_place_zero_does_not_restore_a_place(store: RedisQueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    back = await store.enqueue(POOL, entry("jupyter-alice", 40), 0)
    assert back.requested_at == T0 + timedelta(seconds=40)


async def test_enqueue_honours_a_lowered_keep_place(store: RedisQueueStore, clock: FakeClock) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    clock.advance(120)
    back = await store.enqueue(POOL, entry("jupyter-alice", 200), 60)
    assert back.requested_at == T0 + timedelta(seconds=200)


# -- grant, release, holders --------------------------------------------------------------------


async def test_grant_moves_the_entry_to_the_holders_and_records_its_wait(store: RedisQueueStore) -> None:
    e = entry("jupyter-alice", 1)
    await store.enqueue(POOL, e, 300)
    h = Holder(namespace="jhub", name="jupyter-alice", granted_at=e.requested_at + timedelta(seconds=751.5))

    assert await store.grant(POOL, e.key, h) is True

    assert await store.position(POOL, e.key) is None
    [held] = await store.holders(POOL)
    assert (held.key, held.user, held.uid) == (e.key, "alice", "uid-jupyter-alice")  # filled from the entry
    assert held.requested_at == e.requested_at
    assert held.granted_at == h.granted_at
    assert await store.wait_samples(POOL) == [751.5]


async def test_grant_of_a_key_that_is_not_queued_is_refused(store: RedisQueueStore) -> None:
    e = entry("jupyter-alice", 1)
    await store.enqueue(POOL, e, 300)
    assert await store.grant(POOL, e.key, holder_for(e)) is True
    assert await store.grant(POOL, e.key, holder_for(e)) is False
    assert await store.grant(POOL, "jhub/jupyter-ghost", holder_for(entry("jupyter-ghost"))) is False
    assert len(await store.holders(POOL)) == 1
    assert len(await store.wait_samples(POOL)) == 1


async def test_holder_keeps_the_place_restored_from_a_tombstone_as_requested_at(store: RedisQueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    back = await store.enqueue(POOL, entry("jupyter-alice", 100), 300)
    await store.grant(POOL, back.key, holder_for(entry("jupyter-alice", 100), 20))
    [held] = await store.holders(POOL)
    assert held.requested_at == T0 + timedelta(seconds=1)
    assert await store.wait_samples(POOL) == [119.0]


async def test_enqueue_of_a_holding_key_does_not_queue_it_again(store: RedisQueueStore) -> None:
    e = entry("jupyter-alice", 1)
    await store.enqueue(POOL, e, 300)
    await store.grant(POOL, e.key, holder_for(e))
    await store.enqueue(POOL, entry("jupyter-alice", 500), 300)
    assert await store.position(POOL, e.key) is None
    assert [h.key for h in await store.holders(POOL)] == [e.key]


async def test_release_drops_the_holder_and_records_the_release_time(store: RedisQueueStore) -> None:
    e = entry("jupyter-alice", 1)
    await store.enqueue(POOL, e, 300)
    await store.grant(POOL, e.key, holder_for(e))
    at = T0 + timedelta(hours=1, microseconds=7)

    released = await store.release(POOL, e.key, at)

    assert released is not None and released.key == e.key
    assert await store.holders(POOL) == []
    assert await store.release_times(POOL) == [at]
    assert await store.release(POOL, e.key, at + timedelta(seconds=1)) is None
    assert await store.release_times(POOL) == [at]


async def test_holders_are_listed_oldest_grant_first(store: RedisQueueStore) -> None:
    for name, granted_after in [("jupyter-a", 30), ("jupyter-b", 10), ("jupyter-c", 20)]:
        e = entry(name, 0)
        await store.enqueue(POOL, e, 300)
        await store.grant(POOL, e.key, holder_for(e, granted_after))
    assert [h.name for h in await store.holders(POOL)] == ["jupyter-b", "jupyter-c", "jupyter-a"]


async def test_statistics_are_capped_and_newest_first(redis_server: RedisServer, prefix: str) -> None:
    store = RedisQueueStore(redis_server.url, prefix=prefix, stats_cap=3)
    try:
        for i in range(5):
            e = entry(f"jupyter-u{i}", 0)
            await store.enqueue(POOL, e, 300)
            await store.grant(POOL, e.key, holder_for(e, 10 * (i + 1)))
            await store.release(POOL, e.key, T0 + timedelta(minutes=i))
        assert await store.wait_samples(POOL) == [50.0, 40.0, 30.0]
        assert await store.release_times(POOL) == [T0 + timedelta(minutes=m) for m in (4, 3, 2)]
        assert await store.release_times(POOL, limit=1) == [T0 + timedelta(minutes=4)]
    finally:
        await store.aclose()


# -- admin move ---------------------------------------------------------------------------------


async def _five(store: RedisQueueStore) -> list[str]:
    for i, name in enumerate("abcde"):
        await store.enqueue(POOL, entry(f"jupyter-{name}", 10 * i), 300)
    return await queued_keys(store)


@pytest.mark.parametrize(
    ("name", "to", "expected"),
    [
        ("e", 1, "eabcd"),  # before the head
        ("a", 5, "bcdea"),  # after the tail
        ("a", 99, "bcdea"),  # past the tail means the tail
        ("d", 2, "adbce"),  # forward, between neighbours
        ("b", 4, "acdbe"),  # backward, between neighbours
        ("c", 3, "abcde"),  # in place: unchanged
    ],
)
async def test_move_puts_the_entry_at_the_requested_position(
    store: RedisQueueStore, name: str, to: int, expected: str
) -> None:
    await _five(store)
    moved = await store.move(POOL, f"jhub/jupyter-{name}", to)
    order = await store.entries(POOL)
    assert "".join(e.name.removeprefix("jupyter-") for e in order) == expected
    assert moved is not None
    assert moved in order  # the returned entry carries the new requested-at, and the user fields
    assert await store.position(POOL, moved.key) == (min(to, 5), 5)


async def test_move_gives_a_time_strictly_between_the_new_neighbours(store: RedisQueueStore) -> None:
    await _five(store)
    moved = await store.move(POOL, "jhub/jupyter-e", 2)
    assert moved is not None
    assert T0 < moved.requested_at < T0 + timedelta(seconds=10)


async def test_move_between_tied_neighbours_uses_their_time_when_the_name_sorts_between(
    store: RedisQueueStore,
) -> None:
    await store.enqueue(POOL, entry("jupyter-a", 5), 300)
    await store.enqueue(POOL, entry("jupyter-c", 5), 300)
    await store.enqueue(POOL, entry("jupyter-b", 9), 300)
    moved = await store.move(POOL, "jhub/jupyter-b", 2)
    assert moved is not None and moved.requested_at == T0 + timedelta(seconds=5)
    assert await queued_keys(store) == ["jhub/jupyter-a", "jhub/jupyter-b", "jhub/jupyter-c"]


async def test_move_of_an_unknown_key_or_to_position_zero(store: RedisQueueStore) -> None:
    await _five(store)
    assert await store.move(POOL, "jhub/jupyter-ghost", 1) is None
    with pytest.raises(ValueError, match="position"):
        await store.move(POOL, "jhub/jupyter-a", 0)


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), st.integers(0, 7), st.integers(0, 4)),
        st.tuples(st.just("remove"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("grant"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("move"), st.integers(0, 7), st.integers(1, 9)),
    ),
    max_size=30,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
async def test_store_matches_a_sorted_model_under_any_sequence_of_edits(
    store: RedisQueueStore, ops: list[tuple[str, int, int]]
) -> None:
    pool = f"model-{uuid.uuid4().hex[:8]}"
    queued: dict[str, int] = {}  # key -> requested-at in microseconds
    holding: set[str] = set()

    def order() -> list[str]:
        return sorted(queued, key=lambda k: (queued[k], k))

    for op, i, arg in ops:
        e = entry(f"jupyter-u{i}", arg)
        if op == "enqueue":
            await store.enqueue(pool, e, 0)
            if e.key not in queued and e.key not in holding:
                queued[e.key] = int(score_of(e.requested_at))
        elif op == "remove":
            assert (await store.remove(pool, e.key, 0) is not None) == (e.key in queued)
            queued.pop(e.key, None)
        elif op == "grant":
            assert await store.grant(pool, e.key, holder_for(e)) == (e.key in queued)
            if queued.pop(e.key, None) is not None:
                holding.add(e.key)
        else:
            others = [k for k in order() if k != e.key]
            target = min(arg, len(others) + 1)
            moved = await store.move(pool, e.key, arg)
            assert (moved is not None) == (e.key in queued)
            if moved is not None:
                queued[e.key] = int(score_of(moved.requested_at))
                prev = queued[others[target - 2]] if target >= 2 else None
                nxt = queued[others[target - 1]] if target - 1 < len(others) else None
                if prev is None or nxt is None or nxt - prev >= 2:
                    assert await store.position(pool, e.key) == (target, len(queued))
        assert await queued_keys(store, pool) == order()
        assert {h.key for h in await store.holders(pool)} == holding


# -- rebuild, find_user, prefixes ---------------------------------------------------------------


async def test_rebuild_replaces_queue_and_holders_but_keeps_tombstones_and_statistics(
    store: RedisQueueStore,
) -> None:
    old = entry("jupyter-old", 1)
    await store.enqueue(POOL, old, 300)
    await store.grant(POOL, old.key, holder_for(old))
    await store.release(POOL, old.key, T0 + timedelta(minutes=5))
    await store.enqueue(POOL, entry("jupyter-gone", 2), 300)
    await store.remove(POOL, "jhub/jupyter-gone", 300)
    await store.enqueue(POOL, entry("jupyter-stale", 3), 300)

    truth = [entry("jupyter-y", 20), entry("jupyter-x", 10)]
    held = [holder_for(entry("jupyter-h", 0), 5)]
    await store.rebuild(POOL, truth, held)

    assert await queued_keys(store) == ["jhub/jupyter-x", "jhub/jupyter-y"]
    assert [h.key for h in await store.holders(POOL)] == ["jhub/jupyter-h"]
    assert [t.user for t in await store.tombstones(POOL)] == ["gone"]
    assert await store.wait_samples(POOL) == [60.0]
    assert await store.release_times(POOL) == [T0 + timedelta(minutes=5)]


async def test_rebuild_takes_a_key_both_queued_and_holding_as_holding(store: RedisQueueStore) -> None:
    e = entry("jupyter-alice", 1)
    await store.rebuild(POOL, [e], [holder_for(e)])
    assert await store.length(POOL) == 0
    assert [h.key for h in await store.holders(POOL)] == [e.key]


async def test_find_user_finds_queued_and_holding_servers_across_pools(
    store: RedisQueueStore, redis_server: RedisServer, prefix: str
) -> None:
    alice_gpu = entry("jupyter-alice", 1)
    alice_big = entry("jupyter-alice-big", 2, user="alice", server="big")
    await store.enqueue("gpu", alice_gpu, 300)
    await store.enqueue("a100", alice_big, 300)
    await store.grant("a100", alice_big.key, holder_for(alice_big))
    await store.enqueue("gpu", entry("jupyter-bob", 3), 300)

    found = await store.find_user("alice", "")
    assert [(pool, type(item).__name__, item.key) for pool, item in found] == [
        ("gpu", "QueueEntry", "jhub/jupyter-alice")
    ]
    [(pool, big)] = await store.find_user("alice", "big")
    assert (pool, type(big).__name__, big.key) == ("a100", "Holder", "jhub/jupyter-alice-big")
    assert await store.find_user("carol", "") == []
    assert await store.find_user("", "") == []

    # another replica with no pool list learns the pools from the registry
    other = RedisQueueStore(redis_server.url, prefix=prefix)
    try:
        assert {pool for pool, _ in await other.find_user("alice", "big")} == {"a100"}
    finally:
        await other.aclose()

    await store.release("a100", alice_big.key, T0 + timedelta(hours=1))
    await store.remove("gpu", alice_gpu.key, 0)
    assert await store.find_user("alice", "big") == []
    assert await store.find_user("alice", "") == []


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
