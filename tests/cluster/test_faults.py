"""Faults injected into the local control plane while the queue is busy, each followed by the
invariant checks of ``tests/invariants.py`` (I1 at every watch event, I2 over every pair of pods,
one grant per pod, I3 through the queue API) and a ``[fault]`` line with the figures.

These are the harder cases next to ``test_scenarios.py``'s quiet Redis outage and leader kill: the
fault lands in the middle of spawns, logouts or a grant storm, not between them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.invariants import (
    InvariantChecker,
    PodFactory,
    current_leader,
    delete_pods,
    http_text,
    lease_holder,
    make_target,
    pod_name,
    samples,
    wait_until,
)
from tests.scenarios import Target, gated
from webhook.certs import CertPair, make_serving_cert
from webhook.devcluster import DevCluster
from webhook.kube import Kube, load_client

pytestmark = pytest.mark.timeout(240)

# The API server gives the webhook 2 s (the chart's timeoutSeconds): admission must answer within it.
WEBHOOK_TIMEOUT = 2.0


def report(name: str, data: dict[str, Any]) -> None:
    print(f"[fault] {name}: {json.dumps(data, default=str)}")


@dataclass
class Rig:
    """One test's handles: the cluster, an admin client, the scenarios' Target, pods, the checker."""

    cluster: DevCluster
    kube: Kube
    target: Target
    factory: PodFactory
    checker: InvariantChecker

    @property
    def reconcile(self) -> float:
        return self.cluster.service_config.controller.reconcile_seconds

    async def spawn(self, user: str, profile: str = "gpu-enabled") -> tuple[str, float]:
        """Create ``user``'s pod; (name, seconds the API server took, admission webhooks included)."""
        started = time.monotonic()
        pod = await self.factory.create(self.kube, user, profile)
        took = time.monotonic() - started
        if profile == "gpu-enabled":
            assert gated(pod), f"{pod['metadata']['name']} was admitted without the queue gate"
        return pod["metadata"]["name"], took

    async def logout(self, names: list[str]) -> None:
        await delete_pods(self.kube, self.target.namespace, names)

    async def fill(self, prefix: str, count: int) -> list[str]:
        """``count`` users take every slice; returns when the checker sees them all holding."""
        names = [(await self.spawn(f"{prefix}{i:02d}"))[0] for i in range(count)]
        await self.checker.wait(lambda v: set(names) <= set(v.holding), 30, f"{count} holders")
        return names

    async def enqueue(self, prefix: str, count: int, start: int = 0) -> list[str]:
        """``count`` more users, one after another (so requested-at order is spawn order), queued."""
        names = [(await self.spawn(f"{prefix}{i:02d}"))[0] for i in range(start, start + count)]
        await self.checker.wait(lambda v: v.queued[-count:] == names, 15, f"{names} queued in order")
        return names

    def use_replica(self, i: int) -> None:
        """Ask the queue API of replica ``i`` from now on (the other one was killed)."""
        self.target = replace(self.target, api_url=self.cluster.api_url(i))


@pytest.fixture
async def rig(clean_cluster: DevCluster) -> AsyncIterator[Rig]:
    kube = Kube(await load_client(clean_cluster.kubeconfig))
    watch_kube = Kube(await load_client(clean_cluster.kubeconfig))
    namespace = clean_cluster.hub_namespace
    checker = InvariantChecker(
        watch_kube,
        namespace,
        capacity=clean_cluster.slices,
        settle_seconds=clean_cluster.service_config.controller.order_settle_seconds,
    )
    try:
        factory = await PodFactory.build(namespace)
        async with checker:
            yield Rig(clean_cluster, kube, make_target(clean_cluster, kube), factory, checker)
    finally:
        await kube.aclose()
        await watch_kube.aclose()


def _log_lines(cluster: DevCluster, offsets: list[int], *messages: str) -> dict[str, int]:
    """How many lines with each message the replicas logged after ``offsets`` (JSON log lines)."""
    counts = dict.fromkeys(messages, 0)
    for i, offset in enumerate(offsets):
        for line in cluster.service_log(i)[offset:].splitlines():
            for message in messages:
                if f'"{message}"' in line:
                    counts[message] += 1
    return counts


# ------------------------------------------------------------------------------------- Redis


