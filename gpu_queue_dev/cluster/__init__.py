"""A local Kubernetes control plane with fake GPU nodes, Redis and the service, for ``gpu-queue dev``
and the cluster test tier. See ``gpu_queue_dev.cluster.cluster``."""

from gpu_queue_dev.cluster.cluster import (
    CLUSTER_TOOLS,
    CPU_NODE,
    GPU_NODE,
    HUB_NAMESPACE,
    SERVICE_NAMESPACE,
    DevCluster,
    missing_cluster_tools,
)
from gpu_queue_dev.cluster.kube import KubeClient, KubeError
from gpu_queue_dev.cluster.procs import DevClusterError
from gpu_queue_dev.cluster.state import DevState

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
