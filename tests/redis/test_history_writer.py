"""The controller's history writer against a real Redis: notes become events readers can pair,
names only when the admin turns them on, and a Redis that does not answer costs the batch (counted)
but never an exception on the leader's path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from tests.helpers.clock import FakeClock
from tests.helpers.queue_records import T0
from tests.helpers.redis_server import RedisServer
from tests.helpers.waiting import wait_for
from webhook.cluster_view import PodView
from webhook.config import History
from webhook.controller.history_writer import HistoryWriter
from webhook.history import HistoryEvent, HistoryStore
from webhook.metrics import REGISTRY

POOL = "gpu"


def view(name: str, seconds: float) -> PodView:
    return PodView(namespace="jhub", name=name, pool=POOL, user=name.removeprefix("jupyter-"),
                   requested_at=T0 + timedelta(seconds=seconds))  # fmt: skip


def counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("gpu_queue_history_events_total", {"outcome": outcome}) or 0.0


@contextlib.asynccontextmanager
async def writing(store: HistoryStore, settings: History) -> AsyncIterator[HistoryWriter]:
    writer = HistoryWriter(store, settings)
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def history(redis_server: RedisServer, prefix: str) -> AsyncIterator[HistoryStore]:
    store = HistoryStore.from_url(redis_server.url, prefix=prefix, clock=FakeClock(T0 + timedelta(hours=1)))
    try:
        yield store
    finally:
        await store.aclose()


async def test_a_request_reads_back_as_arrival_grant_release_under_one_key_without_names(
    history: HistoryStore,
) -> None:
    alice = view("jupyter-alice", 0)
    async with writing(history, History()) as writer:
        writer.note("arrival", alice, POOL, 1, T0)
        writer.note("grant", alice, POOL, 1, T0 + timedelta(seconds=90), wait=90.0)
        writer.note("release", alice, POOL, 1, T0 + timedelta(seconds=690), hold=600.0)

        async def three() -> list[HistoryEvent] | None:
            events = await history.read(POOL)
            return events if len(events) == 3 else None

        events = await wait_for(three, 10, "three history events")
    assert [e.kind for e in events] == ["arrival", "grant", "release"]
    assert len({e.key for e in events}) == 1, "one request, one key"
    assert events[1].wait_seconds == 90.0 and events[2].hold_seconds == 600.0
    assert all(e.user is None for e in events), "names are off by default"


async def test_names_are_kept_only_when_the_admin_turns_them_on(history: HistoryStore) -> None:
    async with writing(history, History(recordUserNames=True)) as writer:
        writer.note("arrival", view("jupyter-bob", 0), POOL, 2, T0)
        events = await wait_for(lambda: history.read(POOL), 10, "bob's arrival")
    assert events[0].user == "bob" and events[0].slices == 2


async def test_a_redis_that_does_not_answer_loses_the_batch_counted_and_the_writer_goes_on(
    own_redis: RedisServer, prefix: str
) -> None:
    store = HistoryStore.from_url(own_redis.url, prefix=prefix, timeout_seconds=0.5)
    lost_before = counted("lost")
    try:
        own_redis.stop()
        writer = HistoryWriter(store, History())
        writer.note("arrival", view("jupyter-carol", 0), POOL, 1, T0)
        await writer.write([writer.buffer.get_nowait()])  # must not raise
        assert counted("lost") == lost_before + 1
    finally:
        await store.aclose()


async def test_a_full_buffer_drops_the_note_and_counts_it(history: HistoryStore) -> None:
    writer = HistoryWriter(history, History())
    writer.buffer = asyncio.Queue(maxsize=1)  # as full as BUFFER notes a writer has not drained
    dropped_before = counted("dropped")
    writer.note("arrival", view("jupyter-dan", 0), POOL, 1, T0)
    writer.note("arrival", view("jupyter-erin", 0), POOL, 1, T0)
    assert writer.buffer.qsize() == 1 and counted("dropped") == dropped_before + 1
