"""``DevCluster``: a real local control plane with fake GPU nodes, Redis, and the service.

etcd, kube-apiserver, kube-scheduler and kwok run as local processes (no Docker), the way
controller-runtime's envtest runs them, so the API server really calls the webhook over TLS,
really enforces RBAC and scheduling-gate rules, and really serves watches. kwok plays the kubelet
of the fake nodes: they become Ready, and pods bound to them Running. The service runs as N
``gpu-queue serve`` replicas under its own identity (a client certificate for the service
account's user name, since without a controller-manager there are no service-account tokens).

Process management is synchronous (``Popen``; signals), network waits are async and open their
own connections per call, so one object works from the CLI (``asyncio.run``), from a sync pytest
session fixture, and from async tests running in any event loop.
"""

from __future__ import annotations

import asyncio
import copy
import os
import secrets
import shutil
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import webhook
from gpu_queue_dev.cluster import manifests
from gpu_queue_dev.cluster.kube import KubeClient, KubeError, client_ssl_context
from gpu_queue_dev.cluster.procs import (
    POLL_SECONDS,
    DevClusterError,
    ManagedProcess,
    free_ports,
    pid_matches,
    stop_groups,
)
from gpu_queue_dev.cluster.state import DevState, ProcessState, ServiceState, load_state, save_state
from gpu_queue_dev.tools import find_tool
from webhook.certs import CertPair, make_ca, make_client_cert, make_serving_cert
from webhook.config import Config, default_config_text, load_config

# The binaries a dev cluster runs (helm is for the chart tests, not needed here).
CLUSTER_TOOLS = ("etcd", "kube-apiserver", "kube-scheduler", "kwok", "redis-server")

HUB_NAMESPACE = "jhub"
SERVICE_NAMESPACE = "gpu-queue"
SERVICE_ACCOUNT = "gpu-queue"
GPU_NODE = "kwok-gpu-0"
CPU_NODE = "kwok-cpu-0"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
POD_CIDR = "10.244.0.1/16"
NODE_IP = "10.0.1.1"

# Over the seed config when no config file is given: fast reconcile and leader failover for tests.
DEV_CONFIG_DEFAULTS: dict[str, Any] = {
    "controller": {"reconcileSeconds": 2, "leaseDurationSeconds": 4},
}

Progress = Callable[[str], None]


def missing_cluster_tools() -> list[str]:
    """The binaries a dev cluster needs that are not built (``tools/build.sh``) or on PATH."""
    return [name for name in CLUSTER_TOOLS if find_tool(name) is None]


def _tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        raise DevClusterError(f"{name} not found: build the tools with tools/build.sh (or put {name} on PATH)")
    return str(path)


def deep_merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in: mappings recursively, anything else replaced."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(raw)
    return path


