"""The service's replicas: their config file and their processes (``gpu-queue serve``).

The config is the seed (or the given file) with what the chart decides for a real install (hub
namespaces, the ServiceAccount that may remove the gate, the Lease) taken from the rendered chart,
pointed at this cluster (kubeconfig, Redis, TLS, ports, tokens), then the caller's overrides.
"""

from __future__ import annotations

import copy
import os
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

import webhook
from gpu_queue_dev.cluster.controlplane import LogPath, http_ok
from gpu_queue_dev.cluster.pki import Pki
from gpu_queue_dev.cluster.procs import DevClusterError, ManagedProcess
from gpu_queue_dev.cluster.state import DevState, ServiceState, write_file
from webhook.config import Config, default_config_text

# Over the seed config when no config file is given: fast reconcile and leader failover for tests.
DEV_CONFIG_DEFAULTS: dict[str, Any] = {
    "controller": {"reconcileSeconds": 2, "leaseDurationSeconds": 4},
}


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in: mappings recursively, anything else replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _validated(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValueError as exc:
        raise DevClusterError(f"the service config is invalid:\n{exc}") from None


class ServiceConfig:
    """The config every replica runs with, built in two steps around the chart's rendering."""

    def __init__(self, config_file: Path | None, overrides: Mapping[str, Any]) -> None:
        if config_file is not None:
            try:
                data = yaml.safe_load(config_file.read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise DevClusterError(f"cannot read the service config {config_file}: {exc}") from None
            if not isinstance(data, dict):
                raise DevClusterError(f"{config_file}: the top level must be a mapping")
        else:
            data = deep_merge(yaml.safe_load(default_config_text()), DEV_CONFIG_DEFAULTS)
        self.base: dict[str, Any] = data
        self.overrides = dict(overrides)

    def pod_selector(self) -> dict[str, str]:
        """The single-user pods' labels (the chart's webhooks select on them)."""
        return _validated(deep_merge(self.base, self.overrides)).pod_selector

    def write(self, state: DevState, pki: Pki, ports: Mapping[str, int], chart_config: Mapping[str, Any]) -> Config:
        """Write ``state.config``; the validated result."""
        controller = chart_config.get("controller") or {}
        from_chart: dict[str, Any] = {
            "namespaces": chart_config["namespaces"],
            "serviceAccount": chart_config["serviceAccount"],
            "controller": {"leaseName": controller["leaseName"], "leaseNamespace": controller["leaseNamespace"]},
        }
        first = state.services[0] if state.services else None
        local: dict[str, Any] = {
            "kubeconfig": str(state.service_kubeconfig),
            "redis": {"url": state.redis_url},
            "tls": {"certFile": str(pki.cert("webhook-tls")), "keyFile": str(pki.key("webhook-tls"))},
            "server": {
                "host": "127.0.0.1",
                # Replica 0's ports; every replica gets its own through the environment.
                "port": ports[f"service-{first.index}"] if first else 8443,
                "metricsPort": ports[f"service-{first.index}-metrics"] if first else 8080,
            },
            "api": {"readTokens": [state.read_token], "adminTokens": [state.admin_token]},
        }
        data = deep_merge(deep_merge(deep_merge(self.base, from_chart), local), self.overrides)
        config = _validated(data)
        write_file(state.config, yaml.safe_dump(data, sort_keys=False), 0o600)
        return config


def service_process(
    i: int, command: Sequence[str], state: DevState, ports: Mapping[str, int], log_path: LogPath
) -> ManagedProcess:
    """Replica ``i``: ``gpu-queue serve`` on its own ports, with a clean environment."""
    # A GPU_QUEUE_* variable in the caller's shell would override the generated config: drop them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_QUEUE_") and k != "KUBECONFIG"}
    package_root = str(Path(webhook.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (package_root, env.get("PYTHONPATH", "")) if x)
    env.update(
        PYTHONUNBUFFERED="1",
        POD_NAME=f"gpu-queue-{i}",
        POD_NAMESPACE=state.service_namespace,
        GPU_QUEUE_SERVER__PORT=str(ports[f"service-{i}"]),
        GPU_QUEUE_SERVER__METRICSPORT=str(ports[f"service-{i}-metrics"]),
    )
    name = f"service-{i}"
    argv = [*command, "--config", str(state.config)]
    return ManagedProcess(name, argv, log_path(name), env=env, cwd=state.state_dir)


async def wait_service(proc: ManagedProcess, svc: ServiceState, ca_file: Path, within: float) -> None:
    """Ready (metrics /readyz) and serving HTTPS with the certificate the webhooks trust."""
    tls = ssl.create_default_context(cafile=str(ca_file))

    async def ready() -> bool:
        return await http_ok(svc.metrics_url + "/readyz") and await http_ok(svc.url + "/healthz", tls)

    await proc.wait_until(ready, within, "did not become ready")
