"""``helm install`` of the chart into the real local control plane: the API server accepts every
object the chart renders, and the webhook configurations point at the release's Service with the
scope the design sets. (No kubelet runs the images here; the kind tier does that.)"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from gpu_queue_dev.cluster import DevCluster
from tests.helpers.chart import CHART_DIR, helm_path
from tests.helpers.cluster import run_sync
from webhook.kube import KubeError

pytestmark = pytest.mark.timeout(240)

RELEASE = "gq-chart"
NAMESPACE = "gq-chart"
HUB = "chart-hub"  # a hub namespace of its own, so these webhooks never see the other tests' pods


def helm(cluster: DevCluster, *args: str) -> str:
    binary = helm_path()
    if binary is None:
        pytest.skip("helm not found: build it with tools/build.sh")
    done = subprocess.run(
        [str(binary), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"helm {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


@pytest.fixture
def installed(dev_cluster: DevCluster) -> Iterator[DevCluster]:
    run_sync(_ensure_namespace(dev_cluster, HUB))  # z2jh's namespace exists before the webhook chart
    # Hooks are Jobs; with no controller-manager here no Job ever runs, so install without them
    # (the chart tests pin the hook Jobs' specs; kind runs them for real).
    helm(
        dev_cluster,
        "install",
        RELEASE,
        str(CHART_DIR),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--no-hooks",
        "--set",
        f"hubNamespaces={{{HUB}}}",
        "--set",
        "api.readTokens={chart-read-token}",
        "--set",
        "api.adminTokens={chart-admin-token}",
    )
    try:
        yield dev_cluster
    finally:
        helm(dev_cluster, "uninstall", RELEASE, "--namespace", NAMESPACE, "--no-hooks")


async def _ensure_namespace(cluster: DevCluster, name: str) -> None:
    async with cluster.kube() as kube:
        try:
            await kube.request(
                "POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            )
        except KubeError as exc:
            if exc.status != 409:
                raise


async def _get(cluster: DevCluster, path: str) -> dict[str, Any]:
    async with cluster.kube() as kube:
        result: dict[str, Any] = await kube.request("GET", path)
        return result


async def test_helm_install_is_accepted_and_webhooks_point_at_the_release(installed: DevCluster) -> None:
    manifest = helm(installed, "get", "manifest", RELEASE, "--namespace", NAMESPACE)
    kinds = sorted({line.split(":", 1)[1].strip() for line in manifest.splitlines() if line.startswith("kind:")})
    print(f"[chart install] accepted kinds: {kinds}")
    for kind in (
        "Deployment",
        "Service",
        "ConfigMap",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ):
        assert kind in kinds
    admission = "/apis/admissionregistration.k8s.io/v1"
    mutating = await _get(installed, f"{admission}/mutatingwebhookconfigurations")
    ours = [w for c in mutating["items"] if c["metadata"]["name"].startswith(RELEASE) for w in c["webhooks"]]
    assert ours, "the chart's MutatingWebhookConfiguration is not in the API server"
    for hook in ours:
        service = hook["clientConfig"]["service"]
        assert service["namespace"] == NAMESPACE and service["path"] == "/mutate"
        assert service["name"].startswith(RELEASE)
        assert hook["failurePolicy"] == "Fail" and hook["timeoutSeconds"] == 2 and hook["sideEffects"] == "None"
        expressions = hook["namespaceSelector"]["matchExpressions"]
        assert {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [HUB]} in expressions
    validating = await _get(installed, f"{admission}/validatingwebhookconfigurations")
    vhooks = [w for c in validating["items"] if c["metadata"]["name"].startswith(RELEASE) for w in c["webhooks"]]
    assert vhooks and all(w["clientConfig"]["service"]["path"] == "/validate" for w in vhooks)
    operations = {op for w in vhooks for rule in w["rules"] for op in rule["operations"]}
    assert operations == {"CREATE", "UPDATE"}
    deployment = await _get(installed, f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments")
    replicas = next(d["spec"]["replicas"] for d in deployment["items"] if d["metadata"]["name"].startswith(RELEASE))
    assert replicas == 2
