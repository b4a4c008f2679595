"""HistoryStore against a real redis-server: round trips, time ranges, trimming, memory, loss, faults.

Times are data: events carry explicit ``at`` values and the store's "now" is a FakeClock, so no
test waits for anything. Trimming is Redis's approximate (``~``) trimming, as in production: it
drops whole stream nodes, so the bounds below allow one node (``stream-node-max-entries``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from tests.helpers.clock import FakeClock
from tests.helpers.queue_records import POOL, T0, entry
from tests.helpers.redis_server import RedisServer
from webhook.history import HistoryEvent, HistoryKind, HistoryStore, request_key
from webhook.metrics import REGISTRY
from webhook.protocols import StoreUnavailable
from webhook.redis_store import RedisQueueStore

pytestmark = pytest.mark.redis

MEMORY_EVENTS = 10_000
MEMORY_BOUND = 100  # bytes per event; measured 49.4 (names off) and 63.9 (names on) on Redis 7.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ms(when: datetime) -> int:
    """The millisecond part of a stream ID for a time."""
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def id_ms(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


async def stream_ids(client: Redis, key: str) -> list[str]:
    return [str(entry_id) for entry_id, _ in await client.xrange(key) or []]


def event(
    kind: HistoryKind,
    seconds: float,
    *,
    pool: str = POOL,
    key: str = "k1",
    slices: int = 1,
    wait: float | None = None,
    hold: float | None = None,
    user: str | None = None,
) -> HistoryEvent:
    return HistoryEvent(
        kind=kind,
        at=at(seconds),
        pool=pool,
        slices=slices,
        wait_seconds=wait,
        hold_seconds=hold,
        key=key,
        user=user,
    )


def many(n: int, start: float = 0.0, step: float = 1.0, pool: str = POOL) -> list[HistoryEvent]:
    return [event("arrival", start + i * step, pool=pool, key=f"k{i}") for i in range(n)]


def errors_counted(op: str) -> float:
    return REGISTRY.get_sample_value("gpu_queue_redis_errors_total", {"op": op}) or 0.0


def malformed_counted(pool: str) -> float:
    return REGISTRY.get_sample_value("gpu_queue_history_malformed_total", {"pool": pool}) or 0.0


@pytest.fixture
def now() -> FakeClock:
    """The store's "now": just after the events the tests write at T0 + seconds."""
    return FakeClock(T0 + timedelta(hours=1))


@pytest.fixture
async def history(redis_server: RedisServer, prefix: str, now: FakeClock) -> AsyncIterator[HistoryStore]:
    store = HistoryStore.from_url(redis_server.url, prefix=prefix, timeout_seconds=5.0, clock=now)
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def node_entries(client: Redis) -> int:
    """Entries per stream node: the slack of approximate trimming."""
    return int(str((await client.config_get("stream-node-max-entries"))["stream-node-max-entries"]))


# -- model ---------------------------------------------------------------------------------------


def test_event_model_keeps_utc_and_rejects_what_history_cannot_mean() -> None:
    berlin = timezone(timedelta(hours=1))
    e = HistoryEvent(kind="grant", at=datetime(2026, 11, 28, 16, 0, tzinfo=berlin), pool="gpu", slices=1, key="k")
    assert e.at == T0 and e.at.tzinfo == UTC
    assert event("grant", 0, wait=-0.2).wait_seconds == 0.0  # replica clocks disagree a little
    assert event("arrival", 0, user="").user is None
    for bad in (
        {"at": datetime(2026, 11, 28, 15, 0)},  # naive
        {"slices": 0},
        {"key": ""},
        {"pool": ""},
        {"kind": "arrival", "wait_seconds": 3.0},
        {"kind": "grant", "hold_seconds": 3.0},
        {"kind": "release", "wait_seconds": 3.0},
        {"kind": "grant", "wait_seconds": float("inf")},
    ):
        with pytest.raises(ValidationError):
            HistoryEvent.model_validate({"kind": "grant", "at": T0, "pool": "gpu", "slices": 1, "key": "k", **bad})
    with pytest.raises(ValidationError):
        e.slices = 2  # type: ignore[misc]