async def test_redis_killed_and_restarted_mid_burst_keeps_capacity_and_order_then_reindexes(rig: Rig) -> None:
    """Redis dies after the 6th of 20 paced spawns and comes back (empty) after the 15th, while 4
    holders log out (3 of them with Redis down): every spawn is admitted and gated in time, the
    4 grants go to the 4 earliest requests, and the index is rebuilt with positions 1..16."""
    cluster, checker = rig.cluster, rig.checker
    holders = await rig.fill("rkh", 8)
    users = [f"rkq{i:02d}" for i in range(20)]
    leaving = iter(holders[:4])
    spawns: list[asyncio.Task[tuple[str, float]]] = []
    killed = back = 0.0
    for i, user in enumerate(users):
        spawns.append(asyncio.create_task(rig.spawn(user)))
        if i == 5:
            cluster.redis_kill()
            killed = time.monotonic()
        if i in (6, 9, 12, 15):
            await rig.logout([next(leaving)])
        if i == 14:
            await cluster.redis_start()
            back = time.monotonic()
        await asyncio.sleep(0.15)  # the burst's pace: one spawn every 150 ms
    answered = await asyncio.gather(*spawns)
    burst_end = time.monotonic()
    slowest = max(took for _, took in answered)
    assert slowest < WEBHOOK_TIMEOUT, f"a spawn took {slowest:.2f}s with Redis down (webhook timeout 2 s)"

    by_order = sorted((t for t in checker.tracks.values() if t.name.startswith("jupyter-rkq")), key=lambda t: t.order)
    first4 = [t.name for t in by_order[:4]]
    expected_holding = sorted([*holders[4:], *first4])
    expected_queue = [t.name for t in by_order[4:]]
    await checker.wait(
        lambda v: v.holding == expected_holding and v.queued == expected_queue,
        15,
        "the 4 earliest requests of the burst to hold and the other 16 to queue in order",
    )
    i3 = await checker.converged(rig.target, rig.reconcile * 2 + 2)
    since_back = time.monotonic() - back
    summary = checker.check()
    granted = [t.name for t in checker.granted() if t.name.startswith("jupyter-rkq")]
    assert granted == first4, f"grants went {granted}, requested-at order is {first4}"
    report(
        "redis killed mid-burst",
        {
            "redis_down_seconds": round(back - killed, 2),
            "spawns": len(answered),
            "spawn_max_seconds": round(slowest, 3),
            "granted_in_order": granted,
            "queue_length": len(expected_queue),
            "I3_converged_seconds_after_burst": round(i3, 2),
            "I3_converged_seconds_after_redis_back": round(since_back, 2),
            "burst_to_converged_seconds": round(time.monotonic() - burst_end, 2),
            "reconcile_seconds": rig.reconcile,
            **summary,
        },
    )


async def test_redis_paused_admission_answers_grants_continue_and_index_converges(rig: Rig) -> None:
    """SIGSTOP on redis-server (a network partition: connections hang, nothing is refused) for a
    few seconds while users spawn and log out: spawns are answered and gated within the webhook
    timeout, the freed slices go to the next in order *while Redis is still paused*, and after
    SIGCONT the index agrees with the pods again within a reconcile period."""
    cluster, checker = rig.cluster, rig.checker
    holders = await rig.fill("rph", 8)
    queued = await rig.enqueue("rpq", 4)
    await checker.converged(rig.target, rig.reconcile * 2 + 2)
    pause = 6.0
    pid = cluster.state.processes["redis"].pid
    spawn_seconds: list[float] = []
    late: list[str] = []
    grant_seconds = float("nan")
    os.kill(pid, signal.SIGSTOP)
    paused = time.monotonic()
    try:
        for i in range(4, 8):
            name, took = await rig.spawn(f"rpq{i:02d}")
            late.append(name)
            spawn_seconds.append(took)
        logged_out = time.monotonic()
        await rig.logout(holders[:2])
        expected_queue = queued[2:] + late
        await checker.wait(
            lambda v: set(queued[:2]) <= set(v.holding) and v.queued == expected_queue,
            max(0.5, paused + pause - time.monotonic()),
            "the next two in order to be granted while Redis is still paused",
        )
        grant_seconds = time.monotonic() - logged_out
        # The rest of the pause: a bounded window that checks I1 at every poll.
        while time.monotonic() < paused + pause:
            assert checker.max_in_use <= checker.capacity, checker.violations
            await asyncio.sleep(0.1)
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    i3 = await checker.converged(rig.target, rig.reconcile * 2 + 2)
    summary = checker.check()
    assert max(spawn_seconds) < WEBHOOK_TIMEOUT, f"spawns took {spawn_seconds} with Redis paused"
    report(
        "redis paused",
        {
            "paused_seconds": round(resumed - paused, 2),
            "spawn_seconds_while_paused": [round(s, 3) for s in spawn_seconds],
            "grant_seconds_after_logout_while_paused": round(grant_seconds, 2),
            "I3_converged_seconds_after_sigcont": round(i3, 2),
            "reconcile_seconds": rig.reconcile,
            **summary,
        },
    )


