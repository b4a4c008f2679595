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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gpu_queue_dev.cluster import DevCluster
from tests.invariants import (
    InvariantChecker,
    PodFactory,
    apiserver_metrics,
    current_leader,
    delete_pods,
    http_text,
    lease_holder,
    make_target,
    pod_name,
    pool_status,
    samples,
    wait_until,
)
from tests.scenarios import Target, gated
from webhook.certs import CertPair, make_serving_cert
from webhook.kube import Kube, load_client

pytestmark = pytest.mark.timeout(240)

# The API server gives the webhook 2 s (the chart's timeoutSeconds): admission must answer within it.
WEBHOOK_TIMEOUT = 2.0
# Long enough to span several controller passes and Redis timeouts.
REDIS_PAUSE_SECONDS = 10.0


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

    @property
    def i3_within(self) -> float:
        """I3's bound: one reconcile period, plus 1 s for polling and a noisy two-core machine."""
        return self.reconcile + 1.0

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

    async def enqueue(self, prefix: str, count: int) -> list[str]:
        """``count`` more users, one after another (so requested-at order is spawn order), queued."""
        names = [(await self.spawn(f"{prefix}{i:02d}"))[0] for i in range(count)]
        await self.checker.wait(lambda v: v.queued[-count:] == names, 15, f"{names} queued in order")
        return names

    def grant_seconds(self, names: list[str], since: float) -> dict[str, float]:
        """Seconds from ``since`` until the checker saw each of ``names`` granted (if it was)."""
        tracks = [(n, self.checker.track(n)) for n in names]
        return {n: round(t.granted_mono - since, 2) for n, t in tracks if t is not None and t.granted_mono is not None}

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
    i3 = await checker.converged(rig.target, rig.i3_within)
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
    """SIGSTOP on redis-server (a network partition: connections hang, nothing is refused) while
    2 holders log out and 4 users spawn: spawns are answered and gated within the webhook timeout,
    the freed slices go to the next two in order *while Redis is still paused* (from the pods
    alone), and after SIGCONT the index agrees with the pods again within a reconcile period."""
    cluster, checker = rig.cluster, rig.checker
    holders = await rig.fill("rph", 8)
    queued = await rig.enqueue("rpq", 4)
    await checker.converged(rig.target, rig.i3_within)
    pause = REDIS_PAUSE_SECONDS
    pid = cluster.state.processes["redis"].pid
    spawn_seconds: list[float] = []
    late: list[str] = []
    os.kill(pid, signal.SIGSTOP)
    paused = time.monotonic()
    try:
        await rig.logout(holders[:2])
        logged_out = time.monotonic()
        for i in range(4, 8):
            name, took = await rig.spawn(f"rpq{i:02d}")
            late.append(name)
            spawn_seconds.append(took)
        expected_queue = queued[2:] + late
        await checker.wait(
            lambda v: set(queued[:2]) <= set(v.holding) and v.queued == expected_queue,
            max(0.5, paused + pause - time.monotonic()),
            "the next two in order to be granted while Redis is still paused",
        )
        grant_seconds = rig.grant_seconds(queued[:2], logged_out)
        # The rest of the pause: a bounded window that checks I1 at every poll.
        while time.monotonic() < paused + pause:
            assert checker.max_in_use <= checker.capacity, checker.violations
            await asyncio.sleep(0.1)
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    i3 = await checker.converged(rig.target, rig.i3_within)
    summary = checker.check()
    assert max(spawn_seconds) < WEBHOOK_TIMEOUT, f"spawns took {spawn_seconds} with Redis paused"
    report(
        "redis paused",
        {
            "paused_seconds": round(resumed - paused, 2),
            "spawn_seconds_while_paused": [round(s, 3) for s in spawn_seconds],
            "grant_seconds_after_logout_while_paused": grant_seconds,
            "redis_timeout_seconds": cluster.service_config.redis.timeout_seconds,
            "I3_converged_seconds_after_sigcont": round(i3, 2),
            "reconcile_seconds": rig.reconcile,
            **summary,
        },
    )


