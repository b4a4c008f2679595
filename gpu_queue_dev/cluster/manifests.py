"""The objects the dev cluster makes that the chart does not ship: namespaces, the fake nodes (their
slice count and readiness), and the probe pod that proves the API server reaches the webhook. The
service's ServiceAccount, RBAC and webhook configurations come from the chart (``chart.py``).
"""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
GPU_RESOURCE = "nvidia.com/gpu"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"


def namespace(name: str) -> JSON:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


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


def readiness_patches(node: JSON, ready: bool, now: str) -> tuple[JSON, JSON]:
    """Merge patches (for the node, for its status) that make ``node`` NotReady as a kubelet that
    stopped reporting and the node lifecycle controller leave it (Ready False, the not-ready
    NoSchedule and NoExecute taints), or Ready again. While NotReady the node loses kwok's
    annotation: kwok would mark it Ready at its next heartbeat."""
    taints = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("key") != NOT_READY_TAINT]
    if not ready:
        taints += [
            {"key": NOT_READY_TAINT, "effect": "NoSchedule", "timeAdded": now},
            {"key": NOT_READY_TAINT, "effect": "NoExecute", "timeAdded": now},
        ]
    conditions = [c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") != "Ready"]
    conditions.append(
        {
            "type": "Ready",
            "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady",
            "message": "kubelet is posting ready status" if ready else "the dev cluster marked the node NotReady",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
    )
    node_patch = {
        "metadata": {"annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE if ready else None}},
        "spec": {"taints": taints or None},
    }
    return node_patch, {"status": {"conditions": conditions}}


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
