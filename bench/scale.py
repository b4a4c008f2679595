"""Scale figures: controller memory and reconcile time by cluster size, position lookups by queue
length. Prints one JSON object.

    python bench/scale.py [--sizes 500,1000,5000] [--queues 1000,10000,100000] [--samples 1000]

It drives the real code, against a ``redis-server`` it starts on a free 127.0.0.1 port:

- ``controller``: per cluster size (pods of every kind, 20% of them queued GPU pods: 1,000 at
  5,000 pods), the pod list is serialized in 500-pod pages as the API server sends it, then
  decoded, fed to ``QueueController._pods_synced`` (``pod_view`` on every pod), planned
  (``plans()``: ``grants.plan`` per pool) and written to Redis (``_rebuild``: one
  ``RedisQueueStore.rebuild`` script per pool); then one whole leader pass (``sync_once``: index
  every queued pod, position Events queued, rebuild). Memory is measured with tracemalloc in a
  separate pass (it slows everything down): what the cache keeps, and the peak while a list is
  decoded and indexed. RSS is the process's, for scale only (the allocator keeps freed memory).
- ``positions``: per queue length, ``GET /api/v1/queue/{namespace}/{pod}`` on the real API app
  (auth, Redis lookups, ETA) over 127.0.0.1, and the store's own ``position`` call; p50/p99.
  (``bench/queue.py`` has the per-operation store latencies; ``bench/admission.py`` has admission
  throughput and latency.)
- ``growth``: each cost at the largest size over the smallest, beside the size ratio, and what
  that says (flat, sub-linear, linear, super-linear).
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's directory is sys.path[0] and would shadow the stdlib ``queue``.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
_ROOT = os.path.dirname(_HERE)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, cast  # noqa: E402
from unittest import mock  # noqa: E402

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from gpu_queue_dev.spawnerpods import pod_manifest  # noqa: E402
from tests.helpers.redis_server import RedisServer, find_redis_server, free_port  # noqa: E402
from webhook.admission import mutate, parse_review  # noqa: E402
from webhook.api import create_api_app  # noqa: E402
from webhook.config import Config, load_config  # noqa: E402
from webhook.controller import QueueController  # noqa: E402
from webhook.election import LeaderElector  # noqa: E402
from webhook.grants import PoolPlan  # noqa: E402
from webhook.kube import Kube  # noqa: E402
from webhook.models import QueueEntry  # noqa: E402
from webhook.pods import format_time  # noqa: E402
from webhook.redis_store import RedisQueueStore  # noqa: E402

NOW = datetime.now(UTC)
NS = "jhub"
TOKEN = "scale-bench-token"
PAGE = 500  # the controller's list page size


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


# -------------------------------------------------------------------------------- the cluster


class Cluster:
    """Pod JSON of every kind a hub cluster holds, made from real KubeSpawner manifests."""

    def __init__(self, config: Config, gpu: dict[str, Any], cpu: dict[str, Any]) -> None:
        self.config = config
        self.gpu = gpu
        self.cpu = cpu
        self.rng = random.Random(7)  # reproducible sizes

    def _meta(self, pod: dict[str, Any], name: str, namespace: str, created: datetime) -> dict[str, Any]:
        """What the API server adds to every stored pod (uid, versions, managedFields)."""
        meta = pod["metadata"]
        meta.update(
            name=name,
            namespace=namespace,
            uid=str(uuid.UUID(int=self.rng.getrandbits(128))),
            resourceVersion=str(self.rng.randrange(10**6, 10**8)),
            creationTimestamp=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            managedFields=[
                {
                    "manager": "kubespawner",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {f"f:{k}": {} for k in list(pod.get("spec", {}))[:20]},
                }
            ],
        )
        return pod

    def _user(self, template: dict[str, Any], user: str, created: datetime) -> dict[str, Any]:
        pod = copy.deepcopy(template)
        pod = self._meta(pod, f"jupyter-{user}", NS, created)
        pod["metadata"]["labels"]["hub.jupyter.org/username"] = user
        pod["metadata"]["annotations"]["hub.jupyter.org/username"] = user
        for env in pod["spec"]["containers"][0].get("env", []):
            if env["name"] == "JUPYTERHUB_USER":
                env["value"] = user
        return pod

    def _admitted(self, pod: dict[str, Any], now: datetime) -> dict[str, Any]:
        """The pod after the API server ran our mutation on it (patch applied)."""
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE",
                "namespace": NS,
                "object": pod,
            },
        }
        answer = mutate(parse_review(json.dumps(review).encode()), self.config, now)
        assert answer.response is not None
        import jsonpatch

        patched: dict[str, Any] = jsonpatch.apply_patch(pod, answer.response.patch_ops())
        return patched

    @staticmethod
    def _running(pod: dict[str, Any], node: str, since: datetime) -> dict[str, Any]:
        stamp = since.strftime("%Y-%m-%dT%H:%M:%SZ")
        pod["spec"]["nodeName"] = node
        pod["status"] = {
            "phase": "Running",
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": stamp} for t in ("Ready", "Scheduled")],
            "podIP": "10.0.0.1",
            "startTime": stamp,
        }
        return pod

    def build(self, size: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(pods, nodes) for ``size`` pods: 20% queued, a full pool of holders, finished GPU pods,
        CPU notebooks, and other workloads (2% of them GPU jobs on the pool's nodes)."""
        gpu_nodes = max(1, size // 100)
        nodes = [
            {
                "metadata": {"name": f"gpu-node-{i}", "labels": {"nvidia.com/gpu.present": "true"}},
                "status": {"allocatable": {"nvidia.com/gpu": "8", "cpu": "32", "memory": "256Gi"}},
            }
            for i in range(gpu_nodes)
        ] + [
            {"metadata": {"name": f"cpu-node-{i}", "labels": {}}, "status": {"allocatable": {"cpu": "32"}}}
            for i in range(max(1, size // 50))
        ]
        queued, holders, gpu_jobs = size // 5, gpu_nodes * 8 - size // 50, size // 50
        finished = size // 50
        pods: list[dict[str, Any]] = []
        for i in range(queued):
            created = NOW - timedelta(seconds=3600 - i * 3600 / queued)
            pods.append(self._admitted(self._user(self.gpu, f"q{i:06d}", created), created))
        for i in range(holders):
            created = NOW - timedelta(hours=2, seconds=i)
            pod = self._admitted(self._user(self.gpu, f"h{i:06d}", created), created)
            pod["spec"].pop("schedulingGates")
            pod["metadata"]["annotations"][self.config.admitted_at_annotation] = format_time(NOW)
            pods.append(self._running(pod, f"gpu-node-{i // 8}", created))
        for i in range(finished):
            created = NOW - timedelta(hours=3, seconds=i)
            pod = self._admitted(self._user(self.gpu, f"f{i:06d}", created), created)
            pod["spec"].pop("schedulingGates")
            pod["status"] = {"phase": "Succeeded"}
            pods.append(pod)
        for i in range(gpu_jobs):
            job = copy.deepcopy(self.gpu)
            job["metadata"]["labels"] = {"job-name": f"train-{i}"}
            job["metadata"]["annotations"] = {}
            job = self._meta(job, f"train-{i}-abcde", "ml-jobs", NOW - timedelta(hours=1))
            pods.append(self._running(job, f"gpu-node-{i % gpu_nodes}", NOW - timedelta(hours=1)))
        cpu_users = (size - len(pods)) * 3 // 5
        for i in range(cpu_users):
            created = NOW - timedelta(minutes=30, seconds=i)
            pods.append(
                self._running(
                    self._admitted(self._user(self.cpu, f"c{i:06d}", created), created), "cpu-node-0", created
                )
            )
        other = 0
        while len(pods) < size:
            system = copy.deepcopy(self.cpu)
            system["metadata"]["labels"] = {"app": "system-daemon", "pod-template-hash": "5d8f7c9b6"}
            system["metadata"]["annotations"] = {}
            system = self._meta(system, f"daemon-{other}", "kube-system", NOW - timedelta(days=3))
            pods.append(self._running(system, f"cpu-node-{other % 4}", NOW - timedelta(days=3)))
            other += 1
        self.rng.shuffle(pods)
        return pods, nodes


def _pages(pods: list[dict[str, Any]]) -> list[bytes]:
    """The list responses as the API server sends them (PAGE pods each)."""
    return [
        json.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods[i : i + PAGE]}).encode()
        for i in range(0, len(pods), PAGE)
    ]


def _decode(pages: list[bytes]) -> dict[str, dict[str, Any]]:
    """What ``Informer.list`` does with the pages: decode, index by namespace/name."""
    items: dict[str, dict[str, Any]] = {}
    for page in pages:
        for item in json.loads(page)["items"]:
            meta = item["metadata"]
            items[f"{meta['namespace']}/{meta['name']}"] = item
    return items


def _controller(config: Config, store: RedisQueueStore | None) -> QueueController:
    """A controller that leads (its store writes go through) with no API server behind it: the
    leader pass below grants nothing (the pool is full) and queues its Events for writers that are
    not running. The fence and the store breaker bind ``is_leader`` when they are made."""
    with mock.patch.object(LeaderElector, "is_leader", lambda self: True):
        controller = QueueController(config, Kube(cast(Any, None)), store, identity="bench")
    controller.elector.is_leader = lambda: True  # type: ignore[method-assign]
    return controller


async def _timed(call: Callable[[], Awaitable[Any]] | Callable[[], Any], repeat: int = 1) -> float:
    """The median wall time of ``repeat`` calls (awaited when they return an awaitable)."""
    times: list[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        if asyncio.iscoroutine(result):
            await result
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def controller_figures(config: Config, cluster: Cluster, size: int, redis_url: str) -> dict[str, Any]:
    pods, nodes = cluster.build(size)
    pages = _pages(pods)
    kinds = {
        "queued": sum(1 for p in pods if "schedulingGates" in p["spec"]),
        "gpu_jobs_other_namespaces": sum(1 for p in pods if p["metadata"]["namespace"] == "ml-jobs"),
    }
    del pods
    store = RedisQueueStore(redis_url, prefix=f"scale{size}", pools=config.pools, bulk_timeout_seconds=120)
    try:
        # Memory, with tracemalloc (a pass of its own).
        gc.collect()
        rss_before = _rss_mib()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        items = _decode(pages)
        decoded = tracemalloc.get_traced_memory()[0] - base
        memory_controller = _controller(config, store)
        memory_controller._nodes_synced({n["metadata"]["name"]: n for n in nodes})
        memory_controller._pods_synced(items)
        del items
        gc.collect()
        kept, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_after = _rss_mib()

        # Time, without tracemalloc: a fresh controller through the same steps.
        controller = _controller(config, store)
        decode_s = await _timed(lambda: _decode(pages), 3)
        items = _decode(pages)
        controller._nodes_synced({n["metadata"]["name"]: n for n in nodes})
        sync_s = await _timed(lambda: controller._pods_synced(items), 3)
        plans_s = await _timed(controller.plans, 5)
        plans = controller.plans()
        rebuild_s = await _timed(lambda: controller._rebuild(plans), 3)
        await store._redis.flushdb()
        controller.indexed.clear()
        controller.store_dirty = True
        leader_pass_s = await _timed(controller.sync_once)
        gpu = plans["gpu"]
        assert len(gpu.queue) == kinds["queued"] and not gpu.grants, "the bench wants a full pool and its queue"
        assert await store.length("gpu") == len(gpu.queue), "sync_once indexed every queued pod"
        return {
            "pods": size,
            "queued": len(gpu.queue),
            "holders": len(gpu.holders),
            "capacity": gpu.capacity,
            "in_use": gpu.in_use,
            "cached_views": len(controller.pods),
            **kinds,
            "list_bytes": sum(len(p) for p in pages),
            "memory": {
                "cache_kept_mib": round((kept - base) / 2**20, 2),
                "cache_kept_bytes_per_pod": round((kept - base) / size),
                "decoded_list_mib": round(decoded / 2**20, 2),
                "peak_during_sync_mib": round((peak - base) / 2**20, 2),
                "rss_before_mib": rss_before,
                "rss_after_mib": rss_after,
            },
            "time_ms": {
                "decode_list": _ms(decode_s),
                "pods_synced": _ms(sync_s),
                "plans": _ms(plans_s),
                "rebuild": _ms(rebuild_s),
                "plans_plus_rebuild": _ms(plans_s + rebuild_s),
                "first_leader_pass": _ms(leader_pass_s),
            },
            "events_queued_by_the_pass": controller.events.qsize(),
        }
    finally:
        await store.aclose()


# ------------------------------------------------------------------------------- positions


class _Full:
    """A ``ClusterView``: a full pool of 8 (what the controller would say), no writes."""

    def pool_usage(self, pool: str) -> tuple[int, int]:
        return (8, 8)

    def pod_exists(self, namespace: str, name: str) -> bool | None:
        return True

    def slices_through(self, pool: str, key: str) -> int | None:
        return None  # one slice each: the position

    def readers_plan(self, pool: str) -> PoolPlan | None:
        return None  # the bench measures the store's answers

    async def delete_pod(self, namespace: str, name: str) -> bool:
        raise RuntimeError("read-only bench")

    async def set_requested_at(self, namespace: str, name: str, when: datetime) -> None:
        raise RuntimeError("read-only bench")


async def position_figures(config: Config, length: int, redis_url: str, samples: int) -> dict[str, Any]:
    store = RedisQueueStore(redis_url, prefix=f"pos{length}", pools=config.pools, bulk_timeout_seconds=120)
    entries = [
        QueueEntry(
            namespace=NS,
            name=f"jupyter-u{i:07d}",
            user=f"u{i:07d}",
            requested_at=NOW - timedelta(seconds=length - i),
        )
        for i in range(length)
    ]
    fill = time.perf_counter()
    await store.rebuild("gpu", entries, [])
    fill_s = time.perf_counter() - fill
    api = create_api_app(config, store, _Full())
    root = web.Application()
    root.add_subapp("/api/v1", api)
    runner = web.AppRunner(root, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    rng = random.Random(length)
    api_times: list[float] = []
    store_times: list[float] = []
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            for n in range(samples + 50):
                index = rng.randrange(length)
                start = time.perf_counter()
                async with session.get(f"http://127.0.0.1:{port}/api/v1/queue/{NS}/jupyter-u{index:07d}") as r:
                    answer = await r.json()
                elapsed = time.perf_counter() - start
                assert r.status == 200 and answer["position"] == index + 1, answer
                start = time.perf_counter()
                found = await store.position("gpu", f"{NS}/jupyter-u{index:07d}")
                store_elapsed = time.perf_counter() - start
                assert found == (index + 1, length)
                if n >= 50:  # the first ones warm connections and caches
                    api_times.append(elapsed)
                    store_times.append(store_elapsed)
    finally:
        await runner.cleanup()
        await store._redis.delete(*[k for k in await store._redis.keys(f"{{pos{length}:*")])
        await store.aclose()
    return {
        "queued": length,
        "fill_by_rebuild_ms": _ms(fill_s),
        "api_get_position": {"p50_ms": _ms(_pct(api_times, 0.5)), "p99_ms": _ms(_pct(api_times, 0.99))},
        "store_position": {"p50_ms": _ms(_pct(store_times, 0.5)), "p99_ms": _ms(_pct(store_times, 0.99))},
        "samples": len(api_times),
    }


# ---------------------------------------------------------------------------------- growth


def _verdict(cost_ratio: float, size_ratio: float) -> str:
    exponent = math.log(cost_ratio) / math.log(size_ratio) if cost_ratio > 0 else 0.0
    if exponent < 0.15:
        return "flat"
    if exponent < 0.8:
        return "sub-linear"
    if exponent < 1.2:
        return "linear"
    return "super-linear"


def _growth(
    results: list[dict[str, Any]], key: str, values: dict[str, Callable[[dict[str, Any]], float]]
) -> dict[str, Any]:
    first, last = results[0], results[-1]
    size_ratio = last[key] / first[key]
    out: dict[str, Any] = {"from": first[key], "to": last[key], "size_ratio": round(size_ratio, 2)}
    for name, get in values.items():
        a, b = get(first), get(last)
        ratio = b / a if a else float("inf")
        out[name] = {"ratio": round(ratio, 2), "growth": _verdict(ratio, size_ratio)}
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    config = load_config(None, env={"GPU_QUEUE_API__READTOKENS": TOKEN})
    if find_redis_server() is None:
        raise SystemExit("redis-server not found on PATH")
    gpu = await pod_manifest("template", "gpu-enabled")
    cpu = await pod_manifest("template", "cpu-only")
    cluster = Cluster(config, gpu, cpu)
    results: dict[str, Any] = {"bench": "scale", "cpus": os.cpu_count(), "loadavg_before": list(os.getloadavg())}
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            sizes = [int(s) for s in args.sizes.split(",")]
            results["controller"] = [await controller_figures(config, cluster, n, redis.url) for n in sizes]
            lengths = [int(s) for s in args.queues.split(",")]
            results["positions"] = [await position_figures(config, n, redis.url, args.samples) for n in lengths]
        finally:
            redis.stop()
    controller, positions = results["controller"], results["positions"]
    results["growth"] = {
        "controller_by_pods": _growth(
            controller,
            "pods",
            {
                "cache_kept_bytes": lambda r: r["memory"]["cache_kept_mib"],
                "peak_during_sync": lambda r: r["memory"]["peak_during_sync_mib"],
                "decode_list": lambda r: r["time_ms"]["decode_list"],
                "pods_synced": lambda r: r["time_ms"]["pods_synced"],
                "plans": lambda r: r["time_ms"]["plans"],
                "rebuild": lambda r: r["time_ms"]["rebuild"],
                "first_leader_pass": lambda r: r["time_ms"]["first_leader_pass"],
            },
        ),
        "positions_by_queue_length": _growth(
            positions,
            "queued",
            {
                "api_p50": lambda r: r["api_get_position"]["p50_ms"],
                "api_p99": lambda r: r["api_get_position"]["p99_ms"],
                "store_p50": lambda r: r["store_position"]["p50_ms"],
                "store_p99": lambda r: r["store_position"]["p99_ms"],
            },
        ),
    }
    results["loadavg_after"] = list(os.getloadavg())
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", default="500,1000,5000", help="cluster sizes in pods (20%% of them queued)")
    parser.add_argument("--queues", default="1000,10000,100000", help="queue lengths for position lookups")
    parser.add_argument("--samples", type=int, default=1000, help="position lookups per queue length")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
