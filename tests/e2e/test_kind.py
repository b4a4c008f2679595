"""The seed scenarios on kind, with the container image and the Helm chart as users install them
(shared with the local-control-plane tier: ``tests/scenarios.py``), and what only a real cluster
shows: the leader's pod deleted, a ``helm upgrade`` to a new image, the Redis pod deleted, the
certificate hook re-run. Each test appends what it measured to the tier's report."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import ssl
import time
from typing import Any

import pytest
from cryptography import x509

from tests import scenarios
from tests.e2e.kind import RELEASE, RELEASE_NAMESPACE, PortForward, Release, SliceWatch, Spawner, report
from tests.helpers.waiting import wait_for
from tests.scenarios import Target, fill_pool, gated, holders_and_queue, requested_at, running
from webhook.kube import pod_path

pytestmark = pytest.mark.timeout(420)

CPU_REQUESTS = {"cpu": "10m", "memory": "32Mi"}  # tools/kind-e2e/values.yaml


@pytest.fixture
def kind_target(target: Target) -> Target:
    return dataclasses.replace(target, cpu_requests=CPU_REQUESTS)


def gpu_pods(pods: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: p for n, p in pods.items() if (p["metadata"].get("annotations") or {}).get("gpu-queue.io/pool")}


async def granted_events(target: Target, name: str) -> int:
    return sum(e.startswith("GPU slice granted after") for e in await target.events(name))


async def queue_of(target: Target, names: list[str]) -> bool:
    """All of ``names`` exist and wait, in that order, at the end of the queue."""
    _, waiting = await holders_and_queue(target)
    return waiting[-len(names) :] == names


# ------------------------------------------------------------------------------- the seed story


async def test_seed_story_on_kind_runs_eight_gpu_pods_on_the_gpu_node(kind_target: Target) -> None:
    target = kind_target
    figures = await scenarios.seed_story(target)
    pods = await target.pods()
    gpu = gpu_pods(pods)
    assert len(gpu) == target.slices, sorted(gpu)
    off_node = {n: p["spec"].get("nodeName") for n, p in gpu.items() if p["spec"].get("nodeName") != target.gpu_node}
    assert not off_node, f"GPU pods must run on the node that advertises nvidia.com/gpu: {off_node}"
    assert all(running(p) and not gated(p) for p in gpu.values())
    cpu = pods["jupyter-cpu-user"]
    assert running(cpu) and cpu["spec"]["nodeName"] != target.gpu_node, "the CPU-only profile keeps off GPU nodes"
    report("seed story", {"grant_latency_seconds": figures["grant_latency_seconds"]})


async def test_cpu_pods_are_never_gated_on_kind(kind_target: Target) -> None:
    await scenarios.cpu_never_gated(kind_target)


async def test_burst_is_granted_in_order_on_kind(kind_target: Target) -> None:
    started = time.monotonic()
    figures = await scenarios.burst_in_order(kind_target, 30)
    seconds = round(time.monotonic() - started, 1)
    report("burst of 30", {"seconds": seconds, "granted": len(figures["granted_in_order"])})


async def test_capacity_follows_the_node_on_kind(kind_target: Target) -> None:
    await scenarios.capacity_follows_the_node(kind_target)


async def test_cancelled_user_keeps_the_place_on_kind(kind_target: Target) -> None:
    await scenarios.cancel_keeps_place(kind_target)


async def test_only_the_service_account_removes_the_gate_on_kind(kind_target: Target) -> None:
    await scenarios.user_cannot_remove_the_gate(kind_target, kind_target.kube)


# ------------------------------------------------------------------- what only a real cluster shows


async def test_the_leader_pod_deleted_mid_queue_hands_over_in_order_and_grants_nothing_twice(
    kind_target: Target, release: Release
) -> None:
    target = kind_target
    watch = SliceWatch(target)
    await watch.start()
    try:
        holders = await fill_pool(target, target.slices)
        waiters = [(await target.spawn(f"waiter{i}"))["metadata"]["name"] for i in range(4)]
        await wait_for(lambda: queue_of(target, waiters), 20, "4 waiters queued in arrival order")
        old = await release.leader()
        assert old in await release.service_pods(), f"the Lease holder {old!r} is not a gpu-queue pod"

        deleted = time.monotonic()
        await target.kube.delete(pod_path(RELEASE_NAMESPACE, old))  # what `kubectl delete pod` does
        await target.logout(holders[0])
        await wait_for(lambda: _ungated(target, waiters[0]), 30, "the first waiter granted while the leader stops")

        async def new_leader() -> str | None:
            holder = await release.leader()
            return holder if holder and holder != old else None

        successor = await wait_for(new_leader, 90, "another replica to take the Lease")
        takeover = time.monotonic() - deleted
        await target.logout(holders[1])
        freed = time.monotonic()
        await wait_for(lambda: _ungated(target, waiters[1]), 15, "the second waiter granted by the new leader")
        grant_after_takeover = time.monotonic() - freed
        _, waiting = await holders_and_queue(target)
        assert waiting == waiters[2:], f"the rest must keep their order: {waiting}"
        for holder in holders[2:4]:
            await target.logout(holder)
        await wait_for(lambda: all_granted(target, waiters), 15, "the last two waiters granted")

        async def watched_all() -> bool:
            """The watch delivers a grant a moment after a GET shows it: wait for the last one
            before stopping it (CI: waiter3's grant was read, its watch event not yet seen)."""
            return set(waiters) <= set(watch.grants)

        await wait_for(watched_all, 10, "the watch to see every waiter's grant")
    finally:
        await watch.stop()
    assert watch.most <= target.slices, f"{watch.most} slices in use at once, capacity {target.slices}"
    granted_waiters = [n for n in watch.grants if n in waiters]
    assert granted_waiters == waiters, f"grants out of arrival order: {granted_waiters}"

    async def each_told() -> dict[str, int] | None:
        """Events are posted after the grant, off its path: wait until each waiter has one."""
        counts = {n: await granted_events(target, n) for n in waiters}
        return counts if all(counts.values()) else None

    counts = await wait_for(each_told, 10, "a 'GPU slice granted' Event on every waiter", interval=0.25)
    twice = {n: c for n, c in counts.items() if c != 1}
    assert not twice, f"'GPU slice granted' Events per waiter (want 1 each): {twice}"
    report(
        "leader pod deleted",
        {"old": old, "new": successor, "takeover_seconds": round(takeover, 2),
         "grant_after_takeover_seconds": round(grant_after_takeover, 3), "most_in_use": watch.most},
    )  # fmt: skip


async def test_helm_upgrade_to_a_new_image_tag_fails_no_pod_creation_and_keeps_the_order(
    kind_target: Target, release: Release
) -> None:
    target = kind_target
    deploy = await target.kube.request("GET", f"/apis/apps/v1/namespaces/{RELEASE_NAMESPACE}/deployments/{RELEASE}")
    image = deploy["spec"]["template"]["spec"]["containers"][0]["image"]
    new_tag = "e2e-next" if not image.endswith(":e2e-next") else "dev"  # run.sh loads both tags
    old_pods = set(await release.service_pods())
    holders = await fill_pool(target, target.slices)
    watch = SliceWatch(target)
    await watch.start()
    spawner = Spawner(target, "rollout", every=0.4)
    spawner.start()
    upgrade = asyncio.create_task(release.helm_upgrade(f"image.tag={new_tag}"))
    freed = 0
    try:
        while not upgrade.done() and freed < len(holders):
            await asyncio.wait({upgrade}, timeout=3)  # free a slice every 3 s while the rollout runs
            await target.logout(holders[freed])
            freed += 1
        seconds = await upgrade
    finally:
        await spawner.stop()
        await watch.stop()
    failed = spawner.failures
    assert failed == [], f"{len(failed)} pod creations failed during the upgrade: {failed[:5]}"

    async def old_ones_gone() -> dict[str, dict[str, Any]] | None:
        # helm --wait returns once the new replicas are Ready; an old one may still be in its
        # preStop sleep, serving, until it stops.
        pods = await release.service_pods()
        return pods if not old_pods & set(pods) else None

    now_pods = await wait_for(old_ones_gone, 90, "the rollout to replace both replicas (old pods gone)")
    images = {p["spec"]["containers"][0]["image"] for p in now_pods.values()}
    assert images == {f"{image.rsplit(':', 1)[0]}:{new_tag}"}, images
    gpu_spawned = [n for n, profile in spawner.created if profile == "gpu-enabled"]
    expected = min(freed, len(gpu_spawned))

    async def settled() -> list[str] | None:
        pods = await target.pods()
        mine = [pods[n] for n in gpu_spawned if n in pods]
        held = [p["metadata"]["name"] for p in mine if not gated(p)]
        return held if len(held) == expected else None

    held = await wait_for(settled, 30, f"{expected} of the upgrade's GPU spawns to hold the freed slices")
    pods = await target.pods()
    order = sorted(gpu_spawned, key=lambda n: (requested_at(pods[n]), n))
    assert sorted(held) == sorted(order[:expected]), f"grants during the upgrade out of order: {held}"
    assert watch.most <= target.slices, f"{watch.most} slices in use at once"
    report(
        "helm upgrade to a new image tag",
        {"tag": new_tag, "helm_seconds": round(seconds, 1), "creations": len(spawner.created),
         "failed_creations": len(spawner.failures), "freed_during_rollout": freed, "most_in_use": watch.most},
    )  # fmt: skip


async def test_the_redis_pod_deleted_keeps_the_queue_and_the_kept_places_on_its_volume(
    kind_target: Target, release: Release
) -> None:
    target = kind_target
    claim = await target.kube.request(
        "GET", f"/api/v1/namespaces/{RELEASE_NAMESPACE}/persistentvolumeclaims/data-{RELEASE}-redis-0"
    )
    assert claim["status"]["phase"] == "Bound", "the built-in Redis keeps its data on a bound PVC"
    holders = await fill_pool(target, target.slices)
    waiters = [(await target.spawn(f"waiter{i}"))["metadata"]["name"] for i in range(5)]
    await wait_for(lambda: positions(target, waiters), 20, "the API to answer positions 1..5")
    # waiter2 cancels: its kept place lives only in Redis, so it survives only on the volume.
    await target.logout(waiters[2])
    await wait_for(lambda: positions(target, waiters[:2] + waiters[3:]), 20, "the others at 1..4")
    redis_path = pod_path(RELEASE_NAMESPACE, f"{RELEASE}-redis-0")
    before = await target.kube.request("GET", redis_path)
    deleted = time.monotonic()
    await target.kube.delete(redis_path)

    async def redis_back() -> bool:
        pod = await target.kube.get_if_present(redis_path)
        if pod is None or pod["metadata"]["uid"] == before["metadata"]["uid"]:
            return False
        return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])

    await wait_for(redis_back, 120, "the Redis StatefulSet's new pod to be Ready")
    back = time.monotonic() - deleted
    fresh = dataclasses.replace(target, api_url=await release.api_url())
    await wait_for(lambda: positions(fresh, waiters[:2] + waiters[3:], source="store"), 60, "1..4 from Redis again")
    in_order = time.monotonic() - deleted
    await target.spawn("waiter2")  # back within keepPlaceSeconds: the place kept before the restart
    await wait_for(lambda: positions(fresh, waiters, source="store"), 20, "waiter2 back at position 3")

    async def told_place_kept() -> bool:  # the leader posts the Event after it answers positions
        return any("your place in the GPU queue was kept" in e for e in await target.events(waiters[2]))

    await wait_for(told_place_kept, 15, "the 'your place ... was kept' Event for waiter2")
    await target.logout(holders[0])
    await wait_for(lambda: _ungated(target, waiters[0]), 15, "the first waiter granted after Redis came back")
    await wait_for(lambda: positions(fresh, waiters[1:], source="store"), 15, "the rest at 1..4")
    report("redis pod deleted", {"redis_ready_seconds": round(back, 1), "queue_in_order_seconds": round(in_order, 1)})


