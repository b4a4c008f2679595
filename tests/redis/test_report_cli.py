"""``gpu-queue report`` end to end: a synthetic day recorded with ``HistoryStore`` in a real
redis-server, then the CLI (``webhook.cli.main``, in-process) reading it through a config file
that names that Redis and key prefix, as an admin would run it.

The CLI reports the last N days from the real clock, so the day is placed two UTC days ago; no
test waits for anything."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from tests.helpers.redis_server import RedisServer, free_port
from tests.unit.test_report import synthetic_day
from webhook.cli import main
from webhook.config import default_config_text
from webhook.history import HistoryEvent, HistoryStore
from webhook.whatif import percentile

pytestmark = pytest.mark.redis

CAPACITY = 4


def two_days_ago() -> datetime:
    """Midnight UTC two days back: the whole synthetic day lies in the last 7 days, on one date."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=2)


def write_config(path: Path, url: str, prefix: str, *, capacity: int | str = CAPACITY) -> str:
    """The shipped config with this test's Redis, key prefix and a fixed slice count."""
    data = yaml.safe_load(default_config_text())
    data["redis"] = {"url": url, "keyPrefix": prefix, "timeoutSeconds": 2}
    data["pools"]["gpu"]["capacity"] = capacity
    path.write_text(yaml.safe_dump(data))
    return str(path)


def record(url: str, prefix: str, events: list[HistoryEvent]) -> None:
    async def write() -> None:
        store = HistoryStore.from_url(url, prefix=prefix, timeout_seconds=2.0)
        try:
            await store.record_many(events)
        finally:
            await store.aclose()

    asyncio.run(write())


@pytest.fixture(autouse=True)
def _no_config_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GPU_QUEUE_CONFIG", "GPU_QUEUE_REDIS__URL", "GPU_QUEUE_REDIS__KEY_PREFIX"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def day() -> datetime:
    return two_days_ago()


@pytest.fixture
def recorded(redis_server: RedisServer, prefix: str, day: datetime) -> list[HistoryEvent]:
    events = synthetic_day(day, capacity=CAPACITY)
    record(redis_server.url, prefix, events)
    return events


@pytest.fixture
def config_file(tmp_path: Path, redis_server: RedisServer, prefix: str) -> str:
    return write_config(tmp_path / "config.yaml", redis_server.url, prefix)


def test_the_text_report_of_a_recorded_day_gives_counts_waits_and_the_what_if_table(
    recorded: list[HistoryEvent], config_file: str, day: datetime, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--config", config_file]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    arrivals = sum(e.kind == "arrival" for e in recorded)
    grants = sum(e.kind == "grant" for e in recorded)
    cancels = sum(e.kind == "cancel" for e in recorded)
    assert lines[0].startswith(f"pool gpu, last 7 days: {arrivals} requests, {grants} granted, {cancels} cancelled; ")
    assert lines[0].endswith(f"peak {CAPACITY} of {CAPACITY} slices in use")
    assert lines[1].endswith(f"; capacity {CAPACITY} (config)")
    day_row = next(line for line in lines if line.startswith(day.date().isoformat()))
    assert day_row.split()[1:4] == [str(arrivals), str(grants), str(cancels)]
    header = lines.index("SLICES  WAIT P50  WAIT P95  QUEUED  STARTED WITHIN 5 MIN  GAVE UP")
    assert [line.split()[0] for line in lines[header + 1 : header + 6]] == ["4", "5", "6", "7", "8"]  # 4..2x4
    assert lines[-1] == "with 8 slices, 100 % of users would have started at once"


def test_the_json_report_carries_the_same_numbers_in_camel_case(
    recorded: list[HistoryEvent], config_file: str, day: datetime, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--config", config_file, "--pool", "gpu", "--what-if", "2..3", "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    [pool] = data["pools"]
    assert pool["pool"] == "gpu" and pool["capacity"] == CAPACITY and pool["periodDays"] == 7
    assert pool["events"] == len(recorded)
    assert pool["arrivals"] == sum(e.kind == "arrival" for e in recorded)
    assert pool["skippedWithoutArrival"] == 0 and pool["stillWaiting"] == 0 and pool["stillHolding"] == 0
    assert [w["slices"] for w in pool["whatIf"]] == [2, 3]
    [busy] = [d for d in pool["byDay"] if d["arrivals"]]
    assert busy["day"] == day.date().isoformat()
    recorded_waits = sorted(e.wait_seconds or 0.0 for e in recorded if e.kind == "grant")
    assert pool["waitP95Seconds"] == percentile(recorded_waits, 95)
    assert max(step["inUse"] for step in pool["inUse"]) == pool["peakInUse"] == CAPACITY


def test_a_pool_without_history_in_the_period_says_so_and_where_history_comes_from(
    recorded: list[HistoryEvent], config_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--config", config_file, "--pool", "gpu", "--days", "1"]) == 0
    assert capsys.readouterr().out == (
        "no history recorded for pool gpu in the last day; "
        "history is recorded by the leader from the time it runs a version with history\n"
    )


def test_without_any_history_the_report_says_so(config_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--config", config_file]) == 0
    assert capsys.readouterr().out == (
        "no history recorded in the last 7 days; "
        "history is recorded by the leader from the time it runs a version with history\n"
    )
    assert main(["report", "--config", config_file, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"pools": []}


def test_capacity_auto_replays_from_the_peak_in_use_to_twice_it(
    recorded: list[HistoryEvent],
    tmp_path: Path,
    redis_server: RedisServer,
    prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path / "auto.yaml", redis_server.url, prefix, capacity="auto")
    assert main(["report", "--config", config, "-o", "json"]) == 0
    [pool] = json.loads(capsys.readouterr().out)["pools"]
    assert pool["capacity"] is None
    assert [w["slices"] for w in pool["whatIf"]] == [4, 5, 6, 7, 8]


def test_an_unreachable_redis_is_one_line_that_says_what_to_do_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    config = write_config(tmp_path / "down.yaml", f"redis://:s3cret-password@127.0.0.1:{port}/0", "down")
    assert main(["report", "--config", config]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"gpu-queue: cannot read the queue history from Redis at 127.0.0.1:{port} (")
    assert "point redis.url in --config (or GPU_QUEUE_REDIS__URL) at the service's Redis" in err
    assert "s3cret-password" not in err


def test_a_bad_config_file_is_reported_like_config_check_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert capsys.readouterr().err.startswith("gpu-queue: cannot read configuration file ")