async def test_redis_paused_a_storm_of_4_logouts_is_granted_within_2s(rig: Rig) -> None:
    """Grants come from the pods, so a hung Redis must not delay them: 4 holders leave at once
    while redis-server is stopped, and the next 4 in order hold their slices within 2 s."""
    cluster, checker = rig.cluster, rig.checker
    holders = await rig.fill("rsh", 8)
    queued = await rig.enqueue("rsq", 4)
    await checker.converged(rig.target, rig.i3_within)
    pid = cluster.state.processes["redis"].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        left = time.monotonic()
        await rig.logout(holders[:4])
        try:
            await checker.wait(lambda v: set(queued) <= set(v.holding), 2.0, "the next 4 granted within 2 s")
        finally:
            within = rig.grant_seconds(queued, left)
    finally:
        os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic() - left
    await checker.wait(lambda v: set(queued) <= set(v.holding), 20, "the 4 grants after SIGCONT")
    report(
        "redis paused, storm of 4",
        {"granted_within_2s": within, "sigcont_after": round(resumed, 2), "all": rig.grant_seconds(queued, left)},
    )
    checker.check()


# -------------------------------------------------------------------------------- API server


async def test_apiserver_restart_mid_queue_watches_relist_and_next_logout_grants_in_order(rig: Rig) -> None:
    """The API server restarts under a full pool and a queue of 6. Right after it is back, before
    the service's watches can have resumed, 2 holders leave and 2 users spawn: the re-list must
    catch all four changes (2 grants in order, 2 new tail entries), and afterwards a plain logout
    still triggers the next grant in order, promptly."""
    cluster, checker = rig.cluster, rig.checker
    holders = await rig.fill("arh", 8)
    queued = await rig.enqueue("arq", 6)
    await checker.converged(rig.target, rig.i3_within)
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
    i3 = await checker.converged(rig.target, rig.i3_within)

    left = time.monotonic()
    await rig.logout([holders[2]])
    await checker.wait(
        lambda v: queued[2] in v.holding and v.queued == expected[1:],
        10,
        f"{queued[2]} (the head) to get the slice freed after the restart",
    )
    next_grant = time.monotonic() - left
    # Every replica's controller came back (its API reads capacity and use from its own watches):
    # a replica whose controller died would still answer admission and /readyz.
    views = [await pool_status(replace(rig.target, api_url=cluster.api_url(i)), "gpu") for i in range(cluster.replicas)]
    assert all(v["capacity"] == v["inUse"] == cluster.slices for v in views), views
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
    """4 holders leave at once and the leader is SIGKILLed as soon as its first grant shows, then
    4 more leave while nobody leads: whatever the dead leader granted stays granted once
    (admitted-at never rewritten), I1 holds at every watch event, the other replica takes over
    within a few lease durations and the 8 grants go exactly to the next 8 in order, and a user
    who cancelled before the crash gets the old place back from the new leader (I5)."""
    cluster, checker = rig.cluster, rig.checker
    holders = await rig.fill("lkh", 8)
    queued = await rig.enqueue("lkq", 12)
    # Indexed first (the unindexed cancel has its own test below).
    await checker.converged(rig.target, rig.i3_within)
    cancelled = queued[10]
    first_stamp = checker.track(cancelled)
    assert first_stamp is not None
    original = first_stamp.stamp
    await rig.logout([cancelled])  # its place is kept as a tombstone by the current leader
    rest = [n for n in queued if n != cancelled]
    await checker.wait(lambda v: v.queued == rest, 10, "the cancelled pod to leave the queue")
    await checker.converged(rig.target, rig.i3_within)
    leader = await current_leader(rig.kube)
    survivor = 1 - leader
    lease = cluster.service_config.controller.lease_duration_seconds

    storm = asyncio.create_task(rig.logout(holders[:4]))
    await checker.wait(lambda v: any(n in v.holding for n in rest[:4]), 10, "the storm's first grant")
    cluster.kill_service(leader)  # mid-storm: the first grant is out, the rest may be in flight
    killed, killed_wall = time.monotonic(), datetime.now(UTC)
    await storm
    await rig.logout(holders[4:])  # while nobody leads: only the new leader can grant these 4
    if cluster.state.webhook_replica == leader:
        await cluster.point_webhooks_at(survivor)  # what the Service does when an endpoint dies
    rig.use_replica(survivor)
    await checker.wait(
        lambda v: v.holding == sorted(rest[:8]) and v.queued == rest[8:],
        lease * 4,
        "the surviving replica to grant exactly the next 8 in order",
    )
    takeover = time.monotonic() - killed
    by_old = sum(1 for n in rest[:8] if (t := checker.track(n)) and t.admitted_at and t.admitted_at < killed_wall)
    assert await lease_holder(rig.kube) == survivor
    assert takeover < lease * 3, f"takeover took {takeover:.1f}s for a {lease}s lease"

    back, _ = await rig.spawn(cancelled.removeprefix("jupyter-"))
    await checker.wait(lambda v: v.queued == [*rest[8:10], back, *rest[10:]], 15, f"{back} back at its old place")
    returned = checker.track(back)
    assert returned is not None and returned.stamp == original, (returned, original)
    i3 = await checker.converged(rig.target, rig.i3_within)
    summary = checker.check()
    report(
        "leader killed in a grant storm",
        {
            "killed_replica": leader,
            "granted_by_killed_leader": by_old,
            "granted_by_new_leader": 8 - by_old,
            "takeover_seconds": round(takeover, 2),
            "lease_duration_seconds": lease,
            "kept_place_restored": True,
            "I3_converged_seconds": round(i3, 2),
            **summary,
        },
    )