def test_request_key_is_short_stable_and_salted() -> None:
    key = request_key("jhub", "jupyter-alice", T0)
    assert key == request_key("jhub", "jupyter-alice", T0) and len(key) == 11
    assert key != request_key("jhub", "jupyter-alice", T0 + timedelta(microseconds=1))
    assert key != request_key("jhub", "jupyter-alice", T0, salt=b"secret")


# -- round trips and ranges ----------------------------------------------------------------------


async def test_each_kind_round_trips_with_every_field_oldest_first(history: HistoryStore) -> None:
    written = [
        event("arrival", 0.000001, key="a", slices=2, user="alice"),
        event("arrival", 1, key="b,with,commas", user="jöe, x"),  # anything goes in a key or a name
        event("grant", 2.5, key="a", slices=2, wait=2.499, user="alice"),
        event("cancel", 3, key="b,with,commas", wait=2.0, user="jöe, x"),
        event("release", 3600.25, key="a", slices=2, hold=3597.75, user="alice"),
    ]
    for e in written:
        await history.record(e)
    assert await history.read(POOL) == written
    assert await history.read("other-pool") == []


async def test_durations_are_kept_to_the_millisecond(history: HistoryStore) -> None:
    await history.record(event("grant", 0, wait=1.23456))
    [back] = await history.read(POOL)
    assert back.wait_seconds == 1.235


async def test_since_and_until_are_both_inclusive_to_the_microsecond(history: HistoryStore) -> None:
    written = [event("arrival", s, key=f"k{s}") for s in (0, 1, 1.0005, 2, 3)]
    await history.record_many(written)
    assert await history.read(POOL, since=at(1), until=at(2)) == written[1:4]
    # 1.0005 s shares the millisecond of 1.0006 s's ID range: the `at` filter drops it
    assert await history.read(POOL, since=at(1.0006)) == written[3:]
    assert await history.read(POOL, until=at(1.0004)) == written[:2]
    assert await history.read(POOL, since=at(2.5), until=at(2.9)) == []
    assert await history.read(POOL, since=at(3), until=at(1)) == []


async def test_limit_returns_the_oldest_events_of_the_range(history: HistoryStore) -> None:
    written = many(2500)
    for i in range(0, len(written), 500):
        await history.record_many(written[i : i + 500])
    assert await history.read(POOL, limit=3) == written[:3]
    assert await history.read(POOL, since=at(10), limit=2) == written[10:12]
    assert await history.read(POOL, limit=1500) == written[:1500]  # across XRANGE pages
    assert await history.read(POOL) == written
    assert await history.read(POOL, limit=0) == []


async def test_events_in_the_same_millisecond_are_all_kept_in_write_order(history: HistoryStore) -> None:
    written = [event("arrival", 5, key=k) for k in ("x", "y", "z")]
    await history.record_many(written[:2])
    await history.record(written[2])
    assert await history.read(POOL) == written


async def test_a_late_event_is_kept_with_its_own_time_after_the_last_entry(history: HistoryStore, raw: Redis) -> None:
    """A clock step or a late writer: the entry goes after the last ID, the `at` field stays true."""
    await history.record(event("arrival", 10, key="first"))
    await history.record(event("arrival", 5, key="late"))  # before the stream's last ID
    await history.record_many([event("arrival", 20, key="b1"), event("arrival", 15, key="b2"), event("arrival", 25)])
    back = await history.read(POOL)
    assert history.late == 2
    assert [(e.key, e.at) for e in back] == [
        ("first", at(10)),
        ("late", at(5)),
        ("b1", at(20)),
        ("k1", at(25)),
        ("b2", at(15)),  # a batch's late event lands after the batch
    ]
    ids = await stream_ids(raw, history.stream_key(POOL))
    # in time: the ID is the time; late: the last ID's ms (not Redis's clock), so no drift
    assert [id_ms(i) for i in ids] == [ms(at(s)) for s in (10, 10, 20, 25, 25)]
    # a range selects by `at`: the late entry's ID is in range but its time is not
    assert [e.key for e in await history.read(POOL, since=at(8))] == ["first", "b1", "k1", "b2"]


