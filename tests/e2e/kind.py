"""What the kind tier needs besides the shared scenarios: the installed release as ``kubectl`` and
``helm`` see it (tokens and CA read from its Secrets, the queue API through a port-forward that is
restarted when its pod goes away), spawns that keep coming while the release changes, and a watch
on the pods that counts the slices in use at every change."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.waiting import wait_for
from tests.scenarios import Target, gated
from webhook.kube import Kube, KubeError

RELEASE = os.environ.get("GPU_QUEUE_E2E_RELEASE", "gpu-queue")
RELEASE_NAMESPACE = os.environ.get("GPU_QUEUE_E2E_RELEASE_NAMESPACE", "gpu-queue")
LEASE = "gpu-queue-leader"
REPO = Path(__file__).resolve().parents[2]


def report(name: str, figures: dict[str, Any]) -> None:
    """Append one scenario's measured figures to the tier's report (run.sh prints it)."""
    path = os.environ.get("GPU_QUEUE_E2E_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"scenario": name, **figures}) + "\n")


class PortForward:
    """``kubectl port-forward <resource> :<port>``: one pod's port on a free local port. The forward
    dies with its pod (a rollout, a deleted leader); ``Release.api_url`` moves it to a live one."""

    def __init__(
        self, kubeconfig: str, resource: str = "", port: int = 8443, namespace: str = RELEASE_NAMESPACE
    ) -> None:
        self.kubeconfig, self.resource, self.remote, self.namespace = kubeconfig, resource, port, namespace
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    def url(self, resource: str | None = None) -> str:
        """The forward's URL, (re)started when it died or ``resource`` is not the one it forwards."""
        if resource is not None and resource != self.resource:
            self.close()
            self.resource = resource
        if self.process is None or self.process.poll() is not None:
            self._start()
        return f"https://localhost:{self.port}"

    def _start(self) -> None:
        self.close()
        process = subprocess.Popen(
            ["kubectl", "--kubeconfig", self.kubeconfig, "-n", self.namespace, "port-forward",
             self.resource, f":{self.remote}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert process.stdout is not None
        line = process.stdout.readline()  # "Forwarding from 127.0.0.1:NNNN -> 8443"
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not match:
            process.kill()
            raise RuntimeError(f"kubectl port-forward did not start: {line.strip()!r}")
        self.process, self.port = process, int(match.group(1))

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@dataclass
class Release:
    """The gpu-queue release installed by ``scripts/kind-up.sh``."""

    kube: Kube
    kubeconfig: str
    forward: PortForward

    async def secret(self, name: str, key: str) -> str:
        data = (await self.kube.request("GET", f"/api/v1/namespaces/{RELEASE_NAMESPACE}/secrets/{name}"))["data"]
        return base64.b64decode(data[key]).decode()

    async def leader(self) -> str:
        lease = await self.kube.request(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NAMESPACE}/leases/{LEASE}"
        )
        return str((lease.get("spec") or {}).get("holderIdentity") or "")

    async def service_pods(self) -> dict[str, dict[str, Any]]:
        listing = await self.kube.request(
            "GET",
            f"/api/v1/namespaces/{RELEASE_NAMESPACE}/pods",
            query={"labelSelector": "app.kubernetes.io/component=webhook"},
        )
        return {p["metadata"]["name"]: p for p in listing.get("items") or []}

    async def flush_redis(self) -> None:
        """Empty the built-in Redis, as the cluster tier does between tests: kept places and wait
        statistics of an earlier test (or an earlier run on a kept cluster) must not carry over.
        The queue itself needs nothing from it: the service rebuilds the index from the pods."""
        process = await asyncio.create_subprocess_exec(
            "kubectl", "--kubeconfig", self.kubeconfig, "-n", RELEASE_NAMESPACE, "exec", f"sts/{RELEASE}-redis",
            "--", "redis-cli", "FLUSHALL",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await process.communicate()
        if process.returncode != 0 or b"OK" not in output:
            raise AssertionError(f"redis-cli FLUSHALL in the Redis pod failed: {output.decode()[-500:]}")

    async def api_url(self) -> str:
        """The queue API through a port-forward to a Ready, not terminating replica."""
        live = [
            name
            for name, pod in (await self.service_pods()).items()
            if not pod["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])
        ]
        if not live:
            raise AssertionError("no gpu-queue replica is Ready")
        current = self.forward.resource.removeprefix("pod/")
        return self.forward.url(f"pod/{current if current in live else live[0]}")

    async def ready_replicas(self) -> int:
        deploy = await self.kube.request("GET", f"/apis/apps/v1/namespaces/{RELEASE_NAMESPACE}/deployments/{RELEASE}")
        status = deploy.get("status") or {}
        settled = status.get("updatedReplicas") == status.get("replicas") == (deploy.get("spec") or {}).get("replicas")
        if not settled or len(await self.service_pods()) != status.get("replicas"):
            return 0  # a rollout is still running, or an old pod is still terminating
        return int(status.get("readyReplicas") or 0)

    async def helm_upgrade(self, *sets: str, timeout: float = 300) -> float:
        """``helm upgrade --reuse-values --set ... --wait`` of the release as installed; seconds taken."""
        args = ["helm", "--kubeconfig", self.kubeconfig, "upgrade", RELEASE, str(REPO / "charts" / "gpu-queue"),
                "-n", RELEASE_NAMESPACE, "--reuse-values", "--wait", "--timeout", f"{int(timeout)}s"]  # fmt: skip
        for value in sets:
            args += ["--set", value]
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise AssertionError(f"helm upgrade failed ({process.returncode}): {output.decode()[-2000:]}")
        return time.monotonic() - started


@dataclass
class Spawner:
    """Spawns that keep coming (CPU and GPU alternately, one every ``every`` seconds) while
    something happens to the release; every refused or failed creation is kept with its error.
    A CPU pod is deleted once created (its admission is what counts; a kind node has 2 cores)."""

    target: Target
    prefix: str
    every: float = 0.4
    created: list[tuple[str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        for i in range(10_000):
            profile = "cpu-only" if i % 2 else "gpu-enabled"
            user = f"{self.prefix}{i}"
            try:
                pod = await self.target.spawn(user, profile)
                self.created.append((pod["metadata"]["name"], profile))
                if profile == "cpu-only":
                    await self.target.logout(pod["metadata"]["name"])
            except KubeError as exc:
                self.failures.append(f"{user} ({profile}): {exc.status} {exc.reason}")
            await asyncio.sleep(self.every)  # the pace of arrivals, not a wait for a condition


@dataclass
class SliceWatch:
    """Watches the hub namespace's pods and records, at every change, the slices in use (ungated,
    undeleted GPU pods): the most ever seen, and every pod that ever held one in the order seen
    (a gate never comes back, so a pod is granted at most once)."""

    target: Target
    most: int = 0
    grants: list[str] = field(default_factory=list)
    _holders: set[str] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def _see(self, kind: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        gpu = bool((pod["metadata"].get("annotations") or {}).get("gpu-queue.io/pool"))
        holding = gpu and kind != "DELETED" and not gated(pod) and not pod["metadata"].get("deletionTimestamp")
        if holding:
            self._holders.add(name)
            if name not in self.grants:
                self.grants.append(name)
        else:
            self._holders.discard(name)
        self.most = max(self.most, len(self._holders))

    async def _run(self) -> None:
        path = f"/api/v1/namespaces/{self.target.namespace}/pods"
        selector = "component=singleuser-server"
        while True:
            listing = await self.target.kube.request("GET", path, query={"labelSelector": selector})
            self._holders.clear()
            for pod in listing.get("items") or []:
                self._see("ADDED", pod)
            self._ready.set()
            query = {"labelSelector": selector, "resourceVersion": listing["metadata"]["resourceVersion"],
                     "allowWatchBookmarks": False, "timeoutSeconds": 300}  # fmt: skip
            try:
                async for event in self.target.kube.stream(path, query, read_timeout=330):
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        self._see(str(event["type"]), event["object"])
                    elif event.get("type") == "ERROR":
                        break  # 410 Gone: list again
            except KubeError:
                continue


async def set_slices(kube: Kube, node: str, slices: int) -> None:
    """Advertise ``nvidia.com/gpu`` on the node's status, as the device plugin with time-slicing does."""
    ops = [
        {"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": str(slices)},
        {"op": "add", "path": "/status/allocatable/nvidia.com~1gpu", "value": str(slices)},
    ]
    await kube.patch_json(f"/api/v1/nodes/{node}/status", ops)


async def clean_hub_namespace(kube: Kube, namespace: str) -> None:
    """Delete every single-user pod (grace 0) and wait until the namespace has none."""
    await kube.request(
        "DELETE",
        f"/api/v1/namespaces/{namespace}/pods",
        query={"labelSelector": "component=singleuser-server", "gracePeriodSeconds": 0},
        request_timeout=90,  # a collection of a hundred pods takes the API server a while on 2 cores
    )

    async def empty() -> bool:
        listing = await kube.request(
            "GET", f"/api/v1/namespaces/{namespace}/pods", query={"labelSelector": "component=singleuser-server"}
        )
        return not listing.get("items")

    await wait_for(empty, 90, "the hub namespace to have no single-user pods")
