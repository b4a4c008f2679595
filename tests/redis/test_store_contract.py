"""The ``QueueStore`` contract, run on every store: the Redis store on a real redis-server, and the
in-memory store the API and CLI unit tests use in its place.

Only what the Protocol promises is checked here, through the Protocol alone: order, positions,
kept places, grants, releases, statistics, admin moves, rebuilds, user lookups. Redis specifics
(outages, key layout, prefixes, several clients) are in ``test_queue_store.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.clock import FakeClock
from tests.helpers.queue_records import POOL, T0, entry, holder_for, queued_keys
from tests.helpers.redis_server import RedisServer
from tests.unit.fakes import MemoryQueueStore
from webhook.models import Admitted, Holder, QueueEntry, score_of
from webhook.protocols import QueueStore
from webhook.redis_store import STATS_CAP, RedisQueueStore

MakeStore = Callable[..., QueueStore]


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis), "memory"])
async def make_store(request: pytest.FixtureRequest, prefix: str, clock: FakeClock) -> AsyncIterator[MakeStore]:
    """A factory of stores of one kind, sharing the test's clock (and, for Redis, its prefix)."""
    made: list[RedisQueueStore] = []
    server: RedisServer | None = request.getfixturevalue("redis_server") if request.param == "redis" else None

    def make(*, stats_cap: int = STATS_CAP) -> QueueStore:
        if server is None:
            return MemoryQueueStore(clock=clock, stats_cap=stats_cap)
        store = RedisQueueStore(server.url, prefix=prefix, timeout_seconds=2.0, clock=clock, stats_cap=stats_cap)
        made.append(store)
        return store

    try:
        yield make
    finally:
        for store in made:
            await store.aclose()


@pytest.fixture
def store(make_store: MakeStore) -> QueueStore:
    return make_store()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- FIFO order and positions -----------------------------------------------------------------


async def test_entries_come_out_in_requested_at_order_not_arrival_order(store: QueueStore) -> None:
    for name, t in [("jupyter-carol", 3), ("jupyter-alice", 1), ("jupyter-bob", 2)]:
        await store.enqueue(POOL, entry(name, t), 300)
    assert await queued_keys(store) == ["jhub/jupyter-alice", "jhub/jupyter-bob", "jhub/jupyter-carol"]


async def test_equal_requested_at_is_ordered_by_namespace_then_name(store: QueueStore) -> None:
    for ns, name in [("hub-b", "jupyter-a"), ("hub-a", "jupyter-z"), ("hub-a", "jupyter-b")]:
        await store.enqueue(POOL, entry(name, 5, ns=ns), 300)
    assert await queued_keys(store) == ["hub-a/jupyter-b", "hub-a/jupyter-z", "hub-b/jupyter-a"]


