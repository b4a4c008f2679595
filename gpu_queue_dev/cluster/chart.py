"""The service's ServiceAccount, RBAC and webhook configurations, from ``helm template`` of the chart
users install (``charts/gpu-queue``), so the cluster tier runs the service with the permissions a
real install gives it: a rule the chart forgets fails here first.

The service runs as local processes, not behind the chart's Service, so the chart is rendered in its
``webhook.url`` mode (``clientConfig.url``, with ``webhook.caBundle``). Only the kinds below are
taken from the output; the Deployment, Service, Redis and certificate Jobs have local stand-ins.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gpu_queue_dev.cluster.procs import DevClusterError
from gpu_queue_dev.tools import find_tool

JSON = dict[str, Any]

CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "gpu-queue"
RELEASE = "gpu-queue"
# The chart's minimum: a helm built with `go install` assumes Kubernetes 1.20, which the chart
# refuses. No template depends on the version beyond that check.
KUBE_VERSION = "1.30.0"

# kind -> (API prefix, resource, namespaced): what is applied, and where.
APPLIED_KINDS: dict[str, tuple[str, str, bool]] = {
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "MutatingWebhookConfiguration": ("/apis/admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations", False),
    "ValidatingWebhookConfiguration": (
        "/apis/admissionregistration.k8s.io/v1",
        "validatingwebhookconfigurations",
        False,
    ),
}
WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
MANAGED_BY = "gpu-queue-dev"  # not Helm: no release owns these objects


@dataclass(frozen=True)
class ServiceChart:
    """What the dev cluster takes from the rendered chart."""

    objects: list[JSON]  # ServiceAccount, Roles, ClusterRoles and bindings
    webhooks: list[JSON]  # both webhook configurations (``webhooks_at`` re-points them)
    config: JSON  # the chart's config file for the service (its ConfigMap)

    @property
    def service_account(self) -> tuple[str, str]:
        """(namespace, name) of the chart's ServiceAccount."""
        (sa,) = [o for o in self.objects if o["kind"] == "ServiceAccount"]
        return str(sa["metadata"]["namespace"]), str(sa["metadata"]["name"])

    @property
    def service_user(self) -> str:
        """The user name Kubernetes gives the ServiceAccount: the service's client certificate CN."""
        namespace, name = self.service_account
        return f"system:serviceaccount:{namespace}:{name}"

    def save(self, path: Path) -> None:
        """Every applied object, as applied (``load_webhooks`` reads the webhooks back)."""
        path.write_text(yaml.safe_dump_all([*self.objects, *self.webhooks], sort_keys=False))


def load_webhooks(path: Path) -> list[JSON]:
    """The webhook configurations ``ServiceChart.save`` wrote."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") in WEBHOOK_KINDS]


def webhooks_at(webhooks: Sequence[Mapping[str, Any]], base_url: str) -> list[JSON]:
    """The webhook configurations re-pointed at ``base_url`` (same paths, same caBundle)."""
    out = [copy.deepcopy(dict(config)) for config in webhooks]
    for config in out:
        for hook in config["webhooks"]:
            client = hook["clientConfig"]
            client["url"] = base_url.rstrip("/") + urlsplit(client["url"]).path
    return out


def object_path(obj: Mapping[str, Any]) -> str:
    """The REST path of one object (for server-side apply)."""
    prefix, resource, namespaced = APPLIED_KINDS[str(obj["kind"])]
    meta = obj["metadata"]
    scope = f"/namespaces/{meta['namespace']}" if namespaced else ""
    return f"{prefix}{scope}/{resource}/{meta['name']}"


def _default_pod_selector() -> dict[str, Any]:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    return dict(values["config"]["podSelector"])


def chart_values(
    hub_namespaces: Sequence[str], pod_selector: Mapping[str, str], webhook_url: str, ca_pem: bytes | None
) -> JSON:
    """Values for the dev cluster: its hub namespaces and pod selector, webhooks by URL."""
    # Helm merges maps into the defaults: null out default labels the service does not select on.
    selector: dict[str, Any] = {k: None for k in _default_pod_selector() if k not in pod_selector}
    selector.update(pod_selector)
    webhook: JSON = {"url": webhook_url}
    if ca_pem is not None:
        webhook["caBundle"] = base64.b64encode(ca_pem).decode()
    return {"hubNamespaces": list(hub_namespaces), "webhook": webhook, "config": {"podSelector": selector}}


def select(rendered: Sequence[Mapping[str, Any]]) -> ServiceChart:
    """The applied kinds (no hooks) and the service's config file, from ``helm template`` output."""
    objects: list[JSON] = []
    webhooks: list[JSON] = []
    config: JSON | None = None
    for doc in rendered:
        meta = doc.get("metadata") or {}
        if "helm.sh/hook" in (meta.get("annotations") or {}):
            continue
        kind = doc.get("kind")
        if kind == "ConfigMap" and "config.yaml" in (doc.get("data") or {}):
            config = yaml.safe_load(doc["data"]["config.yaml"])
        elif kind in APPLIED_KINDS:
            obj = copy.deepcopy(dict(doc))
            obj["metadata"].setdefault("labels", {})["app.kubernetes.io/managed-by"] = MANAGED_BY
            (webhooks if kind in WEBHOOK_KINDS else objects).append(obj)
    if config is None or len(webhooks) != 2 or sum(o["kind"] == "ServiceAccount" for o in objects) != 1:
        raise DevClusterError("the chart rendered no ServiceAccount, config file or webhook configurations")
    return ServiceChart(objects=objects, webhooks=webhooks, config=config)


async def render(values: Mapping[str, Any], namespace: str) -> ServiceChart:
    """``helm template`` the chart as release ``gpu-queue`` in ``namespace``, then ``select``."""
    helm = find_tool("helm")
    if helm is None:
        raise DevClusterError("helm not found: build the tools with tools/build.sh (or put helm on PATH)")
    if not (CHART_DIR / "Chart.yaml").is_file():
        raise DevClusterError(f"the chart is not at {CHART_DIR}: the dev cluster runs from a checkout")
    with tempfile.TemporaryDirectory() as tmp:
        values_file = Path(tmp) / "values.yaml"
        values_file.write_text(yaml.safe_dump(dict(values), sort_keys=False))
        argv = [str(helm), "template", RELEASE, str(CHART_DIR), "--namespace", namespace, "--no-hooks"]
        argv += ["--kube-version", KUBE_VERSION, "--values", str(values_file)]
        try:
            done = await asyncio.to_thread(
                subprocess.run, argv, capture_output=True, text=True, timeout=60, check=False
            )
        except subprocess.TimeoutExpired:
            raise DevClusterError(f"helm template {CHART_DIR} did not finish within 60s") from None
    if done.returncode != 0:
        raise DevClusterError(f"helm template {CHART_DIR} failed:\n{done.stderr.strip()}")
    return select([d for d in yaml.safe_load_all(done.stdout) if d])
