"""The dev cluster's state file: what ``dev up`` started and where, so ``down``/``status`` (other
Python processes, later) can find and stop it, and so tests and people know the addresses. Also
``write_file``, how every file in the state directory is written (with its mode from the start)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

STATE_FILE = "state.json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProcessState(_Model):
    """One child process: enough to check it is still ours and to stop its process group."""

    name: str
    pid: int
    start_time: int | None = Field(None, description="kernel start time, guards against pid reuse")
    argv: list[str]
    log: Path
    url: str = Field("", description="where it serves, if anywhere")


class ServiceState(_Model):
    """One replica of the gpu-queue service."""

    index: int
    url: str = Field(description="HTTPS: admission, API")
    metrics_url: str = Field(description="plain HTTP: /healthz, /readyz, /metrics")


class DevState(_Model):
    """Everything ``gpu-queue dev up`` made. Paths are absolute."""

    version: int = 1
    state_dir: Path
    kubernetes_version: str = ""
    apiserver_url: str
    etcd_url: str
    redis_url: str
    kubeconfig: Path = Field(description="admin (system:masters) kubeconfig")
    service_kubeconfig: Path = Field(description="the service's own identity (RBAC-limited)")
    config: Path = Field(description="the service config every replica runs with")
    ca_file: Path = Field(description="CA of the service's serving certificate (its caBundle)")
    cluster_ca_file: Path = Field(description="CA of the API server and its client certificates")
    read_token: str
    admin_token: str
    hub_namespace: str
    service_namespace: str
    gpu_node: str
    cpu_node: str
    slices: int
    webhook_replica: int = Field(0, description="the replica whose URL the webhook configurations call")
    services: list[ServiceState]
    processes: dict[str, ProcessState] = Field(default_factory=dict)
    startup_seconds: float = 0.0


def state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def load_state(state_dir: Path) -> DevState | None:
    """The state file's content, None when there is none (nothing was started there)."""
    path = state_path(state_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return DevState.model_validate_json(text)


def save_state(state: DevState) -> None:
    """Atomic write, mode 0600: the file holds the API tokens."""
    path = state_path(state.state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(state.model_dump_json(indent=2))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_file(path: Path, data: bytes | str, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` with ``mode`` (set before any byte lands: keys are 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(raw)
    return path
