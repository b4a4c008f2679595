"""Fixtures for the redis tier: real ``redis-server`` processes on free 127.0.0.1 ports.

``redis_server`` is shared by the session (tests isolate themselves by key prefix);
``own_redis`` is a private server for tests that kill, pause or restart it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.helpers.clock import FakeClock
from tests.helpers.redis_server import REDIS_SERVER_ENV, RedisServer, find_redis_server
from webhook.redis_store import RedisQueueStore

pytestmark = pytest.mark.redis


def _require_binary() -> None:
    if find_redis_server() is None:
        explicit = os.environ.get(REDIS_SERVER_ENV)
        where = f"${REDIS_SERVER_ENV}={explicit} is not executable" if explicit else "redis-server is not on PATH"
        pytest.skip(f"{where}: the redis tier needs a real Redis (install it or set ${REDIS_SERVER_ENV})")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    _require_binary()
    server = RedisServer(tmp_path_factory.mktemp("redis-shared")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    _require_binary()
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix per test: tests share one Redis without seeing each other."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def store(redis_server: RedisServer, prefix: str, clock: FakeClock) -> AsyncIterator[RedisQueueStore]:
    s = RedisQueueStore(redis_server.url, prefix=prefix, timeout_seconds=2.0, clock=clock)
    try:
        yield s
    finally:
        await s.aclose()