async def _admissions(cluster: DevCluster, i: int) -> float:
    """How many AdmissionReviews replica ``i`` has answered."""
    text = await http_text(cluster.metrics_url(i) + "/metrics")
    return sum(v for _, v in samples(text, "gpu_queue_admission_requests_total"))


async def _webhooks_on(rig: Rig, i: int) -> None:
    """Point the webhooks at replica ``i`` and wait until the API server really calls it there
    (it reads webhook configurations through an informer): probe CPU spawns until ``i`` counts one."""
    await rig.cluster.point_webhooks_at(i)
    before = await _admissions(rig.cluster, i)
    probes: list[str] = []

    async def answered_by_i() -> bool:
        name, _ = await rig.spawn(f"probe{len(probes)}", "cpu-only")
        probes.append(name)
        return await _admissions(rig.cluster, i) > before

    await wait_until(answered_by_i, 15, f"the API server to call replica {i}'s webhook", interval=0.1)
    await rig.logout(probes)


async def test_place_kept_for_a_pod_cancelled_before_the_leader_indexed_it(rig: Rig) -> None:
    """The leader is frozen (SIGSTOP) while a user spawns and cancels, and another user spawns
    behind; after it thaws, the first user returns within keepPlaceSeconds and must get the old
    place back, ahead of the user who came later (I5: the place belongs to the request, whatever
    the index had seen of it)."""
    cluster, checker = rig.cluster, rig.checker
    await rig.fill("pkh", 8)
    queued = await rig.enqueue("pkq", 2)
    leader = await current_leader(rig.kube)
    if cluster.state.webhook_replica == leader:
        await _webhooks_on(rig, 1 - leader)  # admission must keep answering while the leader is frozen
    process = cluster.state.processes[f"service-{leader}"]
    os.kill(process.pid, signal.SIGSTOP)
    try:
        cancelled, _ = await rig.spawn("pkq02")
        original = await wait_until(lambda: _stamp_of(checker, cancelled), 5, f"{cancelled} seen")
        await rig.logout([cancelled])
        later, _ = await rig.spawn("pkq03")
        await checker.wait(lambda v: v.queued == [*queued, later], 5, f"{cancelled} gone, {later} queued")
    finally:
        os.kill(process.pid, signal.SIGCONT)
    await checker.converged(rig.target, rig.i3_within)
    back, _ = await rig.spawn("pkq02")
    try:
        await checker.wait(lambda v: v.queued == [*queued, back, later], 10, f"{back} back ahead of {later}")
    finally:
        returned = checker.track(back)
        stamp = returned.stamp if returned is not None else None
        queue = checker.view().queued
        report("place kept across an unindexed cancel", {"original": original, "returned_with": stamp, "queue": queue})
    checker.check()