# -------------------------------------------------------------------------------- API server


async def test_apiserver_restart_mid_queue_watches_relist_and_next_logout_grants_in_order(rig: Rig) -> None:
    """The API server restarts under a full pool and a queue of 6. Right after it is back, before
    the service's watches can have resumed, 2 holders leave and 2 users spawn: the re-list must
    catch all four changes (2 grants in order, 2 new tail entries), and afterwards a plain logout
    still triggers the next grant in order, promptly."""
    cluster, checker = rig.cluster, rig.checker
    holders = await rig.fill("arh", 8)
    queued = await rig.enqueue("arq", 6)
    await checker.converged(rig.target, rig.reconcile * 2 + 2)
    offsets = [len(cluster.service_log(i)) for i in range(cluster.replicas)]

    down = time.monotonic()
    await cluster.restart_apiserver()
    back = time.monotonic()
    await rig.logout(holders[:2])
    late = [(await rig.spawn(f"arq{i:02d}"))[0] for i in (6, 7)]
    expected = queued[2:] + late
    await checker.wait(
        lambda v: set(queued[:2]) <= set(v.holding) and len(v.holding) == 8 and v.queued == expected,
        30,
        "the two freed slices to go to the next two in order after the restart",
    )
    resumed = time.monotonic() - back
    i3 = await checker.converged(rig.target, rig.reconcile * 2 + 2)

    left = time.monotonic()
    await rig.logout([holders[2]])
    await checker.wait(
        lambda v: queued[2] in v.holding and v.queued == expected[1:],
        10,
        f"{queued[2]} (the head) to get the slice freed after the restart",
    )
    next_grant = time.monotonic() - left
    summary = checker.check()
    logs = _log_lines(
        cluster,
        offsets,
        "watch failed, retrying",
        "watch expired, re-listing",
        "leadership acquired",
        "leadership lost",
    )
    assert logs["watch failed, retrying"] + logs["watch expired, re-listing"] > 0, (
        f"no replica logged a broken watch across the restart: {logs}"
    )
    assert next_grant < 2.0, f"the first grant after recovery took {next_grant:.2f}s"
    report(
        "apiserver restart",
        {
            "apiserver_away_seconds": round(back - down, 2),
            "grants_after_back_seconds": round(resumed, 2),
            "I3_converged_seconds": round(i3, 2),
            "next_logout_to_grant_seconds": round(next_grant, 3),
            "service_logs": logs,
            **summary,
        },
    )


# ------------------------------------------------------------------------------------ leader


async def test_leader_sigkilled_in_a_grant_storm_no_double_grant_takeover_and_kept_place(rig: Rig) -> None:
    """All 8 holders leave at once and the leader is SIGKILLed right after: whatever it granted
    stays granted once (admitted-at never rewritten), I1 holds at every watch event, the other
    replica takes over within a few lease durations and grants exactly the next 8 in order, and a
    user who cancelled before the crash gets the old place back from the new leader (I5)."""
    cluster, checker = rig.cluster, rig.checker
    holders = await rig.fill("lkh", 8)
    queued = await rig.enqueue("lkq", 12)
    cancelled = queued[10]
    first_stamp = checker.track(cancelled)
    assert first_stamp is not None
    original = first_stamp.stamp
    await rig.logout([cancelled])  # its place is kept as a tombstone by the current leader
    rest = [n for n in queued if n != cancelled]
    await checker.wait(lambda v: v.queued == rest, 10, "the cancelled pod to leave the queue")
    await checker.converged(rig.target, rig.reconcile * 2 + 2)
    leader = await current_leader(rig.kube)
    survivor = 1 - leader
    lease = cluster.service_config.controller.lease_duration_seconds

    await rig.logout(holders)
    cluster.kill_service(leader)
    killed = time.monotonic()
    granted_before_kill = len([t for t in checker.granted() if t.name in rest])
    if cluster.state.webhook_replica == leader:
        await cluster.point_webhooks_at(survivor)  # what the Service does when an endpoint dies
    rig.use_replica(survivor)
    await checker.wait(
        lambda v: v.holding == sorted(rest[:8]) and v.queued == rest[8:],
        lease * 4,
        "the surviving replica to grant exactly the next 8 in order",
    )
    takeover = time.monotonic() - killed
    assert await lease_holder(rig.kube) == survivor
    assert takeover < lease * 3, f"takeover took {takeover:.1f}s for a {lease}s lease"

    back, _ = await rig.spawn(cancelled.removeprefix("jupyter-"))
    await checker.wait(lambda v: v.queued == [*rest[8:10], back, *rest[10:]], 15, f"{back} back at its old place")
    returned = checker.track(back)
    assert returned is not None and returned.stamp == original, (returned, original)
    i3 = await checker.converged(rig.target, rig.reconcile * 2 + 2)
    summary = checker.check()
    report(
        "leader killed in a grant storm",
        {
            "killed_replica": leader,
            "granted_before_kill": granted_before_kill,
            "takeover_seconds": round(takeover, 2),
            "lease_duration_seconds": lease,
            "kept_place_restored": True,
            "I3_converged_seconds": round(i3, 2),
            **summary,
        },
    )


