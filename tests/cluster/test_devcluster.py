"""The dev cluster itself: what the scenario tests and ``gpu-queue dev`` rely on.

Pins: the API server calls the webhook over TLS (a KubeSpawner pod gets its profile's resources,
a GPU pod its gate); the service's RBAC and webhooks are the chart's, and RBAC is really enforced
on the service's identity (the chart's ServiceAccount); the fake GPU node reports
its slices and follows ``set_gpu_slices``; kwok runs, readies and deletes pods on fake nodes; the
fault-injection methods work; ``dev up/status/down`` leaves no process behind.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gpu_queue_dev.cluster import DevCluster
from gpu_queue_dev.cluster.procs import group_members
from gpu_queue_dev.cluster.state import load_state
from gpu_queue_dev.spawnerpods import pod_manifest
from tests.helpers.chart import find, is_hook, render_chart
from tests.helpers.waiting import wait_for
from webhook.kube import KubeError
from webhook.quantity import parse_quantity, same_quantity

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
GATE = "gpu-queue.io/slice"


async def _get(url: str, ca: Path | None = None) -> int:
    import ssl

    ctx: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca)) if ca else True
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s, s.get(url, ssl=ctx) as r:
        return r.status


async def _admissions(metrics_url: str, handler: str) -> float:
    """How many AdmissionReviews a replica answered for ``handler`` (its Prometheus counter)."""
    async with aiohttp.ClientSession() as s, s.get(metrics_url + "/metrics") as r:
        text = await r.text()
    prefix = f'gpu_queue_admission_requests_total{{handler="{handler}"'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def _notebook(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "notebook")


def _quantities(values: dict[str, str]) -> dict[str, Decimal]:
    """Compare by amount: the webhook keeps KubeSpawner's equal value (4294967296 for 4Gi)."""
    return {k: parse_quantity(v) for k, v in values.items()}


def _condition(pod: dict[str, Any], kind: str) -> str | None:
    for c in pod.get("status", {}).get("conditions") or []:
        if c.get("type") == kind:
            return str(c.get("status"))
    return None


# ------------------------------------------------------------------------------------ up


async def test_cluster_is_up(clean_cluster: DevCluster) -> None:
    c = clean_cluster
    async with c.kube() as kube:
        assert (await kube.get("/version"))["gitVersion"] == "v1.35.4"
        names = {ns["metadata"]["name"] for ns in (await kube.get("/api/v1/namespaces"))["items"]}
        assert {"jhub", "gpu-queue"} <= names
        nodes = {n["metadata"]["name"]: n for n in (await kube.get("/api/v1/nodes"))["items"]}
    assert set(nodes) == {c.gpu_node, c.cpu_node}
    for node in nodes.values():
        assert _condition(node, "Ready") == "True"
        assert not node["spec"].get("taints"), "a taint would keep pods off the fake nodes"
    for i in range(c.replicas):
        assert await _get(c.metrics_url(i) + "/readyz") == 200
        assert await _get(c.api_url(i) + "/healthz", c.ca_file) == 200
    state = load_state(c.state_dir)
    assert state is not None and set(state.processes) >= {"etcd", "kube-apiserver", "kube-scheduler", "kwok", "redis"}
    assert state.startup_seconds < 60


async def test_webhooks_and_rbac_are_the_charts(clean_cluster: DevCluster) -> None:
    """What the API server holds is ``helm template`` of the chart (release gpu-queue in namespace
    gpu-queue, webhooks in the ``webhook.url`` mode at replica 0): every rendered field of both
    webhook configurations, the ServiceAccount, and every rule and binding of the service's RBAC."""
    c = clean_cluster
    ca_bundle = base64.b64encode(c.ca_file.read_bytes()).decode()
    rendered = render_chart(
        {"hubNamespaces": [c.hub_namespace], "webhook": {"url": c.api_url(0), "caBundle": ca_bundle}}
    )
    admission, rbac = "/apis/admissionregistration.k8s.io/v1", "/apis/rbac.authorization.k8s.io/v1"
    paths = {
        "MutatingWebhookConfiguration": admission + "/mutatingwebhookconfigurations/{name}",
        "ValidatingWebhookConfiguration": admission + "/validatingwebhookconfigurations/{name}",
        "ServiceAccount": "/api/v1/namespaces/{namespace}/serviceaccounts/{name}",
        "ClusterRole": rbac + "/clusterroles/{name}",
        "ClusterRoleBinding": rbac + "/clusterrolebindings/{name}",
        "Role": rbac + "/namespaces/{namespace}/roles/{name}",
        "RoleBinding": rbac + "/namespaces/{namespace}/rolebindings/{name}",
    }
    compared: list[str] = []
    async with c.kube() as kube:
        for kind, template in paths.items():
            expected = [o for o in find(rendered, kind) if not is_hook(o)]  # no certificate Jobs here
            assert expected, kind
            for obj in expected:
                live = await kube.get(template.format(**obj["metadata"]))
                compared.append(f"{kind}/{obj['metadata']['name']}")
                if "webhooks" in obj:
                    for want, got in zip(obj["webhooks"], live["webhooks"], strict=True):
                        assert {k: got.get(k) for k in want} == want, kind
                for field in ("rules", "roleRef", "subjects"):
                    assert live.get(field) == obj.get(field), (kind, obj["metadata"]["name"], field)
    assert "ClusterRoleBinding/gpu-queue-read" in compared and "RoleBinding/gpu-queue" in compared
    hooks = _rendered_hooks(rendered)  # equal to the live ones (above): the URL mode itself
    assert sorted(h["clientConfig"]["url"] for h in hooks) == [c.api_url(0) + "/mutate", c.api_url(0) + "/validate"]
    assert all("service" not in h["clientConfig"] and h["clientConfig"]["caBundle"] == ca_bundle for h in hooks)