async def test_a_stamp_far_ahead_of_the_clock_does_not_move_the_ids(
    history: HistoryStore, raw: Redis, now: FakeClock
) -> None:
    """An ID in the future would make every later event a late one and stall the retention."""
    await history.record(event("arrival", 86_400 * 365, key="bogus"))
    await history.record(event("arrival", 60, key="next"))
    ids = await stream_ids(raw, history.stream_key(POOL))
    assert [id_ms(i) for i in ids] == [ms(now.now), ms(now.now)]  # the store's clock, then after it
    assert history.late == 1  # "next" is before the bogus event's ID
    assert [(e.key, e.at) for e in await history.read(POOL)] == [("bogus", at(86_400 * 365)), ("next", at(60))]


# -- trimming ------------------------------------------------------------------------------------


async def test_events_older_than_the_retention_are_trimmed_by_a_later_write(
    history: HistoryStore, now: FakeClock, raw: Redis
) -> None:
    old = many(500)
    await history.record_many(old)
    now.now = at(29 * 86_400)
    recent = event("arrival", 29 * 86_400, key="recent")
    await history.record(recent)
    assert len(await history.read(POOL)) == 501  # nothing is older than 30 days yet

    now.now = at(30 * 86_400 + 3600)  # the old events are now 30 days + up to an hour old
    newest = event("arrival", 30 * 86_400 + 3600, key="newest")
    await history.record(newest)
    back = await history.read(POOL)
    assert back[-2:] == [recent, newest]
    left = back[:-2]
    # approximate trimming keeps the old events that share a node with a recent one, at most one node
    assert len(left) < await node_entries(raw)
    assert left == old[len(old) - len(left) :]


async def test_writing_past_the_cap_keeps_about_cap_newest_events(
    redis_server: RedisServer, prefix: str, now: FakeClock, raw: Redis
) -> None:
    cap, extra = 1000, 700
    store = HistoryStore.from_url(redis_server.url, prefix=prefix, cap=cap, timeout_seconds=5.0, clock=now)
    try:
        written = many(cap + extra)
        for i in range(0, len(written), 100):
            await store.record_many(written[i : i + 100])
        slack = await node_entries(raw)
        back = await store.read(POOL)
        # MAXLEN ~ drops whole nodes while at least `cap` stay: cap <= kept < cap + one node
        assert cap <= len(back) < cap + slack
        assert back == written[-len(back) :]
        assert (await store.stats(POOL)).count == len(back)
    finally:
        await store.aclose()