async def _stamp_of(checker: InvariantChecker, name: str) -> datetime | None:
    track = checker.track(name)
    return track.stamp if track is not None else None


RBAC_API = "/apis/rbac.authorization.k8s.io/v1"


def _refusals(text: str) -> float:
    """Requests the API server's authorizer allowed nobody to make (RBAC "no opinion" = 403)."""
    return sum(
        v for labels, v in samples(text, "authorization_duration_seconds_count") if labels.get("result") == "no-opinion"
    )


async def test_new_leader_that_cannot_list_pods_retries_and_grants_once_allowed(rig: Rig) -> None:
    """The survivor of a leader crash cannot list pods at the moment it takes the lease: its
    cluster-wide read binding is missing for a few seconds, as right after an API server restart
    while the RBAC caches fill (seen here: 403s for about a second). A failed re-list on taking
    the lease must be retried, not end the controller (the replica would keep answering
    admission and /readyz while never granting again): once the binding is back, the next
    logout is followed by the next grant in order."""
    cluster, checker = rig.cluster, rig.checker
    holders = await rig.fill("rbh", 8)
    queued = await rig.enqueue("rbq", 2)
    leader = await current_leader(rig.kube)
    survivor = 1 - leader
    binding_path = f"{RBAC_API}/clusterrolebindings/gpu-queue-read"
    refused_before = _refusals(await apiserver_metrics(cluster))
    async with cluster.kube() as admin:
        binding = await admin.get(binding_path)
        binding["metadata"] = {k: v for k, v in binding["metadata"].items() if k in ("name", "labels")}
        await admin.delete(binding_path)
        forbidden = time.monotonic()
        try:
            cluster.kill_service(leader)
            if cluster.state.webhook_replica == leader:
                await cluster.point_webhooks_at(survivor)
            rig.use_replica(survivor)

            async def survivor_holds_lease() -> bool:
                return await lease_holder(rig.kube) == survivor

            await wait_until(survivor_holds_lease, 20, f"replica {survivor} to take the lease")
            # A bounded window in which the new leader's re-list meets the missing binding.
            window = time.monotonic() + 2.0
            while time.monotonic() < window:
                assert checker.max_in_use <= checker.capacity
                await asyncio.sleep(0.1)
        finally:
            await admin.create(f"{RBAC_API}/clusterrolebindings", binding)
    restored = time.monotonic()
    refused = _refusals(await apiserver_metrics(cluster)) - refused_before
    assert refused > 0, "the API server refused nothing while the binding was gone: the fault did not land"
    passed = False
    try:
        await rig.logout([holders[0]])
        await checker.wait(lambda v: queued[0] in v.holding, 20, f"{queued[0]} granted once the binding is back")
        granted = time.monotonic() - restored
        summary = checker.check()
        passed = True
    finally:
        if not passed:
            # A replica whose controller died keeps serving admission: restart it for the next tests.
            cluster.kill_service(survivor, signal.SIGTERM)
            await cluster.start_service(survivor)
    report(
        "new leader's re-list forbidden",
        {
            "forbidden_seconds": round(restored - forbidden, 2),
            "requests_refused_403": refused,
            "grant_seconds_after_restore": round(granted, 2),
            **summary,
        },
    )


# ------------------------------------------------------------------------------ certificates


def _tls_reloads(text: str, result: str = "ok") -> float:
    return sum(v for labels, v in samples(text, "gpu_queue_tls_reloads_total") if labels.get("result") == result)


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
            await rig.logout([pod_name(user)])  # a failed delete ends the worker: raised below

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
        texts = [await http_text(cluster.metrics_url(i) + "/metrics") for i in range(cluster.replicas)]
        half_swaps = sum(_tls_reloads(t, "failed") for t in texts)
    finally:
        stop.set()
        ended = await asyncio.gather(*workers, return_exceptions=True)
    assert not failures, f"{len(failures)} pod creations failed across the rotation: {failures[:5]}"
    assert not [e for e in ended if e is not None], f"a churn loop failed: {ended}"
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
            "tls_reloads_failed": half_swaps,
        },
    )


async def _at_least(items: list[float], count: int) -> bool:
    return len(items) >= count
