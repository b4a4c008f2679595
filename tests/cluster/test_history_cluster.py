"""The queue's history as the running service records it, on the real local control plane: one
slice; Hana holds it, Abe and Cara wait; Abe gives up, Hana leaves and Cara gets the slice. Redis
then holds each arrival, the two grants with their waits, Hana's release with her hold and Abe's
cancel, paired by key and without names (the default)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from gpu_queue_dev.cluster import DevCluster
from tests.helpers.waiting import wait_for
from tests.scenarios import Target, gated
from webhook.history import HistoryEvent, HistoryStore

pytestmark = pytest.mark.timeout(120)


async def test_arrivals_grants_a_release_and_a_cancel_are_recorded_in_redis(
    clean_cluster: DevCluster, target: Target
) -> None:
    await clean_cluster.set_gpu_slices(1)
    started = datetime.now(UTC)

    async def state(name: str, waiting: bool) -> bool:
        pod = await target.pod(name)
        return pod is not None and gated(pod) == waiting

    for user, waiting in (("hana", False), ("abe", True), ("cara", True)):
        await target.spawn(user)
        await wait_for(lambda u=user, w=waiting: state(f"jupyter-{u}", w), 30, f"{user} placed")
    await target.logout("jupyter-abe")
    await target.logout("jupyter-hana")
    await wait_for(lambda: state("jupyter-cara", False), 30, "cara granted")

    store = HistoryStore.from_url(clean_cluster.redis_url, prefix=clean_cluster.service_config.redis.key_prefix)
    try:

        async def recorded() -> list[HistoryEvent] | None:
            events = [e for e in await store.read("gpu") if e.at >= started or e.kind == "arrival"]
            kinds = Counter(e.kind for e in events)
            complete = kinds["arrival"] >= 3 and kinds["grant"] >= 2 and kinds["release"] >= 1 and kinds["cancel"] >= 1
            return events if complete else None

        events = await wait_for(recorded, 20, "the history of the three requests")
    finally:
        await store.aclose()
    by_key: dict[str, dict[str, HistoryEvent]] = {}
    for event in events:
        by_key.setdefault(event.key, {}).setdefault(event.kind, event)
    journeys = sorted(tuple(k for k in ("arrival", "grant", "release", "cancel") if k in e) for e in by_key.values())
    assert journeys == [("arrival", "cancel"), ("arrival", "grant"), ("arrival", "grant", "release")], journeys
    hana = next(e for e in by_key.values() if "release" in e)
    cara = next(e for e in by_key.values() if "grant" in e and "release" not in e)
    abe = next(e for e in by_key.values() if "cancel" in e)
    assert hana["release"].hold_seconds is not None and hana["release"].hold_seconds > 0
    assert cara["grant"].wait_seconds is not None and cara["grant"].wait_seconds > 0, "cara waited for hana"
    assert abe["cancel"].wait_seconds is not None and abe["cancel"].wait_seconds >= 0
    assert all(e.user is None for e in events), "no names unless the admin turns them on"
    assert all(e.slices == 1 and e.pool == "gpu" for e in events)
