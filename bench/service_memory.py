"""The service's own memory with many pods in the cluster: the real process on the local control
plane, not a model of it. Prints one JSON object.

    python bench/service_memory.py [--pods 5000] [--queued 1000]

A dev cluster (one replica, 8 slices) gets ``--queued`` GPU pods from KubeSpawner's manifest in
the hub namespace (8 granted, the rest queued) and the other pods as plain pods on the CPU node of
another namespace (running, as kwok plays them; the service watches every pod of the cluster and
keeps only the ones that matter to a pool). Measured from ``/proc``: RSS and its high-water mark
(VmHWM) with no pods, after the pods were created while it ran, and after a restart that lists
them all at once (the informer's 500-pod pages): the peak a replica reaches when it starts or
takes over in a full cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp

# Run as a script, this file's directory is sys.path[0]: bench/queue.py would shadow the stdlib.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_queue_dev.cluster import DevCluster, missing_cluster_tools  # noqa: E402
from gpu_queue_dev.spawnerpods import pod_manifest  # noqa: E402
from webhook.kube import Kube, load_client  # noqa: E402

OTHER_NAMESPACE = "batch"
CONCURRENCY = 16


def memory_mib(status_text: str) -> dict[str, float]:
    """VmRSS and VmHWM of a ``/proc/PID/status`` text, in MiB."""
    out: dict[str, float] = {}
    for line in status_text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss_mib" if key == "VmRSS" else "peak_mib"] = round(int(rest.split()[0]) / 1024, 1)
    return out


def pending_gauge(metrics_text: str, pool: str = "gpu") -> float | None:
    prefix = f'gpu_queue_pending_workloads{{pool="{pool}"}} '
    for line in metrics_text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


def plain_pod(i: int, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"job-{i:05d}", "labels": {"app": "batch"}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}],
        },
    }


def say(line: str) -> None:
    print(f"[service-memory {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


async def in_parallel(calls: Iterable[Callable[[], Awaitable[Any]]], what: str) -> None:
    """Run the calls CONCURRENCY at a time, with a progress line every 1,000."""
    queue = list(calls)
    done = 0
    lock = asyncio.Lock()

    async def worker() -> None:
        nonlocal done
        while queue:
            await queue.pop()()
            async with lock:
                done += 1
                if done % 1000 == 0:
                    say(f"{what}: {done}")

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def wait(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


async def run(pods: int, queued: int) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="gpu-queue-memory-"))
    cluster = DevCluster(state, replicas=1, slices=8, progress=lambda line: say(f"dev: {line}"))
    await cluster.start()
    kube = Kube(await load_client(cluster.kubeconfig))
    ns = cluster.hub_namespace

    def service() -> dict[str, float]:
        proc = cluster.state.processes["service-0"]
        return memory_mib(Path(f"/proc/{proc.pid}/status").read_text())

    async def queue_seen(length: int) -> bool:
        try:
            async with aiohttp.ClientSession() as s, s.get(cluster.metrics_url(0) + "/metrics") as r:
                return pending_gauge(await r.text()) == length
        except aiohttp.ClientError:
            return False

    try:
        result: dict[str, Any] = {"benchmark": "service_memory", "pods": pods, "queued_gpu_pods": queued}
        result["no_pods"] = service()
        await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": OTHER_NAMESPACE}})
        template = await pod_manifest("bench", "gpu-enabled", namespace=ns)
        started = time.monotonic()

        def gpu(i: int) -> Callable[[], Awaitable[Any]]:
            body = json.loads(json.dumps(template))
            body["metadata"]["name"] = f"jupyter-m{i:05d}"
            body["metadata"]["labels"]["hub.jupyter.org/username"] = f"m{i:05d}"
            body["metadata"]["annotations"]["hub.jupyter.org/username"] = f"m{i:05d}"
            return lambda: kube.request("POST", f"/api/v1/namespaces/{ns}/pods", body=body)

        def plain(i: int) -> Callable[[], Awaitable[Any]]:
            body = plain_pod(i, cluster.cpu_node)
            return lambda: kube.request("POST", f"/api/v1/namespaces/{OTHER_NAMESPACE}/pods", body=body)

        await in_parallel([gpu(i) for i in range(queued)], "GPU pods created")
        await in_parallel([plain(i) for i in range(pods - queued)], "other pods created")
        await wait(lambda: queue_seen(queued - 8), 300, f"the queue of {queued - 8}")
        result["create_seconds"] = round(time.monotonic() - started, 1)
        result["after_creates"] = service()

        cluster.kill_service(0, signal.SIGTERM)
        restarted = time.monotonic()
        await cluster.start_service(0)
        await wait(lambda: queue_seen(queued - 8), 300, f"the restarted replica to list the queue of {queued - 8}")
        result["restart_to_queue_seconds"] = round(time.monotonic() - restarted, 1)
        result["after_restart"] = service()
        peak = max(result["after_creates"]["peak_mib"], result["after_restart"]["peak_mib"])
        result["goal"] = {"peak_mib_at_most": 100, "peak_mib": peak, "met": peak <= 100}
        return result
    finally:
        await kube.aclose()
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=5000, help="pods in the cluster in all")
    parser.add_argument("--queued", type=int, default=1000, help="of them, GPU pods from the hub (8 get a slice)")
    args = parser.parse_args()
    missing = missing_cluster_tools()
    if missing:
        print(f"missing {', '.join(missing)}: build them with tools/build.sh", file=sys.stderr)
        return 2
    if not 8 < args.queued <= args.pods:
        print("--queued must be over 8 (the slices) and at most --pods", file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(run(args.pods, args.queued))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
