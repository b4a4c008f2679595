"""The objects the dev cluster creates: namespaces, the service's RBAC, fake nodes, webhooks.

The RBAC is what the service needs and nothing more, so a missing permission fails here the way it
would in a real cluster (the chart's Role must grant the same).
"""

from __future__ import annotations

import base64
from typing import Any

import yaml

JSON = dict[str, Any]

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
GPU_RESOURCE = "nvidia.com/gpu"
WEBHOOK_CONFIG_NAME = "gpu-queue"
MUTATING_WEBHOOK_NAME = "mutate.gpu-queue.io"
VALIDATING_WEBHOOK_NAME = "validate.gpu-queue.io"
SERVICE_ACCOUNT_GROUPS = ("system:serviceaccounts",)

# What the service does with the API: watch pods, remove gates (patch), delete pods (admin queue rm
# and the stuck-head policy), write Events (core and events.k8s.io, so either client API works),
# watch nodes (capacity: auto), and hold a Lease (leader election).
HUB_NAMESPACE_RULES: list[JSON] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch", "delete"]},
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]
CLUSTER_RULES: list[JSON] = [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
    # Read every pod: other workloads asking for a pool's GPU on its nodes use slices too (I1).
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
]
LEASE_RULES: list[JSON] = [
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "list", "watch", "create", "update"],
    },
]


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def namespace(name: str) -> JSON:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def _sa_subject(sa_namespace: str, sa_name: str) -> list[JSON]:
    # Bound as a ServiceAccount, as the chart does: RBAC matches it by the user name
    # system:serviceaccount:NS:NAME, which is the CN of the service's client certificate.
    return [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}]


def rbac(hub_namespace: str, sa_namespace: str, sa_name: str) -> list[tuple[str, JSON]]:
    """(collection path, object) for every Role, ClusterRole and binding the service needs."""
    rbac_api = "/apis/rbac.authorization.k8s.io/v1"
    labels = {"app.kubernetes.io/name": "gpu-queue", "app.kubernetes.io/managed-by": "gpu-queue-dev"}
    subjects = _sa_subject(sa_namespace, sa_name)
    out: list[tuple[str, JSON]] = []
    out.append(
        (
            f"{rbac_api}/clusterroles",
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": "gpu-queue", "labels": labels}, "rules": CLUSTER_RULES},
        )
    )  # fmt: skip
    out.append(
        (
            f"{rbac_api}/clusterrolebindings",
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "gpu-queue", "labels": labels},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "gpu-queue"},
             "subjects": subjects},
        )
    )  # fmt: skip
    for ns, rules in ((hub_namespace, HUB_NAMESPACE_RULES), (sa_namespace, LEASE_RULES)):
        out.append(
            (
                f"{rbac_api}/namespaces/{ns}/roles",
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": {"name": "gpu-queue", "namespace": ns, "labels": labels}, "rules": rules},
            )
        )  # fmt: skip
        out.append(
            (
                f"{rbac_api}/namespaces/{ns}/rolebindings",
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "gpu-queue", "namespace": ns, "labels": labels},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gpu-queue"},
                 "subjects": subjects},
            )
        )  # fmt: skip
    return out


def _node(name: str, resources: dict[str, str], labels: dict[str, str]) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **labels,
            },
            # kwok manages only nodes with this annotation (it fakes their kubelet).
            "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE, "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {},
        # A Node's status is kept on create (a kubelet registers this way); kwok keeps it too.
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake"},
        },
    }


def gpu_node(name: str, slices: int) -> JSON:
    """One time-sliced GPU: ``nvidia.com/gpu: slices``, labelled like the NVIDIA GPU operator does."""
    resources = {"cpu": "32", "memory": "128Gi", "pods": "110", GPU_RESOURCE: str(slices)}
    return _node(name, resources, {"nvidia.com/gpu.present": "true"})


def cpu_node(name: str) -> JSON:
    return _node(name, {"cpu": "32", "memory": "128Gi", "pods": "110"}, {})


def gpu_slices_patch(slices: int) -> JSON:
    """Merge patch for the node's status: what the device plugin's re-registration amounts to."""
    value = str(slices)
    return {"status": {"capacity": {GPU_RESOURCE: value}, "allocatable": {GPU_RESOURCE: value}}}


def _webhook_common(url: str, ca_pem: bytes, hub_namespaces: list[str], pod_selector: dict[str, str]) -> JSON:
    return {
        "clientConfig": {"url": url, "caBundle": base64.b64encode(ca_pem).decode()},
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "timeoutSeconds": 2,
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "objectSelector": {"matchLabels": dict(pod_selector)},
        "namespaceSelector": {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(hub_namespaces)}
            ]
        },
    }


def mutating_webhook_configuration(
    base_url: str, ca_pem: bytes, hub_namespaces: list[str], pod_selector: dict[str, str]
) -> JSON:
    hook = _webhook_common(base_url + "/mutate", ca_pem, hub_namespaces, pod_selector)
    hook.update(
        name=MUTATING_WEBHOOK_NAME,
        # Another mutating webhook may change the pod after us; being called again is safe
        # because our mutation is idempotent.
        reinvocationPolicy="IfNeeded",
        rules=[{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
                "scope": "Namespaced"}],
    )  # fmt: skip
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIG_NAME},
        "webhooks": [hook],
    }


def validating_webhook_configuration(
    base_url: str, ca_pem: bytes, hub_namespaces: list[str], pod_selector: dict[str, str]
) -> JSON:
    hook = _webhook_common(base_url + "/validate", ca_pem, hub_namespaces, pod_selector)
    hook.update(
        name=VALIDATING_WEBHOOK_NAME,
        rules=[{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                "resources": ["pods"], "scope": "Namespaced"}],
    )  # fmt: skip
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIG_NAME},
        "webhooks": [hook],
    }


def probe_pod(hub_namespace: str, pod_selector: dict[str, str], profile_label: str, profile: str) -> JSON:
    """A small single-user pod for a dry-run create: proves the API server reaches the webhook."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "gpu-queue-dev-probe",
            "namespace": hub_namespace,
            "labels": {**pod_selector, profile_label: profile},
            "annotations": {"hub.jupyter.org/username": "probe", "hub.jupyter.org/servername": ""},
        },
        "spec": {"containers": [{"name": "notebook", "image": "jupyter/base-notebook"}]},
    }


def kubeconfig(
    server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, user: str, context: str = "gpu-queue-dev"
) -> str:
    """A self-contained kubeconfig (data embedded) for one client-certificate identity."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": user}}],
        "current-context": context,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)
