"""A local Kubernetes control plane with fake GPU nodes, Redis and the service, for ``gpu-queue dev``
and the cluster test tier. See ``webhook.devcluster.cluster``."""

from webhook.devcluster.cluster import (
    CLUSTER_TOOLS,
    CPU_NODE,
    GPU_NODE,
    HUB_NAMESPACE,
    SERVICE_NAMESPACE,
    DevCluster,
    missing_cluster_tools,
)
from webhook.devcluster.kube import KubeClient, KubeError
from webhook.devcluster.procs import DevClusterError
from webhook.devcluster.state import DevState

__all__ = [
    "CLUSTER_TOOLS",
    "CPU_NODE",
    "GPU_NODE",
    "HUB_NAMESPACE",
    "SERVICE_NAMESPACE",
    "DevCluster",
    "DevClusterError",
    "DevState",
    "KubeClient",
    "KubeError",
    "missing_cluster_tools",
]