async def test_memory_per_event_stays_under_the_bound_with_names_off_and_on(
    history: HistoryStore, now: FakeClock, record_property: Callable[[str, object], None]
) -> None:
    """10,000 realistic events (arrival, grant, release per request, ~30 s apart); MEMORY USAGE."""
    now.now = at(30 * MEMORY_EVENTS)  # the events span about 3.5 days: all in the past
    kinds: tuple[HistoryKind, ...] = ("arrival", "grant", "release")
    for names in (False, True):
        pool = f"mem-{'names' if names else 'anonymous'}"
        written: list[HistoryEvent] = []
        for i in range(MEMORY_EVENTS):
            kind = kinds[i % 3]
            requested = at(90 * (i // 3) + i * 0.000037)
            written.append(
                HistoryEvent(
                    kind=kind,
                    at=requested + timedelta(seconds=30 * (i % 3)),
                    pool=pool,
                    slices=2 if i % 12 == 0 else 1,
                    wait_seconds=30 + (i % 600) / 7 if kind == "grant" else None,
                    hold_seconds=3600 + i / 3 if kind == "release" else None,
                    key=request_key("jhub", f"jupyter-user{i // 3:04}", requested),
                    user=f"user{(i // 3) % 200:03}" if names else None,
                )
            )
        for i in range(0, MEMORY_EVENTS, 1000):
            await history.record_many(written[i : i + 1000])
        assert history.late == 0  # every ID is its event's time, as in production
        stats = await history.stats(pool)
        assert stats.count == MEMORY_EVENTS
        per_event = stats.memory_bytes / MEMORY_EVENTS
        label = "names on" if names else "names off"
        print(f"history memory, {label}: {per_event:.1f} bytes/event ({stats.memory_bytes} bytes)")
        record_property(f"bytes_per_event_{label.replace(' ', '_')}", round(per_event, 1))
        assert per_event <= MEMORY_BOUND, label
        assert len(await history.read(pool)) == MEMORY_EVENTS


# -- pools, stats, forget ------------------------------------------------------------------------


async def test_pools_lists_the_pools_with_history_and_forget_drops_one(history: HistoryStore) -> None:
    assert await history.pools() == []
    await history.record_many([event("arrival", 0, pool="b"), event("arrival", 0, pool="a")])
    await history.record(event("arrival", 1, pool="a"))
    assert await history.pools() == ["a", "b"]
    assert await history.forget("a") is True
    assert await history.forget("a") is False
    assert await history.pools() == ["b"]
    assert await history.read("a") == []
    assert len(await history.read("b")) == 1


async def test_stats_report_count_first_and_last_time_and_memory(history: HistoryStore) -> None:
    empty = await history.stats(POOL)
    assert (empty.count, empty.first_at, empty.last_at, empty.memory_bytes) == (0, None, None, 0)
    await history.record_many([event("arrival", 1), event("grant", 2, wait=1), event("arrival", 1.5)])
    stats = await history.stats(POOL)
    assert stats.pool == POOL and stats.count == 3
    assert (stats.first_at, stats.last_at) == (at(1), at(1.5))  # stream order: the late one is last
    assert stats.memory_bytes > 0


# -- loss and the queue's keys -------------------------------------------------------------------


async def test_flushall_empties_the_history_and_writes_start_again(own_redis: RedisServer, now: FakeClock) -> None:
    store = HistoryStore.from_url(own_redis.url, prefix="flush", clock=now)
    try:
        await store.record_many(many(3))
        own_redis.flushall()
        assert await store.read(POOL) == []
        assert await store.pools() == []
        assert (await store.stats(POOL)).count == 0
        again = event("arrival", 1, key="again")  # older than before the loss: nothing remembers it
        await store.record(again)
        assert await store.read(POOL) == [again]
        assert await store.pools() == [POOL]
    finally:
        await store.aclose()


async def test_trimming_and_forget_leave_the_queue_keys_alone(
    redis_server: RedisServer, prefix: str, now: FakeClock, raw: Redis
) -> None:
    queue = RedisQueueStore(redis_server.url, prefix=prefix)
    history = HistoryStore.from_url(redis_server.url, prefix=prefix, cap=10, clock=now)
    try:
        await queue.enqueue(POOL, entry("jupyter-alice", 1), 300)
        queue_keys = sorted(await raw.keys(f"*{prefix}*"))
        assert f"{{{prefix}:{POOL}}}:fifo" in queue_keys
        dumps = {k: await raw.dump(k) for k in queue_keys}

        await history.record_many(many(300))  # cap trimming
        now.now = at(40 * 86_400)
        await history.record(event("arrival", 40 * 86_400))  # retention trimming
        assert history.stream_key(POOL) not in queue_keys
        assert await history.forget(POOL) is True

        assert sorted(await raw.keys(f"*{prefix}*")) == queue_keys
        assert {k: await raw.dump(k) for k in queue_keys} == dumps
        assert await queue.position(POOL, "jhub/jupyter-alice") == (1, 1)
    finally:
        await history.aclose()
        await queue.aclose()


# -- malformed entries, other clients ------------------------------------------------------------


async def test_malformed_entries_are_skipped_and_counted(history: HistoryStore, raw: Redis) -> None:
    good = [event("arrival", 0, key="a"), event("grant", 1, key="a", wait=1)]
    await history.record(good[0])
    stream = history.stream_key(POOL)
    valid: dict[Any, Any] = {"t": "1795878000000000", "e": "a1,,x"}
    garbage: list[dict[Any, Any]] = [
        {"junk": "1"},
        {"t": valid["t"]},
        {**valid, "e": "x1,,x"},  # unknown kind
        {**valid, "e": "a1"},  # too few parts
        {**valid, "e": "a1,,"},  # empty key
        {**valid, "e": "a0,,x"},  # no slices
        {**valid, "e": "a1,12,x"},  # a wait on an arrival
        {**valid, "e": "g1,soon,x"},
        {**valid, "t": "soon"},
        {**valid, "t": str(10**30)},
    ]
    for n, fields in enumerate(garbage, start=1):
        await raw.xadd(stream, fields, id=f"{ms(at(0))}-{n}")
    await history.record(good[1])
    before, before_metric = history.skipped, malformed_counted(POOL)

    assert await history.read(POOL) == good
    assert history.skipped == before + len(garbage)
    assert malformed_counted(POOL) == before_metric + len(garbage)
    assert await history.read(POOL, limit=2) == good  # skipped entries do not use up the limit


async def test_a_client_without_decoded_replies_reads_the_same_and_stays_open(
    redis_server: RedisServer, prefix: str, now: FakeClock
) -> None:
    client = Redis.from_url(redis_server.url)  # bytes replies
    store = HistoryStore(client, prefix=prefix, clock=now)
    try:
        written = [event("arrival", 0, user="alice"), event("grant", 1, wait=1, user="alice")]
        await store.record_many(written)
        assert await store.read(POOL) == written
        assert await store.pools() == [POOL]
        assert (await store.stats(POOL)).last_at == at(1)
        await store.aclose()  # not the store's client: still usable
        assert await client.ping()
    finally:
        await client.aclose()


# -- faults --------------------------------------------------------------------------------------


def _calls(store: HistoryStore) -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "history_record": lambda: store.record(event("arrival", 9)),
        "history_record_many": lambda: store.record_many(many(3)),
        "history_read": lambda: store.read(POOL),
        "history_pools": store.pools,
        "history_stats": lambda: store.stats(POOL),
        "history_forget": lambda: store.forget(POOL),
    }


async def test_a_stopped_redis_raises_store_unavailable_within_the_deadline(
    own_redis: RedisServer, now: FakeClock
) -> None:
    timeout = 0.5
    store = HistoryStore.from_url(own_redis.url, prefix="down", timeout_seconds=timeout, clock=now)
    try:
        await store.record(event("arrival", 0))
        own_redis.stop()
        for op, call in _calls(store).items():
            before = errors_counted(op)
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=op):
                await call()
            assert time.monotonic() - started < timeout + 0.5, op
            assert errors_counted(op) == before + 1, op
    finally:
        await store.aclose()


async def test_a_hung_redis_raises_store_unavailable_within_the_deadline(
    own_redis: RedisServer, now: FakeClock
) -> None:
    timeout = 0.3
    store = HistoryStore.from_url(own_redis.url, prefix="hung", timeout_seconds=timeout, clock=now)
    try:
        await store.record(event("arrival", 0))
        own_redis.pause()
        for op, call in _calls(store).items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=op):
                await call()
            assert time.monotonic() - started < timeout + 0.5, op
    finally:
        own_redis.resume()
        await store.aclose()
