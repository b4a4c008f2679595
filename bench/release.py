"""Grant latency on the local control plane: how fast the head of the queue gets a freed slice.

Brings up a dev cluster (real kube-apiserver, scheduler, kwok GPU node, Redis, gpu-queue), fills
the 8 slices, queues 200 more GPU pods, then runs 50 cycles of "a holder's pod is deleted -> the
head's gate is removed", timing each from the delete call to the gate's removal as seen through the
API server. Prints one JSON object (latency p50/p99/max, the controller's memory).

    python bench/release.py [--cycles 50] [--queued 200]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_queue_dev.cluster import DevCluster, missing_cluster_tools
from gpu_queue_dev.spawnerpods import pod_manifest
from webhook.kube import Kube, KubeError, load_client, pod_path

GATE = "gpu-queue.io/slice"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def gated(pod: dict[str, Any]) -> bool:
    return any(g.get("name") == GATE for g in (pod.get("spec") or {}).get("schedulingGates") or [])


async def create(kube: Kube, template: dict[str, Any], namespace: str, i: int) -> str:
    pod = copy.deepcopy(template)
    name = f"jupyter-bench{i:04d}"
    pod["metadata"]["name"] = name
    pod["metadata"]["annotations"]["hub.jupyter.org/username"] = f"bench{i:04d}"
    pod["metadata"]["labels"]["hub.jupyter.org/username"] = f"bench{i:04d}"
    await kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=pod)
    return name


async def wait(check: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.002)
    raise SystemExit(f"timed out waiting for {what}")


async def run(cycles: int, queued: int) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="gpu-queue-bench-"))
    cluster = DevCluster(state, replicas=1, slices=8, progress=lambda line: print(f"[dev] {line}", file=sys.stderr))
    await cluster.start()
    kube = Kube(await load_client(cluster.kubeconfig))
    ns = cluster.hub_namespace
    try:
        template = await pod_manifest("bench", "gpu-enabled", namespace=ns)
        names = [await create(kube, template, ns, i) for i in range(8 + queued)]

        async def settled() -> list[dict[str, Any]] | None:
            listing = await kube.request("GET", f"/api/v1/namespaces/{ns}/pods")
            items = listing.get("items") or []
            holding = [p for p in items if not gated(p)]
            return items if len(items) == len(names) and len(holding) == 8 else None

        items = await wait(settled, 120, "8 holders and the queue")
        order = sorted(
            (p for p in items if gated(p)),
            key=lambda p: (p["metadata"]["annotations"]["gpu-queue.io/requested-at"], p["metadata"]["name"]),
        )
        queue = [p["metadata"]["name"] for p in order]
        holders = [p["metadata"]["name"] for p in items if not gated(p)]
        proc = cluster.state.processes.get("service-0")
        pid = proc.pid if proc else 0
        rss_before = rss_mib(pid) if pid else float("nan")
        latencies: list[float] = []
        for cycle in range(cycles):
            victim, head = holders.pop(0), queue.pop(0)
            started = time.perf_counter()
            await kube.delete(pod_path(ns, victim), grace_seconds=0)

            async def granted(name: str = head) -> bool:
                try:
                    return not gated(await kube.request("GET", pod_path(ns, name)))
                except KubeError:
                    return False

            await wait(granted, 10, f"cycle {cycle}: {head} to be granted")
            latencies.append(time.perf_counter() - started)
            holders.append(head)
        latencies.sort()
        return {
            "benchmark": "release_to_grant",
            "cycles": cycles,
            "queued_at_start": queued,
            "grant_latency_ms": {
                "p50": round(statistics.median(latencies) * 1000, 1),
                "p99": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 1),
                "max": round(latencies[-1] * 1000, 1),
                "mean": round(statistics.fmean(latencies) * 1000, 1),
            },
            "controller_rss_mib": {
                "before_cycles": round(rss_before, 1),
                "after_cycles": round(rss_mib(pid), 1) if pid else None,
            },
            "goal": {"p99_ms_below": 500, "met": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] < 0.5},
        }
    finally:
        await kube.aclose()
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--queued", type=int, default=200)
    args = parser.parse_args()
    missing = missing_cluster_tools()
    if missing:
        print(f"missing {', '.join(missing)}: build them with tools/build.sh", file=sys.stderr)
        return 2
    if args.queued < args.cycles:
        print("--queued must be at least --cycles (every cycle grants one queued pod)", file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(run(args.cycles, args.queued))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