class DevCluster:
    """A dev cluster in ``state_dir``. ``await start()``, then ``stop()``.

    ``webhook_replica`` is the replica whose URL the webhook configurations call: the API server
    calls one URL per webhook, so with several replicas the others serve the API and compete for
    the leader Lease but get no AdmissionReviews. A test that kills that replica re-points the
    webhooks with ``point_webhooks_at``.
    """

    def __init__(
        self,
        state_dir: Path | str,
        *,
        slices: int = 8,
        replicas: int = 1,
        config: Path | str | None = None,
        config_overrides: Mapping[str, Any] | None = None,
        webhook_replica: int = 0,
        service_command: Sequence[str] | None = None,
        timeout: float = 60.0,
        progress: Progress | None = None,
    ) -> None:
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        if slices < 0:
            raise ValueError("slices must be >= 0")
        if replicas and not 0 <= webhook_replica < replicas:
            raise ValueError(f"webhook_replica {webhook_replica} is not one of the {replicas} replicas")
        self.state_dir = Path(state_dir).resolve()
        self.slices = slices
        self.replicas = replicas
        self.config_file = Path(config).resolve() if config is not None else None
        self.config_overrides = dict(config_overrides or {})
        self.webhook_replica = webhook_replica
        self.service_command = list(service_command or [sys.executable, "-m", "webhook.cli", "serve"])
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
    def logs(self) -> Path:
        return self.state_dir / "logs"

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

    def kube(self) -> KubeClient:
        """An admin REST client: ``async with cluster.kube() as kube: ...``."""
        return KubeClient(self.apiserver_url, self._admin_ssl())

    def service_kube(self) -> KubeClient:
        """A REST client with the service's own (RBAC-limited) identity."""
        ctx = client_ssl_context(
            self.state.cluster_ca_file, self.pki / "service-client.crt", self.pki / "service-client.key"
        )
        return KubeClient(self.apiserver_url, ctx)

    def _admin_ssl(self) -> ssl.SSLContext:
        return client_ssl_context(self.state.cluster_ca_file, self.pki / "admin.crt", self.pki / "admin.key")

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

    # -------------------------------------------------------------------------------- start

    async def start(self) -> DevState:
        """Start everything and wait until it works; on failure stop what was started and raise."""
        missing = missing_cluster_tools()
        if missing:
            raise DevClusterError(
                f"missing tools: {', '.join(missing)}; build them with tools/build.sh "
                "(a cold build takes 15-30 minutes; later runs use the cache)"
            )
        previous = load_state(self.state_dir)
        if previous is not None and any(pid_matches(p.pid, p.start_time) for p in previous.processes.values()):
            raise DevClusterError(
                f"a dev cluster is already running in {self.state_dir}; stop it first: "
                f"gpu-queue dev down --state-dir {self.state_dir}"
            )
        started = time.monotonic()
        try:
            await self._start(started)
        except BaseException:
            self.stop()
            raise
        return self.state

    def _prepare_dir(self) -> None:
        """A fresh cluster each time: drop the previous run's data and logs (only what we made)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        for sub in ("etcd", "redis", "logs", "pki"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        self.logs.mkdir()

    async def _start(self, started: float) -> None:
        self._prepare_dir()
        names = ["etcd", "etcd-peer", "apiserver", "scheduler", "kwok", "redis"]
        for i in range(self.replicas):
            names += [f"service-{i}", f"service-{i}-metrics"]
        self._ports = dict(zip(names, free_ports(len(names)), strict=True))
        p = self._ports
        apiserver_url = f"https://127.0.0.1:{p['apiserver']}"
        read_token, admin_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        services = [
            ServiceState(
                index=i,
                url=f"https://127.0.0.1:{p[f'service-{i}']}",
                metrics_url=f"http://127.0.0.1:{p[f'service-{i}-metrics']}",
            )
            for i in range(self.replicas)
        ]
        self._state = DevState(
            state_dir=self.state_dir,
            kubernetes_version="",
            apiserver_url=apiserver_url,
            etcd_url=f"http://127.0.0.1:{p['etcd']}",
            redis_url=f"redis://127.0.0.1:{p['redis']}/0",
            kubeconfig=self.state_dir / "kubeconfig",
            service_kubeconfig=self.state_dir / "service.kubeconfig",
            config=self.state_dir / "config.yaml",
            ca_file=self.pki / "webhook-ca.crt",
            cluster_ca_file=self.pki / "cluster-ca.crt",
            read_token=read_token,
            admin_token=admin_token,
            hub_namespace=HUB_NAMESPACE,
            service_namespace=SERVICE_NAMESPACE,
            gpu_node=GPU_NODE,
            cpu_node=CPU_NODE,
            slices=self.slices,
            webhook_replica=self.webhook_replica,
            services=services,
        )
        with self._step("configuration and certificates"):
            self._make_pki()
            self._write_service_config()
        self._define_processes()

        # etcd and Redis have no dependencies: start both, then the API server as soon as etcd is up.
        self.procs["etcd"].start()
        self.procs["redis"].start()
        self._save()
        with self._step("starting etcd"):
            await self._wait_etcd()
        self.procs["kube-apiserver"].start()
        self._save()
        with self._step("starting kube-apiserver"):
            await self._wait_apiserver()
            self.state.kubernetes_version = await self._server_version()
        self.procs["kube-scheduler"].start()
        self.procs["kwok"].start()
        self._save()
        with self._step("creating namespaces, RBAC and fake nodes"):
            await self._create_objects()
        with self._step("starting redis"):
            await self._wait_redis()
        for i in range(self.replicas):
            self.procs[f"service-{i}"].start()
        self._save()
        waits: list[tuple[str, Any]] = [
            ("starting kube-scheduler", self._wait_scheduler()),
            ("starting kwok (fake kubelets)", self._wait_kwok()),
            ("fake nodes Ready", self._wait_nodes_ready()),
        ]
        waits += [(f"starting service replica {i}", self._wait_service(i)) for i in range(self.replicas)]
        await self._gather_steps(waits)
        if self.replicas:
            with self._step(f"registering the webhooks (replica {self.webhook_replica})"):
                await self.point_webhooks_at(self.webhook_replica)
                await self._probe_webhook()
        self.state.startup_seconds = round(time.monotonic() - started, 2)
        self._save()
        self._write_env_file()
        self._say(f"dev cluster up in {self.state.startup_seconds:.1f}s")

    async def _gather_steps(self, waits: list[tuple[str, Any]]) -> None:
        """Run the waits concurrently, each reported as it finishes; the first failure raises."""

        async def one(what: str, coro: Any) -> None:
            with self._step(what):
                await coro

        tasks = [asyncio.ensure_future(one(what, coro)) for what, coro in waits]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------------------- PKI

    def _make_pki(self) -> None:
        pki = self.pki
        cluster_ca = make_ca("gpu-queue-dev-cluster-ca")
        _write(pki / "cluster-ca.crt", cluster_ca.cert_pem)
        _write(pki / "cluster-ca.key", cluster_ca.key_pem, 0o600)
        serving = make_serving_cert(
            cluster_ca,
            ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            ["127.0.0.1", "10.0.0.1"],
            common_name="kube-apiserver",
        )
        self._write_pair("apiserver", serving)
        admin = make_client_cert(cluster_ca, "gpu-queue-dev-admin", ["system:masters"])
        self._write_pair("admin", admin)
        sa_user = manifests.service_account_user(SERVICE_NAMESPACE, SERVICE_ACCOUNT)
        service_client = make_client_cert(
            cluster_ca, sa_user, [*manifests.SERVICE_ACCOUNT_GROUPS, f"system:serviceaccounts:{SERVICE_NAMESPACE}"]
        )
        self._write_pair("service-client", service_client)
        # The API server signs service-account tokens with this key (required even though no
        # controller-manager asks it to): ECDSA P-256, which it accepts.
        sa_key = ec.generate_private_key(ec.SECP256R1())
        _write(
            pki / "sa.key",
            sa_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            0o600,
        )
        _write(
            pki / "sa.pub",
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        # The service's own CA and serving certificate: what the webhooks' caBundle trusts.
        webhook_ca = make_ca("gpu-queue-dev-webhook-ca")
        _write(pki / "webhook-ca.crt", webhook_ca.cert_pem)
        _write(pki / "webhook-ca.key", webhook_ca.key_pem, 0o600)
        self._write_pair("webhook-tls", make_serving_cert(webhook_ca, ["localhost"], ["127.0.0.1"]))

        server = self.state.apiserver_url
        _write(
            self.state.kubeconfig,
            manifests.kubeconfig(server, cluster_ca.cert_pem, admin.cert_pem, admin.key_pem, "gpu-queue-dev-admin"),
            0o600,
        )
        _write(
            self.state.service_kubeconfig,
            manifests.kubeconfig(server, cluster_ca.cert_pem, service_client.cert_pem, service_client.key_pem, sa_user),
            0o600,
        )

    def _write_pair(self, name: str, pair: CertPair) -> None:
        _write(self.pki / f"{name}.crt", pair.cert_pem)
        _write(self.pki / f"{name}.key", pair.key_pem, 0o600)

    # ---------------------------------------------------------------------------- config

    def _write_service_config(self) -> None:
        """The seed (or the given file), pointed at this cluster, then ``config_overrides``."""
        if self.config_file is not None:
            try:
                data = yaml.safe_load(self.config_file.read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise DevClusterError(f"cannot read the service config {self.config_file}: {exc}") from None
        else:
            data = deep_merge(yaml.safe_load(default_config_text()), DEV_CONFIG_DEFAULTS)
        if not isinstance(data, dict):
            raise DevClusterError(f"{self.config_file}: the top level must be a mapping")
        st = self.state
        first = st.services[0] if st.services else None
        wiring: dict[str, Any] = {
            "kubeconfig": str(st.service_kubeconfig),
            "namespaces": [HUB_NAMESPACE],
            "serviceAccount": manifests.service_account_user(SERVICE_NAMESPACE, SERVICE_ACCOUNT),
            "redis": {"url": st.redis_url},
            "tls": {"certFile": str(self.pki / "webhook-tls.crt"), "keyFile": str(self.pki / "webhook-tls.key")},
            "server": {
                "host": "127.0.0.1",
                # Replica 0's ports; every replica gets its own through the environment.
                "port": self._ports[f"service-{first.index}"] if first else 8443,
                "metricsPort": self._ports[f"service-{first.index}-metrics"] if first else 8080,
            },
            "api": {"readTokens": [st.read_token], "adminTokens": [st.admin_token]},
            "controller": {"leaseNamespace": SERVICE_NAMESPACE},
        }
        data = deep_merge(deep_merge(data, wiring), self.config_overrides)
        try:
            self._service_config = Config.model_validate(data)
        except ValueError as exc:
            raise DevClusterError(f"the service config is invalid:\n{exc}") from None
        _write(st.config, yaml.safe_dump(data, sort_keys=False), 0o600)

    # ------------------------------------------------------------------------- processes

    def _define_processes(self) -> None:
        p, st, pki = self._ports, self.state, self.pki
        etcd_dir = self.state_dir / "etcd"
        self._add(
            "etcd",
            [
                _tool("etcd"),
                "--name=dev",
                f"--data-dir={etcd_dir}",
                f"--listen-client-urls=http://127.0.0.1:{p['etcd']}",
                f"--advertise-client-urls=http://127.0.0.1:{p['etcd']}",
                f"--listen-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
                f"--initial-cluster=dev=http://127.0.0.1:{p['etcd-peer']}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._add(
            "kube-apiserver",
            [
                _tool("kube-apiserver"),
                f"--etcd-servers={st.etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['apiserver']}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'cluster-ca.crt'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={st.apiserver_url}/",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                # No controller-manager: no default ServiceAccount objects for the ServiceAccount plugin
                # to find, and no node lifecycle controller to lift the not-ready:NoSchedule taint that
                # TaintNodesByCondition puts on every new Node (pods would never schedule).
                "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
                "--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                # Nothing here needs the `kubernetes` Service's endpoints; skip reconciling them.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
        )
        sched_config = _write(
            self.state_dir / "kube-scheduler.yaml",
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(st.kubeconfig)},
                    "leaderElection": {"leaderElect": False},
                }
            ),
        )
        self._add(
            "kube-scheduler",
            [
                _tool("kube-scheduler"),
                f"--config={sched_config}",
                # A secure port (not 0) so start-up can wait on /readyz, which turns ready once
                # the scheduler's informers have synced; /readyz is on the always-allowed paths.
                "--bind-address=127.0.0.1",
                f"--secure-port={p['scheduler']}",
            ],
        )
        self._add(
            "kwok",
            [
                _tool("kwok"),
                f"--kubeconfig={st.kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={manifests.KWOK_ANNOTATION}={manifests.KWOK_ANNOTATION_VALUE}",
                f"--cidr={POD_CIDR}",
                f"--node-ip={NODE_IP}",
                f"--server-address=127.0.0.1:{p['kwok']}",
                # Without it the standalone binary keeps no node Leases and heartbeats a node's
                # status only every 10-20 minutes; with it: Leases, and a status heartbeat every
                # 20-45 s, so the service sees node updates that do not change capacity.
                "--node-lease-duration-seconds=40",
            ],
            # kwok reads ~/.kwok/kwok.yaml when it exists: pin HOME so a personal config never leaks in.
            env={**os.environ, "HOME": str(self.state_dir)},
        )
        redis_dir = self.state_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        self._add(
            "redis",
            [
                _tool("redis-server"),
                "--bind",
                "127.0.0.1",
                "--port",
                str(p["redis"]),
                "--dir",
                str(redis_dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
        )
        for i in range(self.replicas):
            self._add(f"service-{i}", [*self.service_command, "--config", str(st.config)], env=self._service_env(i))

    def _service_env(self, i: int) -> dict[str, str]:
        # A GPU_QUEUE_* variable in the caller's shell would override the generated config: drop them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_QUEUE_") and k != "KUBECONFIG"}
        package_root = str(Path(webhook.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(x for x in (package_root, env.get("PYTHONPATH", "")) if x)
        env.update(
            PYTHONUNBUFFERED="1",
            POD_NAME=f"gpu-queue-{i}",
            POD_NAMESPACE=SERVICE_NAMESPACE,
            GPU_QUEUE_SERVER__PORT=str(self._ports[f"service-{i}"]),
            GPU_QUEUE_SERVER__METRICSPORT=str(self._ports[f"service-{i}-metrics"]),
        )
        return env

    def _add(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.procs[name] = ManagedProcess(name, argv, self.log_path(name), env=env, cwd=self.state_dir)

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

    # ------------------------------------------------------------------------------ waits

    async def _http_ok(
        self, url: str, ssl_ctx: ssl.SSLContext | bool = True, want: Callable[[str], bool] | None = None
    ) -> bool:
        timeout = aiohttp.ClientTimeout(total=2)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, ssl=ssl_ctx) as resp,
        ):
            text = await resp.text()
            return resp.status == 200 and (want is None or want(text))

    async def _wait_etcd(self) -> None:
        url = self.state.etcd_url + "/health"
        await self.procs["etcd"].wait_until(
            lambda: self._http_ok(url, want=lambda t: '"health":"true"' in t.replace(" ", "")), self.timeout
        )

    async def _wait_apiserver(self) -> None:
        # /readyz turns 200 after every post-start hook (bootstrap RBAC roles, system namespaces).
        ctx = self._admin_ssl()
        url = self.state.apiserver_url + "/readyz"
        await self.procs["kube-apiserver"].wait_until(lambda: self._http_ok(url, ctx), self.timeout)

    async def _server_version(self) -> str:
        async with self.kube() as kube:
            return str((await kube.get("/version")).get("gitVersion", ""))

    async def _wait_scheduler(self) -> None:
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # its self-signed serving cert, on 127.0.0.1
        url = f"https://127.0.0.1:{self._ports['scheduler']}/readyz"
        await self.procs["kube-scheduler"].wait_until(lambda: self._http_ok(url, insecure), self.timeout)

    async def _wait_kwok(self) -> None:
        url = f"http://127.0.0.1:{self._ports['kwok']}/healthz"
        await self.procs["kwok"].wait_until(lambda: self._http_ok(url), self.timeout)

    async def _wait_nodes_ready(self) -> None:
        async with self.kube() as kube:

            async def ready() -> bool:
                for name in (GPU_NODE, CPU_NODE):
                    node = await kube.get(f"/api/v1/nodes/{name}")
                    conditions = node.get("status", {}).get("conditions") or []
                    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                        return False
                return True

            await self.procs["kwok"].wait_until(ready, self.timeout, "did not make the fake nodes Ready")

    async def _redis_ping(self) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", self._redis_port())
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            return (await asyncio.wait_for(reader.readline(), 2)).startswith(b"+PONG")
        finally:
            writer.close()

    def _redis_port(self) -> int:
        return int(self.state.redis_url.rsplit(":", 1)[1].split("/", 1)[0])

    async def _wait_redis(self) -> None:
        await self.procs["redis"].wait_until(self._redis_ping, self.timeout)

    async def _wait_service(self, i: int) -> None:
        svc = self.state.services[i]
        tls = ssl.create_default_context(cafile=str(self.state.ca_file))

        async def ready() -> bool:
            return await self._http_ok(svc.metrics_url + "/readyz") and await self._http_ok(svc.url + "/healthz", tls)

        await self.procs[f"service-{i}"].wait_until(ready, self.timeout, "did not become ready")

    # --------------------------------------------------------------------------- objects

    async def _create_objects(self) -> None:
        async with self.kube() as kube:
            await asyncio.gather(
                *(
                    kube.create("/api/v1/namespaces", manifests.namespace(ns))
                    for ns in (HUB_NAMESPACE, SERVICE_NAMESPACE)
                ),
                kube.create("/api/v1/nodes", manifests.gpu_node(GPU_NODE, self.slices)),
                kube.create("/api/v1/nodes", manifests.cpu_node(CPU_NODE)),
            )
            rbac = manifests.rbac(HUB_NAMESPACE, SERVICE_NAMESPACE, SERVICE_ACCOUNT)
            await asyncio.gather(*(kube.create(path, obj) for path, obj in rbac))

    async def point_webhooks_at(self, i: int) -> None:
        """Register (or re-point) both webhook configurations at replica ``i``'s URL."""
        cfg = self.service_config
        url, ca = self.api_url(i), self.state.ca_file.read_bytes()
        api = "/apis/admissionregistration.k8s.io/v1"
        name = manifests.WEBHOOK_CONFIG_NAME
        async with self.kube() as kube:
            await kube.apply(
                f"{api}/mutatingwebhookconfigurations/{name}",
                manifests.mutating_webhook_configuration(url, ca, [HUB_NAMESPACE], cfg.pod_selector),
            )
            await kube.apply(
                f"{api}/validatingwebhookconfigurations/{name}",
                manifests.validating_webhook_configuration(url, ca, [HUB_NAMESPACE], cfg.pod_selector),
            )
        self.state.webhook_replica = i
        self._save()

    async def _probe_webhook(self) -> None:
        """A dry-run pod create in the hub namespace: the API server must reach the webhook over TLS.

        A denial by the webhook still proves the wiring; only a failed call is an error. The
        configurations are read through an informer, so the first dry-run may not see them yet:
        retry until the webhook is seen to answer.
        """
        cfg = self.service_config
        profile = next((n for n, p in cfg.profiles.items() if p.pool is None), cfg.default_profile or "")
        pod = manifests.probe_pod(HUB_NAMESPACE, cfg.pod_selector, cfg.profile_label, profile)
        proc = self.procs[f"service-{self.state.webhook_replica}"]
        last = ""
        async with self.kube() as kube:

            async def answered() -> bool:
                nonlocal last
                try:
                    created = await kube.create(f"/api/v1/namespaces/{HUB_NAMESPACE}/pods", pod, dry_run=True)
                except KubeError as exc:
                    last = exc.message
                    return "failed calling webhook" not in exc.message
                last = ""
                annotations = created.get("metadata", {}).get("annotations") or {}
                # Until the API server's webhook informer has the configuration, nothing patches.
                containers = created.get("spec", {}).get("containers") or [{}]
                return bool(containers[0].get("resources")) or any(k.startswith(cfg.prefix) for k in annotations)

            try:
                await proc.wait_until(answered, self.timeout, "was not called by the API server")
            except DevClusterError as exc:
                answer = last or "(no error, but the pod was not mutated)"
                raise DevClusterError(f"{exc}\nlast API server answer: {answer}") from None

    # --------------------------------------------------------------------------- control

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

    def kill_service(self, i: int, sig: signal.Signals = signal.SIGKILL) -> None:
        """Crash replica ``i`` (SIGKILL: no lease release, no drain). ``sig=SIGTERM`` is a clean stop."""
        proc = self.procs[f"service-{i}"]
        if sig is signal.SIGKILL:
            proc.kill()
        else:
            proc.stop(self.timeout)

    async def start_service(self, i: int) -> None:
        """(Re)start replica ``i`` on its port and wait until it is ready."""
        with self._step(f"starting service replica {i}"):
            self.procs[f"service-{i}"].start()
            self._save()
            await self._wait_service(i)

    def redis_kill(self) -> None:
        """SIGKILL Redis: every key is lost (it keeps nothing on disk), as in a real outage."""
        self.procs["redis"].kill()

    async def redis_start(self) -> None:
        """Start an empty Redis on the same port."""
        self.procs["redis"].start()
        self._save()
        await self._wait_redis()

    async def redis_flush(self) -> None:
        """FLUSHALL: a clean queue state between tests (the service rebuilds from the pods)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self._redis_port())
        try:
            writer.write(b"FLUSHALL\r\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 5)
        finally:
            writer.close()
        if not line.startswith(b"+OK"):
            raise DevClusterError(f"redis FLUSHALL answered {line!r}")

    async def restart_apiserver(self, grace: float = 2.0) -> None:
        """Stop the API server and start it on the same port (same certificates, same data).

        SIGTERM first, SIGKILL after ``grace`` seconds: with clients still watching, its graceful
        shutdown waits for idle connections up to its request timeout (60 s), which a test need not.
        """
        proc = self.procs["kube-apiserver"]
        proc.stop(grace)
        proc.start()
        self._save()
        await self._wait_apiserver()

    async def set_gpu_slices(self, n: int) -> None:
        """What the NVIDIA device plugin does after ``replicas: n``: the node's GPU capacity changes."""
        path = f"/api/v1/nodes/{GPU_NODE}/status"
        async with self.kube() as kube:
            await kube.merge_patch(path, manifests.gpu_slices_patch(n))
            deadline = time.monotonic() + self.timeout
            while True:
                node = await kube.get(f"/api/v1/nodes/{GPU_NODE}")
                if node.get("status", {}).get("allocatable", {}).get(manifests.GPU_RESOURCE) == str(n):
                    break
                if time.monotonic() >= deadline:
                    raise DevClusterError(f"node {GPU_NODE} does not show {n} GPU slices")
                await asyncio.sleep(POLL_SECONDS)
        self.state.slices = n
        self._save()

    async def clean_hub_namespace(self, within: float | None = None) -> None:
        """Delete every pod (grace 0) and Event in the hub namespace and wait until the pods are gone."""
        ns_path = f"/api/v1/namespaces/{HUB_NAMESPACE}"
        async with self.kube() as kube:
            await kube.delete(f"{ns_path}/pods", params={"gracePeriodSeconds": "0"})
            await kube.delete(f"{ns_path}/events")
            deadline = time.monotonic() + (within or self.timeout)
            while True:
                left = [p["metadata"]["name"] for p in (await kube.get(f"{ns_path}/pods")).get("items", [])]
                if not left:
                    return
                if time.monotonic() >= deadline:
                    raise DevClusterError(f"pods in {HUB_NAMESPACE} not gone after deletion: {', '.join(left)}")
                await asyncio.sleep(POLL_SECONDS)

    async def revive(self) -> list[str]:
        """Start again whatever is not running (after a fault test), in dependency order; the names."""
        order = ["etcd", "redis", "kube-apiserver", "kube-scheduler", "kwok"]
        order += [n for n in self.procs if n.startswith("service-")]
        waits: dict[str, Callable[[], Awaitable[None]]] = {
            "etcd": self._wait_etcd,
            "redis": self._wait_redis,
            "kube-apiserver": self._wait_apiserver,
            "kube-scheduler": self._wait_scheduler,
            "kwok": self._wait_kwok,
        }
        revived: list[str] = []
        for name in order:
            proc = self.procs.get(name)
            if proc is None or proc.alive():
                continue
            with self._step(f"restarting {name}"):
                proc.start()
                self._save()
                if name.startswith("service-"):
                    await self._wait_service(int(name.removeprefix("service-")))
                else:
                    await waits[name]()
            revived.append(name)
        return revived

    def process_alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.alive()

    # ------------------------------------------------------------------------ state file

    @classmethod
    def from_state_dir(cls, state_dir: Path | str) -> DevCluster | None:
        """A handle on a dev cluster started by another process (for ``down`` and ``status``)."""
        state = load_state(Path(state_dir).resolve())
        if state is None:
            return None
        cluster = cls(state.state_dir, slices=state.slices, replicas=len(state.services))
        cluster._state = state
        for name, ps in state.processes.items():
            proc = ManagedProcess(name, ps.argv, ps.log)
            proc.pid, proc.start_time = ps.pid, ps.start_time
            cluster.procs[name] = proc
        return cluster

    def _write_env_file(self) -> None:
        st = self.state
        lines = [f"export KUBECONFIG={st.kubeconfig}"]
        if st.services:
            lines += [
                f"export GPU_QUEUE_API_URL={st.services[st.webhook_replica].url}",
                f"export GPU_QUEUE_CA={st.ca_file}",
                f"export GPU_QUEUE_TOKEN={st.admin_token}",
            ]
        _write(self.state_dir / "env.sh", "\n".join(lines) + "\n", 0o600)