# ------------------------------------------------------------------------------ certificates


def _tls_reloads(text: str) -> float:
    return sum(v for labels, v in samples(text, "gpu_queue_tls_reloads_total") if labels.get("result") == "ok")


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """A complete file under a temporary name, then one rename: a reader sees old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


async def _served_cert(url: str, ca_file: Path) -> bytes:
    """The DER certificate a new TLS handshake with ``url`` gets."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca_file))
    _, writer = await asyncio.open_connection(host, int(port), ssl=context, server_hostname="localhost")
    try:
        der: bytes = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return der
    finally:
        writer.close()


async def test_serving_cert_rotated_under_pod_churn_fails_no_creation_and_is_reloaded(rig: Rig) -> None:
    """While 4 loops create and delete CPU pods through the API server (every create calls both
    webhooks over TLS), the serving cert files are replaced by a new cert from the same CA: no
    pod creation fails, every replica's ``gpu_queue_tls_reloads_total{result="ok"}`` goes up, and
    new handshakes get the new certificate."""
    cluster = rig.cluster
    pki = cluster.pki
    before = [_tls_reloads(await http_text(cluster.metrics_url(i) + "/metrics")) for i in range(cluster.replicas)]
    reload_every = cluster.service_config.tls.reload_seconds
    stop = asyncio.Event()
    created: list[float] = []
    failures: list[str] = []

    async def churn(worker: int) -> None:
        n = 0
        while not stop.is_set():
            user = f"tls{worker}x{n}"
            n += 1
            try:
                _, took = await rig.spawn(user, "cpu-only")
                created.append(took)
            except Exception as exc:  # every failed creation is the finding: keep them all
                failures.append(f"{user}: {exc!r}")
                continue
            await rig.logout([pod_name(user)])

    workers = [asyncio.create_task(churn(w)) for w in range(4)]
    try:
        await wait_until(lambda: _at_least(created, 20), 30, "20 creations before the rotation")
        ca = CertPair((pki / "webhook-ca.crt").read_bytes(), (pki / "webhook-ca.key").read_bytes())
        fresh = make_serving_cert(ca, ["localhost"], ["127.0.0.1"])
        fresh_der = x509.load_pem_x509_certificate(fresh.cert_pem).public_bytes(serialization.Encoding.DER)
        _write_atomic(pki / "webhook-tls.key", fresh.key_pem, 0o600)
        _write_atomic(pki / "webhook-tls.crt", fresh.cert_pem, 0o644)
        rotated = time.monotonic()
        at_rotation = len(created)

        async def reloaded_everywhere() -> bool:
            texts = [await http_text(cluster.metrics_url(i) + "/metrics") for i in range(cluster.replicas)]
            return all(_tls_reloads(t) > b for t, b in zip(texts, before, strict=True))

        await wait_until(reloaded_everywhere, reload_every * 2 + 5, "every replica to reload the serving cert")
        reload_seconds = time.monotonic() - rotated
        webhook_url = cluster.api_url(cluster.state.webhook_replica)

        async def serves_fresh() -> bool:
            return await _served_cert(webhook_url, cluster.ca_file) == fresh_der

        await wait_until(serves_fresh, 5, "new handshakes to get the new cert")
        after_reload = len(created)
        await wait_until(lambda: _at_least(created, after_reload + 20), 30, "20 creations after the reload")
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
    assert not failures, f"{len(failures)} pod creations failed across the rotation: {failures[:5]}"
    created_sorted = sorted(created)
    report(
        "serving cert rotated under churn",
        {
            "creations": len(created),
            "creations_before_rotation": at_rotation,
            "failed_creations": len(failures),
            "reload_seconds_after_rotation": round(reload_seconds, 2),
            "reload_interval_seconds": reload_every,
            "create_p50_seconds": round(created_sorted[len(created_sorted) // 2], 3),
            "create_max_seconds": round(created_sorted[-1], 3),
            "tls_reloads_ok_before": before,
        },
    )


async def _at_least(items: list[float], count: int) -> bool:
    return len(items) >= count
