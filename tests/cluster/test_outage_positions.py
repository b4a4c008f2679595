"""Positions through a Redis outage on the real local control plane: the hub's poll keeps working.

A queued pod's position is polled every 250 ms through a 10 s outage of redis-server (SIGSTOP: a
hung Redis, every call waits out its timeout; SIGKILL: a refused one, then an empty Redis). Every
answer must be a 200 with the pod's right position: from the Redis index (``source: store``)
before, from the replica's watch cache of the pods (``source: cache``, also in the
``X-Gpu-Queue-Source`` header) while Redis is down, and from the index again once it is back.
The other read routes are asked once mid-outage too. A ``[fault]`` line gives the figures.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.cluster import test_faults
from tests.cluster.test_faults import REDIS_PAUSE_SECONDS, Rig, report
from tests.invariants import wait_until

pytestmark = pytest.mark.timeout(240)

rig = test_faults.rig  # the fault tests' fixture: cluster, admin client, Target, pods, checker

POLL_SECONDS = 0.25
SOURCE_HEADER = "X-Gpu-Queue-Source"


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    header: str | None
    seconds: float


async def _get(session: aiohttp.ClientSession, rig: Rig, path: str) -> Answer:
    context = ssl.create_default_context(cafile=rig.target.ca_file)
    headers = {"Authorization": f"Bearer {rig.target.read_token}"}
    started = time.monotonic()
    async with session.get(f"{rig.target.api_url}/api/v1{path}", headers=headers, ssl=context) as response:
        body = await response.json(content_type=None)
        return Answer(response.status, body, response.headers.get(SOURCE_HEADER), time.monotonic() - started)


async def _poll(session: aiohttp.ClientSession, rig: Rig, path: str, seconds: float) -> list[Answer]:
    """One request every ``POLL_SECONDS`` for ``seconds`` (each its own task: a hung answer does
    not slow the schedule), like a hub whose users poll at once."""
    tasks: list[asyncio.Task[Answer]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tasks.append(asyncio.create_task(_get(session, rig, path)))
        await asyncio.sleep(POLL_SECONDS)
    return list(await asyncio.gather(*tasks))


def _summary(answers: list[Answer]) -> dict[str, Any]:
    return {
        "answers": len(answers),
        "statuses": dict(Counter(a.status for a in answers)),
        "sources": dict(Counter(str(a.body.get("source")) for a in answers if isinstance(a.body, dict))),
        "max_seconds": round(max((a.seconds for a in answers), default=0.0), 3),
    }


@pytest.mark.parametrize("fault", ["sigstop", "sigkill"])
async def test_a_queued_pods_position_is_answered_from_the_watch_cache_through_a_redis_outage(
    rig: Rig, fault: str
) -> None:
    cluster, checker = rig.cluster, rig.checker
    await rig.fill("oph", 8)
    queued = await rig.enqueue("opq", 3)
    await checker.converged(rig.target, rig.i3_within)
    name = queued[1]
    ns = rig.target.namespace
    path = f"/queue/{ns}/{name}"
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        before = await _get(session, rig, path)
        assert (before.status, before.body["position"], before.body["source"], before.header) == (
            200,
            2,
            "store",
            "store",
        ), before

        pid = cluster.state.processes["redis"].pid
        if fault == "sigstop":
            os.kill(pid, signal.SIGSTOP)
        else:
            cluster.redis_kill()
        down = time.monotonic()
        try:
            polling = asyncio.create_task(_poll(session, rig, path, REDIS_PAUSE_SECONDS))
            await asyncio.sleep(REDIS_PAUSE_SECONDS / 2)
            user = queued[2].removeprefix("jupyter-")
            others = {
                "user": await _get(session, rig, f"/users/{user}"),
                "listing": await _get(session, rig, "/pools/gpu/queue"),
                "pools": await _get(session, rig, "/pools"),
            }
            during = await polling
        finally:
            if fault == "sigstop":
                os.kill(pid, signal.SIGCONT)
            else:
                await cluster.redis_start()
        outage = time.monotonic() - down

        # Back: the index answers again (a killed Redis comes back empty: once it is rebuilt).
        back: list[Answer] = []

        async def from_the_store() -> Answer | None:
            answer = await _get(session, rig, path)
            back.append(answer)
            ok = answer.status == 200 and answer.body.get("source") == "store" and answer.body.get("position") == 2
            return answer if ok else None

        back_at = time.monotonic()
        after = await wait_until(from_the_store, rig.i3_within + 5, "the store's position answers again", 0.25)
        back_seconds = time.monotonic() - back_at

    figures = {
        "fault": fault,
        "outage_seconds": round(outage, 2),
        "during": _summary(during),
        "other_routes": {k: (a.status, a.header) for k, a in others.items()},
        "store_again_after_seconds": round(back_seconds, 2),
        "until_then": [(a.status, a.body.get("source"), a.body.get("state")) for a in back[:-1]][:8],
        "redis_timeout_seconds": cluster.service_config.redis.timeout_seconds,
    }
    report(f"positions through a redis outage ({fault})", figures)
    unavailable = sum(1 for a in during if a.status == 503)
    assert unavailable == 0, f"{unavailable} of {len(during)} position answers were 503: {figures}"
    for answer in during:
        assert answer.status == 200, answer
        body = answer.body
        assert (body["state"], body["position"], body["queueLength"]) == ("queued", 2, 3), body
        assert (body["source"], answer.header) == ("cache", "cache"), answer
        assert body["eta"]["known"] is False and "Redis" in body["eta"]["method"], body["eta"]
    assert len(during) >= REDIS_PAUSE_SECONDS / POLL_SECONDS * 0.9
    for what, answer in others.items():
        assert (answer.status, answer.header) == (200, "cache"), (what, answer)
    assert (others["user"].body["name"], others["user"].body["position"]) == (queued[2], 3)
    assert [e["name"] for e in others["listing"].body["entries"]] == queued
    gpu = next(p for p in others["pools"].body if p["name"] == "gpu")
    assert (gpu["queued"], len(gpu["holders"]), gpu["source"]) == (3, 8, "cache")
    assert (after.body["position"], after.header) == (2, "store")
    checker.check()
