"""``ClusterHandle``: a dev cluster as its state file describes it: where everything is, API clients
for the admin and the service's identities, the state file itself, and stopping the processes.

``DevCluster`` (``cluster.py``) adds starting it and the fault-injection helpers; a handle made by
``DevCluster.from_state_dir`` (another process, later) is enough for ``dev down`` and ``status``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from gpu_queue_dev.cluster.pki import Pki, client_ssl_context
from gpu_queue_dev.cluster.procs import DevClusterError, ManagedProcess, stop_groups
from gpu_queue_dev.cluster.state import DevState, ProcessState, save_state, write_file
from webhook.config import Config, load_config

if TYPE_CHECKING:
    from gpu_queue_dev.cluster.kube import DevKube

Progress = Callable[[str], None]


class ClusterHandle:
    """The processes (``procs``) and the state of a dev cluster in ``state_dir``."""

    def __init__(self, state_dir: Path | str, *, timeout: float = 60.0, progress: Progress | None = None) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.timeout = timeout
        self._progress = progress
        self.procs: dict[str, ManagedProcess] = {}
        self._state: DevState | None = None
        self._service_config: Config | None = None
        self._ports: dict[str, int] = {}

    # ------------------------------------------------------------------------------ layout

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def _certs(self) -> Pki:
        return Pki(self.pki)

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def chart_objects(self) -> Path:
        """What was applied from the chart (ServiceAccount, RBAC, webhooks), as YAML."""
        return self.state_dir / "chart-objects.yaml"

    @property
    def state(self) -> DevState:
        if self._state is None:
            raise DevClusterError("the dev cluster is not started")
        return self._state

    @property
    def kubeconfig(self) -> Path:
        """The admin (system:masters) kubeconfig."""
        return self.state.kubeconfig

    @property
    def service_kubeconfig(self) -> Path:
        return self.state.service_kubeconfig

    @property
    def ca_file(self) -> Path:
        """The CA that verifies the service's HTTPS (``--ca`` of ``gpu-queue status``)."""
        return self.state.ca_file

    @property
    def read_token(self) -> str:
        return self.state.read_token

    @property
    def admin_token(self) -> str:
        return self.state.admin_token

    @property
    def redis_url(self) -> str:
        return self.state.redis_url

    @property
    def apiserver_url(self) -> str:
        return self.state.apiserver_url

    @property
    def hub_namespace(self) -> str:
        return self.state.hub_namespace

    @property
    def gpu_node(self) -> str:
        return self.state.gpu_node

    @property
    def cpu_node(self) -> str:
        return self.state.cpu_node

    @property
    def service_config(self) -> Config:
        """The validated configuration every replica runs with."""
        if self._service_config is None:
            # A handle from the state file: read the file the replicas run with (no env overrides).
            self._service_config = load_config(self.state.config, env={})
        return self._service_config

    def api_url(self, i: int = 0) -> str:
        """Base HTTPS URL of replica ``i`` (admission, ``/api/v1``, health)."""
        return self.state.services[i].url

    def metrics_url(self, i: int = 0) -> str:
        return self.state.services[i].metrics_url

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def service_log_path(self, i: int = 0) -> Path:
        return self.log_path(f"service-{i}")

    def service_log(self, i: int = 0) -> str:
        """Everything replica ``i`` has logged (JSON lines), across restarts."""
        try:
            return self.service_log_path(i).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------------- API clients

    def kube(self) -> DevKube:
        """An admin client: ``async with cluster.kube() as kube: ...`` (errors: ``webhook.kube.KubeError``)."""
        from gpu_queue_dev.cluster.kube import DevKube  # the Kubernetes client loads only when used

        certs = self._certs
        return DevKube.connect(self.apiserver_url, certs.cluster_ca, certs.cert("admin"), certs.key("admin"))

    def service_kube(self) -> DevKube:
        """A client with the service's own (RBAC-limited) identity."""
        from gpu_queue_dev.cluster.kube import DevKube

        certs = self._certs
        return DevKube.connect(
            self.apiserver_url, certs.cluster_ca, certs.cert("service-client"), certs.key("service-client")
        )

    def _admin_ssl(self) -> ssl.SSLContext:
        certs = self._certs
        return client_ssl_context(certs.cluster_ca, certs.cert("admin"), certs.key("admin"))

    # ----------------------------------------------------------------------------- progress

    def _say(self, line: str) -> None:
        if self._progress is not None:
            self._progress(line)

    @contextmanager
    def _step(self, what: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except asyncio.CancelledError:
            raise  # another step failed first; that one reports
        except BaseException:
            self._say(f"{what} ... FAILED ({time.monotonic() - started:.1f}s)")
            raise
        self._say(f"{what} ... ok ({time.monotonic() - started:.1f}s)")

    # ------------------------------------------------------------------------ processes

    def stop(self, timeout: float = 10.0) -> dict[str, str]:
        """Stop every process, clients before servers: the services (they release the Lease), the
        scheduler and kwok, the API server, and etcd last (without it the API server's graceful
        shutdown hangs until SIGKILL)."""
        services = [n for n in self.procs if n.startswith("service-")]
        stages = [services, ["kube-scheduler", "kwok"], ["kube-apiserver"]]
        staged = {n for names in stages for n in names}
        stages.append([n for n in self.procs if n not in staged])  # etcd, redis
        result: dict[str, str] = {}
        for names in stages:
            refs = [ref for ref in (self.procs[n].ref() for n in names if n in self.procs) if ref is not None]
            result.update(stop_groups(refs, timeout))
        return result

    def process_alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.alive()

    # ------------------------------------------------------------------------ state file

    def _save(self) -> None:
        st = self.state
        urls = {
            "etcd": st.etcd_url,
            "kube-apiserver": st.apiserver_url,
            "redis": st.redis_url,
            "kube-scheduler": f"https://127.0.0.1:{self._ports['scheduler']}" if self._ports else "",
            "kwok": f"http://127.0.0.1:{self._ports['kwok']}" if self._ports else "",
            **{f"service-{s.index}": s.url for s in st.services},
        }
        st.processes = {
            name: ProcessState(
                name=name, pid=proc.pid, start_time=proc.start_time, argv=proc.argv, log=proc.log_path,
                url=urls.get(name, ""),
            )
            for name, proc in self.procs.items()
            if proc.pid is not None
        }  # fmt: skip
        save_state(st)

    def _write_env_file(self) -> None:
        st = self.state
        lines = [f"export KUBECONFIG={st.kubeconfig}"]
        if st.services:
            lines += [
                f"export GPU_QUEUE_API_URL={st.services[st.webhook_replica].url}",
                f"export GPU_QUEUE_CA={st.ca_file}",
                f"export GPU_QUEUE_TOKEN={st.admin_token}",
            ]
        write_file(self.state_dir / "env.sh", "\n".join(lines) + "\n", 0o600)