async def test_one_microsecond_earlier_wins_over_name_order(store: QueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-a", 1.000001), 300)
    await store.enqueue(POOL, entry("jupyter-z", 1.0), 300)
    assert await queued_keys(store) == ["jhub/jupyter-z", "jhub/jupyter-a"]


async def test_requested_at_round_trips_exactly_to_the_microsecond(store: QueueStore) -> None:
    when = datetime(2026, 11, 28, 16, 14, 6, 123457, tzinfo=UTC)
    e = QueueEntry(namespace="jhub", name="jupyter-alice", user="alice", requested_at=when, uid="u1")
    returned = await store.enqueue(POOL, e, 300)
    [listed] = await store.entries(POOL)
    assert returned == e
    assert listed == e
    assert listed.requested_at == when


async def test_positions_are_one_based_with_the_queue_length(store: QueueStore) -> None:
    names = [f"jupyter-u{i}" for i in range(5)]
    for i, name in enumerate(names):
        await store.enqueue(POOL, entry(name, i), 300)
    assert [await store.position(POOL, f"jhub/{n}") for n in names] == [(i, 5) for i in range(1, 6)]
    assert await store.position(POOL, "jhub/jupyter-nobody") is None
    assert await store.length(POOL) == 5


async def test_entries_slice_uses_inclusive_zero_based_bounds(store: QueueStore) -> None:
    for i in range(6):
        await store.enqueue(POOL, entry(f"jupyter-u{i}", i), 300)
    assert [e.name for e in await store.entries(POOL, 1, 3)] == ["jupyter-u1", "jupyter-u2", "jupyter-u3"]
    assert [e.name for e in await store.entries(POOL, 4)] == ["jupyter-u4", "jupyter-u5"]
    assert [e.name for e in await store.entries(POOL, -2)] == ["jupyter-u4", "jupyter-u5"]
    assert await store.entries(POOL, 4, 2) == []
    assert await store.entries(POOL, 10) == []
    assert await store.entries("empty-pool") == []
    assert await store.length("empty-pool") == 0


async def test_enqueue_of_a_queued_key_keeps_the_first_requested_at(store: QueueStore) -> None:
    first = await store.enqueue(POOL, entry("jupyter-alice", 10), 300)
    again = await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    assert again.requested_at == first.requested_at == at(10)
    assert await store.length(POOL) == 1


# -- place kept (I5) ----------------------------------------------------------------------------


async def test_returning_user_gets_the_old_place_back_within_keep_place(store: QueueStore, clock: FakeClock) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.enqueue(POOL, entry("jupyter-bob", 2), 300)
    removed = await store.remove(POOL, "jhub/jupyter-alice", 300)
    assert removed is not None and removed.requested_at == at(1)

    clock.advance(299)
    back = await store.enqueue(POOL, entry("jupyter-alice", 400), 300)

    assert back.requested_at == at(1)
    assert await queued_keys(store) == ["jhub/jupyter-alice", "jhub/jupyter-bob"]
    assert await store.position(POOL, back.key) == (1, 2)


async def test_a_returning_pod_a_rebuild_already_wrote_still_gets_the_old_place(store: QueueStore) -> None:
    """The pod came back while the leader's pass was under way: its rebuild wrote the pod with the
    new stamp before any enqueue; the enqueue of the next pass still finds the kept place."""
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.enqueue(POOL, entry("jupyter-bob", 2), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    await store.rebuild(POOL, [entry("jupyter-bob", 2), entry("jupyter-alice", 400)], [])
    assert await queued_keys(store) == ["jhub/jupyter-bob", "jhub/jupyter-alice"]

    back = await store.enqueue(POOL, entry("jupyter-alice", 400), 300)

    assert back.requested_at == at(1)
    assert await queued_keys(store) == ["jhub/jupyter-alice", "jhub/jupyter-bob"]
    again = await store.enqueue(POOL, entry("jupyter-alice", 400), 300)
    assert again.requested_at == at(1), "the place is given once and then kept"


async def test_kept_places_are_listed_until_used_or_expired(store: QueueStore, clock: FakeClock) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.enqueue(POOL, entry("jupyter-bob-ml", 2, user="bob", server="ml"), 300)
    await store.enqueue(POOL, entry("jupyter-carol", 3), 300)
    await store.remove(POOL, "jhub/jupyter-bob-ml", 300)
    clock.advance(10)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    await store.remove(POOL, "jhub/jupyter-carol", 0)  # an admin's removal keeps no place
    places = await store.kept_places(POOL)
    assert [(p.user, p.server, p.requested_at) for p in places] == [("alice", "", at(1)), ("bob", "ml", at(2))]
    assert [p.expires_at for p in places] == [clock() + timedelta(seconds=300), clock() + timedelta(seconds=290)]

    await store.enqueue(POOL, entry("jupyter-alice", 50), 300)  # alice came back: her place is used
    clock.advance(291)  # bob's expired
    assert await store.kept_places(POOL) == []
    assert await store.kept_places("other-pool") == []


async def test_tombstone_is_used_once(store: QueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    await store.enqueue(POOL, entry("jupyter-alice", 50), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 0)
    again = await store.enqueue(POOL, entry("jupyter-alice", 90), 300)
    assert again.requested_at == at(90)


async def test_tombstone_restores_the_place_for_a_new_pod_name_of_the_same_server(store: QueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    back = await store.enqueue(POOL, entry("jupyter-alice-2", 70, user="alice"), 300)
    assert back.key == "jhub/jupyter-alice-2"
    assert back.requested_at == at(1)


async def test_an_expired_tombstone_is_ignored(store: QueueStore, clock: FakeClock) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    clock.advance(300)
    back = await store.enqueue(POOL, entry("jupyter-alice", 400), 300)
    assert back.requested_at == at(400)


async def test_tombstone_belongs_to_one_user_and_server(store: QueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    other_server = await store.enqueue(POOL, entry("jupyter-alice-big", 50, user="alice", server="big"), 300)
    other_user = await store.enqueue(POOL, entry("jupyter-bob", 60), 300)
    assert other_server.requested_at == at(50)
    assert other_user.requested_at == at(60)
    # ... and is still there for alice's default server
    back = await store.enqueue(POOL, entry("jupyter-alice", 90), 300)
    assert back.requested_at == at(1)


async def test_a_second_removal_keeps_the_earlier_place(store: QueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    not_restored = await store.enqueue(POOL, entry("jupyter-alice", 50), 0)  # keep-place off: tombstone stays
    assert not_restored.requested_at == at(50)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    back = await store.enqueue(POOL, entry("jupyter-alice", 90), 300)
    assert back.requested_at == at(1)


async def test_remove_without_keep_place_or_without_user_keeps_no_place(store: QueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.enqueue(POOL, entry("jupyter-anon", 2, user=""), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 0)
    await store.remove(POOL, "jhub/jupyter-anon", 300)
    assert await store.remove(POOL, "jhub/jupyter-alice", 300) is None
    assert (await store.enqueue(POOL, entry("jupyter-alice", 40), 300)).requested_at == at(40)
    assert (await store.enqueue(POOL, entry("jupyter-anon", 41, user=""), 300)).requested_at == at(41)


async def test_enqueue_with_keep_place_zero_does_not_restore_a_place(store: QueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    back = await store.enqueue(POOL, entry("jupyter-alice", 40), 0)
    assert back.requested_at == at(40)


async def test_enqueue_honours_a_lowered_keep_place(store: QueueStore, clock: FakeClock) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    clock.advance(120)
    back = await store.enqueue(POOL, entry("jupyter-alice", 200), 60)
    assert back.requested_at == at(200)


async def test_a_later_place_is_not_restored(store: QueueStore) -> None:
    """A kept place only ever moves a pod forward (an earlier stamp keeps its own time)."""
    await store.enqueue(POOL, entry("jupyter-alice", 100), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    back = await store.enqueue(POOL, entry("jupyter-alice", 50), 300)
    assert back.requested_at == at(50)


# -- grant, release, holders --------------------------------------------------------------------


async def test_grant_moves_the_entry_to_the_holders_and_records_its_wait(store: QueueStore) -> None:
    e = entry("jupyter-alice", 1)
    await store.enqueue(POOL, e, 300)
    h = Holder(namespace="jhub", name="jupyter-alice", granted_at=e.requested_at + timedelta(seconds=751.5))

    assert await store.grant(POOL, e.key, h) is True

    assert await store.position(POOL, e.key) is None
    assert await store.length(POOL) == 0
    [held] = await store.holders(POOL)
    assert (held.key, held.user, held.uid) == (e.key, "alice", "uid-jupyter-alice")  # filled from the entry
    assert held.requested_at == e.requested_at
    assert held.granted_at == h.granted_at
    assert await store.wait_samples(POOL) == [751.5]


async def test_a_holder_takes_its_requested_at_from_the_queue_and_keeps_its_own_fields(store: QueueStore) -> None:
    e = entry("jupyter-alice", 1)
    await store.enqueue(POOL, e, 300)
    h = Holder(
        namespace="jhub",
        name="jupyter-alice",
        user="alice",
        uid="uid-from-the-pod",
        requested_at=at(30),  # the caller's idea of the time; the queue's wins
        granted_at=at(61),
        node="gpu-node-2",
    )
    await store.grant(POOL, e.key, h)
    [held] = await store.holders(POOL)
    assert held == h.model_copy(update={"requested_at": at(1)})


async def test_grant_of_a_key_that_is_not_queued_is_refused(store: QueueStore) -> None:
    e = entry("jupyter-alice", 1)
    await store.enqueue(POOL, e, 300)
    assert await store.grant(POOL, e.key, holder_for(e)) is True
    assert await store.grant(POOL, e.key, holder_for(e)) is False
    assert await store.grant(POOL, "jhub/jupyter-ghost", holder_for(entry("jupyter-ghost"))) is False
    assert len(await store.holders(POOL)) == 1
    assert len(await store.wait_samples(POOL)) == 1


async def test_holder_keeps_the_place_restored_from_a_tombstone_as_requested_at(store: QueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    await store.remove(POOL, "jhub/jupyter-alice", 300)
    back = await store.enqueue(POOL, entry("jupyter-alice", 100), 300)
    await store.grant(POOL, back.key, holder_for(entry("jupyter-alice", 100), 20))
    [held] = await store.holders(POOL)
    assert held.requested_at == at(1)
    assert await store.wait_samples(POOL) == [119.0]


async def test_enqueue_of_a_holding_key_does_not_queue_it_again(store: QueueStore) -> None:
    e = entry("jupyter-alice", 1)
    await store.enqueue(POOL, e, 300)
    await store.grant(POOL, e.key, holder_for(e))
    late = entry("jupyter-alice", 500)
    assert await store.enqueue(POOL, late, 300) == late  # back unchanged
    assert await store.position(POOL, e.key) is None
    assert await store.length(POOL) == 0
    assert [h.key for h in await store.holders(POOL)] == [e.key]


async def test_release_drops_the_holder_and_records_the_release_time(store: QueueStore) -> None:
    e = entry("jupyter-alice", 1)
    await store.enqueue(POOL, e, 300)
    await store.grant(POOL, e.key, holder_for(e))
    [held] = await store.holders(POOL)
    when = T0 + timedelta(hours=1, microseconds=7)

    released = await store.release(POOL, e.key, when)

    assert released == held
    assert await store.holders(POOL) == []
    assert await store.release_times(POOL) == [when]
    assert await store.release(POOL, e.key, when + timedelta(seconds=1)) is None
    assert await store.release_times(POOL) == [when]


async def test_release_of_a_queued_key_frees_nothing(store: QueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-alice", 1), 300)
    assert await store.release(POOL, "jhub/jupyter-alice", at(60)) is None
    assert await store.release_times(POOL) == []
    assert await store.position(POOL, "jhub/jupyter-alice") == (1, 1)


async def test_holders_are_listed_oldest_grant_first(store: QueueStore) -> None:
    for name, granted_after in [("jupyter-a", 30), ("jupyter-b", 10), ("jupyter-c", 20)]:
        e = entry(name, 0)
        await store.enqueue(POOL, e, 300)
        await store.grant(POOL, e.key, holder_for(e, granted_after))
    assert [h.name for h in await store.holders(POOL)] == ["jupyter-b", "jupyter-c", "jupyter-a"]


async def test_statistics_are_capped_and_newest_first(make_store: MakeStore) -> None:
    store = make_store(stats_cap=3)
    for i in range(5):
        e = entry(f"jupyter-u{i}", 0)
        await store.enqueue(POOL, e, 300)
        await store.grant(POOL, e.key, holder_for(e, 10 * (i + 1)))
        await store.release(POOL, e.key, T0 + timedelta(minutes=i))
    assert await store.wait_samples(POOL) == [50.0, 40.0, 30.0]
    assert await store.wait_samples(POOL, limit=2) == [50.0, 40.0]
    assert await store.release_times(POOL) == [T0 + timedelta(minutes=m) for m in (4, 3, 2)]
    assert await store.release_times(POOL, limit=1) == [T0 + timedelta(minutes=4)]


# -- admin move ---------------------------------------------------------------------------------


async def _five(store: QueueStore) -> list[str]:
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
    store: QueueStore, name: str, to: int, expected: str
) -> None:
    await _five(store)
    moved = await store.move(POOL, f"jhub/jupyter-{name}", to)
    order = await store.entries(POOL)
    assert "".join(e.name.removeprefix("jupyter-") for e in order) == expected
    assert moved is not None
    assert moved in order  # the returned entry carries the new requested-at, and the user fields
    assert await store.position(POOL, moved.key) == (min(to, 5), 5)


async def test_move_gives_a_time_strictly_between_the_new_neighbours(store: QueueStore) -> None:
    await _five(store)
    moved = await store.move(POOL, "jhub/jupyter-e", 2)
    assert moved is not None
    assert T0 < moved.requested_at < at(10)


async def test_move_between_tied_neighbours_uses_their_time_when_the_name_sorts_between(store: QueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-a", 5), 300)
    await store.enqueue(POOL, entry("jupyter-c", 5), 300)
    await store.enqueue(POOL, entry("jupyter-b", 9), 300)
    moved = await store.move(POOL, "jhub/jupyter-b", 2)
    assert moved is not None and moved.requested_at == at(5)
    assert await queued_keys(store) == ["jhub/jupyter-a", "jhub/jupyter-b", "jhub/jupyter-c"]


async def test_move_of_an_unknown_key_or_to_position_zero(store: QueueStore) -> None:
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
    store: QueueStore, ops: list[tuple[str, int, int]]
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


# -- rebuild, find_user -------------------------------------------------------------------------


async def test_rebuild_replaces_queue_and_holders_but_keeps_places_and_statistics(store: QueueStore) -> None:
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
    assert await store.holders(POOL) == held
    assert await store.wait_samples(POOL) == [60.0]
    assert await store.release_times(POOL) == [T0 + timedelta(minutes=5)]
    back = await store.enqueue(POOL, entry("jupyter-gone", 30), 300)  # the kept place survived
    assert back.requested_at == at(2)
    assert await store.position(POOL, back.key) == (1, 3)


async def test_rebuild_takes_a_key_both_queued_and_holding_as_holding(store: QueueStore) -> None:
    e = entry("jupyter-alice", 1)
    await store.rebuild(POOL, [e], [holder_for(e)])
    assert await store.length(POOL) == 0
    assert [h.key for h in await store.holders(POOL)] == [e.key]
    assert await store.find_user("alice", "") == [(POOL, holder_for(e))]


async def test_find_user_finds_queued_and_holding_servers_across_pools(store: QueueStore) -> None:
    alice_gpu = entry("jupyter-alice", 1)
    alice_big = entry("jupyter-alice-big", 2, user="alice", server="big")
    await store.enqueue("gpu", alice_gpu, 300)
    await store.enqueue("a100", alice_big, 300)
    await store.grant("a100", alice_big.key, holder_for(alice_big))
    await store.enqueue("gpu", entry("jupyter-bob", 3), 300)
    await store.enqueue("gpu", entry("jupyter-anon", 4, user=""), 300)

    found = await store.find_user("alice", "")
    assert [(pool, type(item).__name__, item.key) for pool, item in found] == [
        ("gpu", "QueueEntry", "jhub/jupyter-alice")
    ]
    assert found[0][1] == alice_gpu
    [(pool, big)] = await store.find_user("alice", "big")
    assert (pool, type(big).__name__, big.key) == ("a100", "Holder", "jhub/jupyter-alice-big")
    assert await store.find_user("carol", "") == []
    assert await store.find_user("", "") == []

    await store.release("a100", alice_big.key, T0 + timedelta(hours=1))
    await store.remove("gpu", alice_gpu.key, 0)
    assert await store.find_user("alice", "big") == []
    assert await store.find_user("alice", "") == []


async def test_find_user_lists_pools_in_name_order(store: QueueStore) -> None:
    for pool, name in [("zeta", "jupyter-alice"), ("alpha", "jupyter-alice-2"), ("mid", "jupyter-alice-3")]:
        await store.enqueue(pool, entry(name, 1, user="alice"), 300)
    assert [pool for pool, _ in await store.find_user("alice", "")] == ["alpha", "mid", "zeta"]


async def test_find_user_matches_the_user_name_exactly(store: QueueStore) -> None:
    await store.enqueue(POOL, entry("jupyter-bob-smith---274c9d19", 1, user="Bob.Smith"), 300)
    await store.enqueue(POOL, entry("jupyter-bob", 2, user="bob"), 300)
    assert [item.user for _, item in await store.find_user("Bob.Smith", "")] == ["Bob.Smith"]
    assert await store.find_user("bob.smith", "") == []


async def test_ping_answers(store: QueueStore) -> None:
    assert await store.ping() is True


# -- pods being admitted (the leader's "no settle wait" decision) ------------------------------


def admitted(name: str, seconds: float, slices: int = 1) -> Admitted:
    return Admitted(namespace="jhub", name=name, since=at(seconds), slices=slices)


async def test_admitted_pods_come_back_oldest_first_from_since(store: QueueStore) -> None:
    for name, seconds in [("b", 2.0), ("a", 1.0), ("c", 3.000001)]:
        await store.note_admitted(POOL, admitted(name, seconds))
    assert [a.name for a in await store.admitted(POOL, at(0))] == ["a", "b", "c"]
    assert [a.name for a in await store.admitted(POOL, at(2.0))] == ["b", "c"]  # since is inclusive
    assert await store.admitted(POOL, at(3.000002)) == []
    assert await store.admitted("other-pool", at(0)) == []


async def test_an_admitted_note_round_trips_exactly(store: QueueStore) -> None:
    note = Admitted(namespace="ns-1", name="jupyter-iris", since=at(1.234567), slices=2)
    await store.note_admitted(POOL, note)
    assert await store.admitted(POOL, at(0)) == [note]


async def test_the_same_note_twice_is_one_and_old_notes_go_on_the_next_write(store: QueueStore) -> None:
    await store.note_admitted(POOL, admitted("a", 0.0))
    await store.note_admitted(POOL, admitted("a", 0.0))
    assert len(await store.admitted(POOL, at(-1))) == 1
    await store.note_admitted(POOL, admitted("b", 61.0))  # a is more than a minute older: dropped
    assert [a.name for a in await store.admitted(POOL, at(-1))] == ["b"]


# -- groupPriority ranks ----------------------------------------------------------------------


def ranked(name: str, t: float, rank: int, **kw: object) -> QueueEntry:
    return entry(name, t, **kw).model_copy(update={"rank": rank})


async def test_a_better_rank_goes_first_whenever_it_came_fifo_within_a_rank(store: QueueStore) -> None:
    for name, t, rank in [("jupyter-s1", 1, 1), ("jupyter-o1", 2, 2), ("jupyter-s2", 3, 1), ("jupyter-i1", 9, 0)]:
        await store.enqueue(POOL, ranked(name, t, rank), 300)
    assert await queued_keys(store) == ["jhub/jupyter-i1", "jhub/jupyter-s1", "jhub/jupyter-s2", "jhub/jupyter-o1"]
    assert await store.position(POOL, "jhub/jupyter-o1") == (4, 4)
    listed = {e.name: (e.requested_at, e.rank) for e in await store.entries(POOL)}
    assert listed["jupyter-i1"] == (at(9), 0) and listed["jupyter-o1"] == (at(2), 2), "the true time comes back"


async def test_a_ranked_grant_keeps_the_true_requested_at_and_wait(store: QueueStore) -> None:
    e = ranked("jupyter-stu", 1, 3)
    await store.enqueue(POOL, e, 300)
    assert await store.grant(POOL, e.key, holder_for(e, 90.0))
    [held] = await store.holders(POOL)
    assert (held.requested_at, held.rank) == (at(1), 3)
    assert await store.wait_samples(POOL) == [90.0]


async def test_a_kept_place_comes_back_only_at_the_same_rank(store: QueueStore) -> None:
    await store.enqueue(POOL, ranked("jupyter-ann", 1, 1), 300)
    await store.remove(POOL, "jhub/jupyter-ann", 300)
    [kept] = await store.kept_places(POOL)
    assert kept.requested_at == at(1), "the kept place's true time"
    back = await store.enqueue(POOL, ranked("jupyter-ann", 50, 1), 300)
    assert back.requested_at == at(1), "same rank: the old place"
    await store.remove(POOL, "jhub/jupyter-ann", 300)
    other = await store.enqueue(POOL, ranked("jupyter-ann", 60, 0), 300)
    assert (other.requested_at, other.rank) == (at(60), 0), "another rank: no place from the old one"


async def test_a_rebuild_keeps_the_ranks(store: QueueStore) -> None:
    entries = [ranked("jupyter-late", 5, 0), ranked("jupyter-early", 1, 2)]
    await store.rebuild(POOL, entries, [])
    assert await queued_keys(store) == ["jhub/jupyter-late", "jhub/jupyter-early"]
    assert {e.name: e.requested_at for e in await store.entries(POOL)} == {
        "jupyter-late": at(5),
        "jupyter-early": at(1),
    }