def _rendered_hooks(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        h for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration") for o in find(objects, kind)
        for h in o["webhooks"]
    ]  # fmt: skip


async def test_api_server_calls_the_webhook_over_tls(clean_cluster: DevCluster) -> None:
    """A KubeSpawner CPU pod gets the profile's resources and runs; a GPU pod is created gated."""
    c = clean_cluster
    pods = f"/api/v1/namespaces/{c.hub_namespace}/pods"
    replica = c.state.webhook_replica
    mutated = await _admissions(c.metrics_url(replica), "mutate")
    validated = await _admissions(c.metrics_url(replica), "validate")
    async with c.kube() as kube:
        cpu = await kube.create(pods, await pod_manifest("alice", "cpu-only"), exist_ok=False)
        resources = _notebook(cpu)["resources"]
        assert _quantities(resources["limits"]) == _quantities({"cpu": "2", "memory": "4Gi"})
        assert _quantities(resources["requests"]) == _quantities({"cpu": "500m", "memory": "1Gi"})
        assert not cpu["spec"].get("schedulingGates")

        gpu = await kube.create(pods, await pod_manifest("bob", "gpu-enabled"), exist_ok=False)
        assert _notebook(gpu)["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert {"name": GATE} in gpu["spec"]["schedulingGates"]
        assert gpu["metadata"]["annotations"]["gpu-queue.io/pool"] == "gpu"

        name = cpu["metadata"]["name"]

        async def running() -> dict[str, Any] | None:
            pod = await kube.get(f"{pods}/{name}")
            return pod if pod["status"].get("phase") == "Running" and _condition(pod, "Ready") == "True" else None

        pod = await wait_for(running, 30, f"{name} Running and Ready on a fake node")
        assert pod["spec"]["nodeName"] in (c.gpu_node, c.cpu_node)
    assert await _admissions(c.metrics_url(replica), "mutate") == mutated + 2
    assert await _admissions(c.metrics_url(replica), "validate") >= validated + 2


async def test_validating_webhook_denies_a_foreign_gate_removal(clean_cluster: DevCluster) -> None:
    """The admin (not the service account) may not remove the queue gate: the API server asks
    /validate on UPDATE and refuses with the webhook's message."""
    c = clean_cluster
    pods = f"/api/v1/namespaces/{c.hub_namespace}/pods"
    async with c.kube() as kube:
        gpu = await kube.create(pods, await pod_manifest("carol", "gpu-enabled"), exist_ok=False)
        name = gpu["metadata"]["name"]
        with pytest.raises(KubeError) as denied:
            await kube.patch_json(
                f"{pods}/{name}",
                [
                    {"op": "test", "path": "/spec/schedulingGates/0/name", "value": GATE},
                    {"op": "remove", "path": "/spec/schedulingGates/0"},
                ],
            )
    # 422 if the controller removed the gate first (the test op fails): also not a removal by us.
    if denied.value.status != 422:
        assert denied.value.status in (400, 403)
        assert "validate.gpu-queue.io" in denied.value.reason and "only gpu-queue" in denied.value.reason


async def test_the_services_own_gate_removal_is_not_sent_to_validate(clean_cluster: DevCluster) -> None:
    """The validating webhook's matchCondition: a grant (the service account's UPDATE) is allowed
    without a call, so it costs one API-server round trip; anyone else's UPDATE is still asked."""
    c = clean_cluster
    pods = f"/api/v1/namespaces/{c.hub_namespace}/pods"
    metrics = c.metrics_url(c.state.webhook_replica)
    before = await _admissions(metrics, "validate")
    async with c.kube() as kube:
        gpu = await kube.create(pods, await pod_manifest("erin", "gpu-enabled"), exist_ok=False)
        name = gpu["metadata"]["name"]
        assert {"name": GATE} in gpu["spec"]["schedulingGates"]

        async def granted() -> dict[str, Any] | None:
            pod = await kube.get(f"{pods}/{name}")
            return pod if not pod["spec"].get("schedulingGates") else None

        pod = await wait_for(granted, 15, f"{name} granted a free slice")
        assert "gpu-queue.io/admitted-at" in pod["metadata"]["annotations"]
        assert await _admissions(metrics, "validate") == before + 1, "only the CREATE was validated"
        await kube.patch_json(f"{pods}/{name}", [{"op": "add", "path": "/metadata/labels/touched", "value": "yes"}])
    assert await _admissions(metrics, "validate") == before + 2, "an admin's UPDATE is validated"


async def test_rbac_is_enforced_on_the_service_identity(clean_cluster: DevCluster) -> None:
    c = clean_cluster
    async with c.service_kube() as kube:
        await kube.get(f"/api/v1/namespaces/{c.hub_namespace}/pods")
        await kube.get("/api/v1/pods")  # every namespace: other GPU users on the pool's nodes (I1)
        await kube.get("/api/v1/nodes")
        await kube.get("/apis/coordination.k8s.io/v1/namespaces/gpu-queue/leases/gpu-queue-leader")  # its Lease
        for method, path, body in (
            ("PATCH", "/api/v1/namespaces/default/pods/x", {}),  # writes only in the hub namespace
            ("DELETE", "/api/v1/namespaces/default/pods/x", None),
            ("GET", "/api/v1/namespaces/jhub/secrets", None),
            ("POST", f"/api/v1/namespaces/{c.hub_namespace}/pods", {"metadata": {"name": "x"}}),
            ("PATCH", f"/api/v1/nodes/{c.gpu_node}", {}),
            ("GET", "/apis/coordination.k8s.io/v1/namespaces/jhub/leases", None),
            ("GET", "/apis/coordination.k8s.io/v1/namespaces/gpu-queue/leases", None),  # only its own, by name
        ):
            with pytest.raises(KubeError) as forbidden:
                await kube.request(
                    method,
                    path,
                    body=body,
                    content_type="application/merge-patch+json" if method == "PATCH" else "application/json",
                )
            assert forbidden.value.status == 403, (method, path, forbidden.value)
            assert "system:serviceaccount:gpu-queue:gpu-queue" in forbidden.value.reason


# --------------------------------------------------------------------------------- nodes


async def test_gpu_node_reports_slices_and_follows_set_gpu_slices(clean_cluster: DevCluster) -> None:
    c = clean_cluster
    path = f"/api/v1/nodes/{c.gpu_node}"
    async with c.kube() as kube:
        node = await kube.get(path)
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == str(c.slices) == "8"
        assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
        assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
        assert "nvidia.com/gpu" not in (await kube.get(f"/api/v1/nodes/{c.cpu_node}"))["status"]["allocatable"]

        await c.set_gpu_slices(16)
        node = await kube.get(path)
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "16"
        assert node["status"]["capacity"]["nvidia.com/gpu"] == "16"
        # (kwok's status heartbeat, every 20-45 s, patches only the conditions: the count stays.)
    assert c.state.slices == 16


async def test_ungated_pod_on_the_fake_gpu_node_runs_and_deletes(clean_cluster: DevCluster) -> None:
    """The real scheduler binds a GPU pod to the fake node; kwok makes it Running and Ready, and
    deletes it after a graceful delete (no kubelet, so kwok's pod-delete stage does it)."""
    c = clean_cluster
    pods = f"/api/v1/namespaces/{c.hub_namespace}/pods"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain-gpu", "labels": {"component": "not-a-notebook"}},
        "spec": {
            "containers": [{"name": "c", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
    }
    async with c.kube() as kube:
        created = await kube.create(pods, pod, exist_ok=False)
        assert not created["spec"].get("schedulingGates")  # not a single-user pod: untouched

        async def running() -> dict[str, Any] | None:
            p = await kube.get(f"{pods}/plain-gpu")
            ok = p["status"].get("phase") == "Running" and _condition(p, "Ready") == "True"
            return p if ok else None

        p = await wait_for(running, 30, "plain-gpu Running")
        assert p["spec"]["nodeName"] == c.gpu_node
        assert p["status"].get("podIP")

        started = time.monotonic()
        await kube.delete(f"{pods}/plain-gpu", grace_seconds=30)

        async def gone() -> bool:
            try:
                await kube.get(f"{pods}/plain-gpu")
            except KubeError as exc:
                return exc.status == 404
            return False

        await wait_for(gone, 20, "plain-gpu deleted by kwok's pod-delete stage")
        assert time.monotonic() - started < 20


# ---------------------------------------------------------------------- fault injection


async def test_kill_and_start_service(clean_cluster: DevCluster) -> None:
    c = clean_cluster
    c.kill_service(1)
    assert not c.process_alive("service-1")
    with pytest.raises(aiohttp.ClientError):
        await _get(c.metrics_url(1) + "/readyz")
    await c.start_service(1)
    assert await _get(c.metrics_url(1) + "/readyz") == 200


async def test_point_webhooks_at_another_replica(clean_cluster: DevCluster) -> None:
    """With replica 0 down, admission fails closed until the webhooks point at replica 1."""
    c = clean_cluster
    pods = f"/api/v1/namespaces/{c.hub_namespace}/pods"
    before = await _admissions(c.metrics_url(1), "mutate")
    c.kill_service(0)
    async with c.kube() as kube:
        with pytest.raises(KubeError) as failed:
            await kube.create(pods, await pod_manifest("dave", "cpu-only"), exist_ok=False)
        assert "failed calling webhook" in failed.value.reason
        await c.point_webhooks_at(1)

        async def admitted() -> dict[str, Any]:
            return await kube.create(pods, await pod_manifest("dave", "cpu-only"), exist_ok=False)

        pod = await wait_for(admitted, 20, "admission through replica 1")
        assert same_quantity(_notebook(pod)["resources"]["limits"]["cpu"], "2")
    assert await _admissions(c.metrics_url(1), "mutate") > before


async def test_redis_kill_and_start(clean_cluster: DevCluster) -> None:
    import redis.asyncio as aioredis

    c = clean_cluster
    r = aioredis.from_url(c.redis_url)
    try:
        await r.set("gpu-queue-dev-test", "1")
        c.redis_kill()
        with pytest.raises(aioredis.ConnectionError):
            await r.ping()
        await c.redis_start()
        assert await r.get("gpu-queue-dev-test") is None  # nothing survives, like a lost Redis
    finally:
        await r.aclose()


async def test_restart_apiserver(clean_cluster: DevCluster) -> None:
    """Same port, same data; the webhook works again afterwards."""
    c = clean_cluster
    await c.restart_apiserver()
    pods = f"/api/v1/namespaces/{c.hub_namespace}/pods"
    async with c.kube() as kube:
        assert (await kube.get(f"/api/v1/nodes/{c.gpu_node}"))["metadata"]["name"] == c.gpu_node

        async def admitted() -> dict[str, Any]:
            return await kube.create(pods, await pod_manifest("erin", "cpu-only"), exist_ok=False)

        pod = await wait_for(admitted, 30, "admission after the API server restart")
        assert same_quantity(_notebook(pod)["resources"]["limits"]["cpu"], "2")


# ---------------------------------------------------------------------------------- CLI


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook.cli", "dev", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        check=False,
    )


def test_dev_up_status_down_leaves_no_process(tmp_path: Path) -> None:
    state_dir = tmp_path / "dev"
    up = _cli("up", "--state-dir", str(state_dir), "--replicas", "2", "--slices", "4")
    assert up.returncode == 0, up.stderr
    assert "starting etcd ... ok" in up.stderr
    state = load_state(state_dir)
    assert state is not None
    try:
        assert len(state.services) == 2 and state.slices == 4
        assert f"export KUBECONFIG={state.kubeconfig}" in up.stdout
        assert f"--token {state.admin_token}" in up.stdout
        again = _cli("up", "--state-dir", str(state_dir))
        assert again.returncode == 1 and "already running" in again.stderr
        status = _cli("status", "--state-dir", str(state_dir))
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("running") >= len(state.processes)
    finally:
        down = _cli("down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    for name, proc in state.processes.items():
        assert not group_members(proc.pid), f"{name} (pgid {proc.pid}) left processes behind"
        assert f"{name}" in down.stdout
    assert (state_dir / "logs" / "kube-apiserver.log").exists()  # down removes nothing
    assert _cli("status", "--state-dir", str(state_dir)).returncode == 1


def test_dev_up_names_missing_tools(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "GPU_QUEUE_TOOLS_BIN": str(empty), "PATH": str(Path(sys.executable).parent)}
    up = _cli("up", "--state-dir", str(tmp_path / "dev"), env=env)
    assert up.returncode == 2
    for tool in ("etcd", "kube-apiserver", "kube-scheduler", "kwok"):
        assert tool in up.stderr
    assert "tools/build.sh" in up.stderr


def test_stop_is_idempotent_and_signals_groups(tmp_path: Path) -> None:
    """stop() SIGTERMs the process group and reaps the child; a second stop finds nothing to do."""
    from gpu_queue_dev.cluster.procs import ManagedProcess

    proc = ManagedProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], tmp_path / "s.log")
    proc.start()
    assert proc.pid is not None and group_members(proc.pid)
    assert proc.stop(timeout=5) == "stopped"
    assert proc.exit_code() == -signal.SIGTERM
    assert proc.stop(timeout=5) == "not running"