async def test_the_certificate_hook_rerun_renews_with_no_failed_creation(kind_target: Target, release: Release) -> None:
    target = kind_target
    secret = f"{RELEASE}-tls"
    old_cert = x509.load_pem_x509_certificate((await release.secret(secret, "tls.crt")).encode())
    spawner = Spawner(target, "renewal", every=0.5)
    spawner.start()
    try:
        # renewBeforeDays above the lifetime: the pre-upgrade hook renews now (then back to 30).
        seconds = await release.helm_upgrade("certs.selfManaged.renewBeforeDays=400")
        new_cert = x509.load_pem_x509_certificate((await release.secret(secret, "tls.crt")).encode())
        assert new_cert.serial_number != old_cert.serial_number, "the hook did not renew the certificate"
        renewed = time.monotonic()
        pods = list(await release.service_pods())

        async def all_serve_it() -> bool:
            served = await asyncio.gather(*(served_serial(release, p) for p in pods))
            return all(s == new_cert.serial_number for s in served)

        await wait_for(all_serve_it, 180, "both replicas to serve the renewed certificate (hot reload)")
        reloaded = time.monotonic() - renewed
        for i in range(4):  # a few creations after the swap, each through the webhooks
            await target.spawn(f"after-renewal{i}", "cpu-only")
    finally:
        await spawner.stop()
    assert spawner.failures == [], f"pod creations failed during the renewal: {spawner.failures[:5]}"
    ca = (await release.secret(secret, "ca.crt")).encode()
    for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        config = await target.kube.request("GET", f"/apis/admissionregistration.k8s.io/v1/{kind}/{RELEASE}")
        bundles = {base64.b64decode(w["clientConfig"]["caBundle"]) for w in config["webhooks"]}
        assert bundles == {ca}, f"{kind}: the caBundle is not the Secret's CA"
    new_cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    await release.helm_upgrade("certs.selfManaged.renewBeforeDays=30")
    report(
        "certificate hook re-run",
        {"helm_seconds": round(seconds, 1), "hot_reload_seconds": round(reloaded, 1),
         "creations": len(spawner.created), "failed_creations": len(spawner.failures)},
    )  # fmt: skip


# ------------------------------------------------------------------------------------- helpers


async def _ungated(target: Target, name: str) -> dict[str, Any] | None:
    pod = await target.pod(name)
    return pod if pod is not None and not gated(pod) else None


async def all_granted(target: Target, names: list[str]) -> bool:
    pods = await target.pods()
    return all(n in pods and not gated(pods[n]) for n in names)


async def positions(target: Target, names: list[str], source: str | None = None) -> bool:
    answers = await asyncio.gather(*(target.position(n) for n in names))
    if source and any(a.get("source", "store") != source for a in answers):
        return False
    return [a.get("position") for a in answers] == list(range(1, len(names) + 1))


async def served_serial(release: Release, pod: str) -> int:
    """The serial number of the certificate one replica serves (through its own port-forward)."""
    forward = PortForward(release.kubeconfig, f"pod/{pod}", 8443)
    try:
        url = forward.url()
        port = int(url.rsplit(":", 1)[1])
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # only reading which certificate is served
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        forward.close()
