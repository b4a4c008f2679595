"""A local Kubernetes control plane with fake GPU nodes, Redis and the service, for ``gpu-queue dev``
and the cluster test tier. See ``gpu_queue_dev.cluster.cluster``.

Modules: ``cluster`` (DevCluster: start-up, faults), ``handle`` (layout, state file, stop),
``controlplane`` (etcd, kube-apiserver, kube-scheduler, kwok, redis), ``service`` (the replicas and
their config), ``pki`` (certificates, kubeconfigs), ``chart`` (the service's RBAC and webhooks
from ``helm template``), ``bootstrap`` and ``manifests`` (what is created through the API),
``kube`` (the API client), ``procs`` and ``state``. API errors are ``webhook.kube.KubeError``.
"""

from gpu_queue_dev.cluster.cluster import CPU_NODE, GPU_NODE, HUB_NAMESPACE, SERVICE_NAMESPACE, DevCluster
from gpu_queue_dev.cluster.controlplane import CLUSTER_TOOLS, missing_cluster_tools
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
    "missing_cluster_tools",
]
