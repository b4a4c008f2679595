"""``DevCluster``: a real local control plane with fake GPU nodes, Redis, and the service.

etcd, kube-apiserver, kube-scheduler and kwok run as local processes (``controlplane``); the
service runs as N ``gpu-queue serve`` replicas (``service``) under its own identity, a client
certificate for the chart's ServiceAccount (``pki``); its ServiceAccount, RBAC and webhook
configurations are the chart's, from ``helm template`` (``chart``), created with the namespaces
and fake nodes (``bootstrap``, ``manifests``).

Process management is synchronous (``Popen``; signals), network waits are async and open their
own connections per call, so one object works from the CLI (``asyncio.run``), from a sync pytest
session fixture, and from async tests running in any event loop.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from gpu_queue_dev.cluster import chart, controlplane, manifests
from gpu_queue_dev.cluster.controlplane import missing_cluster_tools
from gpu_queue_dev.cluster.handle import ClusterHandle, Progress
from gpu_queue_dev.cluster.procs import DevClusterError, ManagedProcess, free_ports, pid_matches
from gpu_queue_dev.cluster.service import ServiceConfig, service_process, wait_service
from gpu_queue_dev.cluster.state import DevState, ServiceState, load_state

HUB_NAMESPACE = "jhub"
SERVICE_NAMESPACE = "gpu-queue"  # the chart's release namespace: its ServiceAccount lives here
GPU_NODE = "kwok-gpu-0"
CPU_NODE = "kwok-cpu-0"


class DevCluster(ClusterHandle):
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
        super().__init__(state_dir, timeout=timeout, progress=progress)
        self.slices = slices
        self.replicas = replicas
        self.config_file = Path(config).resolve() if config is not None else None
        self.config_overrides = dict(config_overrides or {})
        self.webhook_replica = webhook_replica
        self.service_command = list(service_command or [sys.executable, "-m", "webhook.cli", "serve"])

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

    def _new_state(self) -> DevState:
        names = ["etcd", "etcd-peer", "apiserver", "scheduler", "kwok", "redis"]
        for i in range(self.replicas):
            names += [f"service-{i}", f"service-{i}-metrics"]
        self._ports = p = dict(zip(names, free_ports(len(names)), strict=True))
        services = [
            ServiceState(
                index=i,
                url=f"https://127.0.0.1:{p[f'service-{i}']}",
                metrics_url=f"http://127.0.0.1:{p[f'service-{i}-metrics']}",
            )
            for i in range(self.replicas)
        ]
        return DevState(
            state_dir=self.state_dir,
            kubernetes_version="",
            apiserver_url=f"https://127.0.0.1:{p['apiserver']}",
            etcd_url=f"http://127.0.0.1:{p['etcd']}",
            redis_url=f"redis://127.0.0.1:{p['redis']}/0",
            kubeconfig=self.state_dir / "kubeconfig",
            service_kubeconfig=self.state_dir / "service.kubeconfig",
            config=self.state_dir / "config.yaml",
            ca_file=self._certs.webhook_ca,
            cluster_ca_file=self._certs.cluster_ca,
            read_token=secrets.token_urlsafe(24),
            admin_token=secrets.token_urlsafe(24),
            hub_namespace=HUB_NAMESPACE,
            service_namespace=SERVICE_NAMESPACE,
            gpu_node=GPU_NODE,
            cpu_node=CPU_NODE,
            slices=self.slices,
            webhook_replica=self.webhook_replica,
            services=services,
        )

    async def _configure(self) -> chart.ServiceChart:
        """Certificates, the chart's objects for this cluster, and the service's config file."""
        st, certs = self.state, self._certs
        webhook_ca = certs.make_webhook_pki()
        config = ServiceConfig(self.config_file, self.config_overrides)
        url = self.api_url(self.webhook_replica) if self.replicas else ""
        values = chart.chart_values([HUB_NAMESPACE], config.pod_selector(), url, webhook_ca if url else None)
        rendered = await chart.render(values, SERVICE_NAMESPACE)
        if rendered.config.get("serviceAccount") != rendered.service_user:
            raise DevClusterError(
                f"the chart's config names {rendered.config.get('serviceAccount')} as the service, "
                f"but its ServiceAccount is {rendered.service_user}"
            )
        rendered.save(self.chart_objects)
        sa_namespace, _ = rendered.service_account
        certs.make_cluster_pki(
            st.apiserver_url,
            service_user=rendered.service_user,
            service_groups=["system:serviceaccounts", f"system:serviceaccounts:{sa_namespace}"],
            kubeconfig=st.kubeconfig,
            service_kubeconfig=st.service_kubeconfig,
        )
        self._service_config = config.write(st, certs, self._ports, rendered.config)
        return rendered

    async def _start(self, started: float) -> None:
        from gpu_queue_dev.cluster import bootstrap  # the Kubernetes client: only once starting

        self._prepare_dir()
        self._state = self._new_state()
        with self._step("chart, configuration and certificates"):
            rendered = await self._configure()
        for proc in controlplane.control_plane(self.state, self._certs, self._ports, self.log_path):
            self.procs[proc.name] = proc
        for i in range(self.replicas):
            self.procs[f"service-{i}"] = service_process(
                i, self.service_command, self.state, self._ports, self.log_path
            )

        # etcd and Redis have no dependencies: start both, then the API server as soon as etcd is up.
        self.procs["etcd"].start()
        self.procs["redis"].start()
        self._save()
        with self._step("starting etcd"):
            await self._wait("etcd")
        self.procs["kube-apiserver"].start()
        self._save()
        with self._step("starting kube-apiserver"):
            await self._wait("kube-apiserver")
            async with self.kube() as kube:
                self.state.kubernetes_version = await bootstrap.server_version(kube)
        self.procs["kube-scheduler"].start()
        self.procs["kwok"].start()
        self._save()
        with self._step("creating namespaces, fake nodes and the chart's RBAC"):
            nodes = [manifests.gpu_node(GPU_NODE, self.slices), manifests.cpu_node(CPU_NODE)]
            async with self.kube() as kube:
                await bootstrap.create_objects(kube, rendered, (HUB_NAMESPACE, SERVICE_NAMESPACE), nodes)
        with self._step("starting redis"):
            await self._wait("redis")
        for i in range(self.replicas):
            self.procs[f"service-{i}"].start()
        self._save()
        waits: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("starting kube-scheduler", self._wait("kube-scheduler")),
            ("starting kwok (fake kubelets)", self._wait("kwok")),
            ("fake nodes Ready", self._wait_nodes_ready()),
        ]
        waits += [(f"starting service replica {i}", self._wait(f"service-{i}")) for i in range(self.replicas)]
        await self._gather_steps(waits)
        if self.replicas:
            with self._step(f"registering the chart's webhooks (replica {self.webhook_replica})"):
                await self.point_webhooks_at(self.webhook_replica)
                proc = self.procs[f"service-{self.webhook_replica}"]
                async with self.kube() as kube:
                    await bootstrap.probe_webhook(kube, self.service_config, HUB_NAMESPACE, proc, self.timeout)
        self.state.startup_seconds = round(time.monotonic() - started, 2)
        self._save()
        self._write_env_file()
        self._say(f"dev cluster up in {self.state.startup_seconds:.1f}s")

    async def _gather_steps(self, waits: list[tuple[str, Coroutine[Any, Any, None]]]) -> None:
        """Run the waits concurrently, each reported as it finishes; the first failure raises."""

        async def one(what: str, coro: Coroutine[Any, Any, None]) -> None:
            with self._step(what):
                await coro

        tasks = [asyncio.ensure_future(one(what, coro)) for what, coro in waits]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------------------ waits

    async def _wait(self, name: str) -> None:
        """Until process ``name`` is healthy (it must be running)."""
        proc, st, p, within = self.procs[name], self.state, self._ports, self.timeout
        if name.startswith("service-"):
            i = int(name.removeprefix("service-"))
            await wait_service(proc, st.services[i], st.ca_file, within)
        elif name == "etcd":
            await controlplane.wait_etcd(proc, st.etcd_url, within)
        elif name == "kube-apiserver":
            await controlplane.wait_apiserver(proc, st.apiserver_url, self._admin_ssl(), within)
        elif name == "kube-scheduler":
            await controlplane.wait_scheduler(proc, p["scheduler"], within)
        elif name == "kwok":
            await controlplane.wait_kwok(proc, p["kwok"], within)
        elif name == "redis":
            await controlplane.wait_redis(proc, self._redis_port(), within)
        else:
            raise DevClusterError(f"no health check for {name}")

    async def _wait_nodes_ready(self) -> None:
        from gpu_queue_dev.cluster import bootstrap

        async with self.kube() as kube:
            await bootstrap.wait_nodes_ready(kube, self.procs["kwok"], (GPU_NODE, CPU_NODE), self.timeout)

    def _redis_port(self) -> int:
        return int(self.state.redis_url.rsplit(":", 1)[1].split("/", 1)[0])

    # --------------------------------------------------------------------------- control

    async def point_webhooks_at(self, i: int) -> None:
        """Register (or re-point) the chart's two webhook configurations at replica ``i``'s URL."""
        from gpu_queue_dev.cluster import bootstrap

        webhooks = chart.webhooks_at(chart.load_webhooks(self.chart_objects), self.api_url(i))
        async with self.kube() as kube:
            await bootstrap.apply_objects(kube, webhooks)
        self.state.webhook_replica = i
        self._save()

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
            await self._wait(f"service-{i}")

    def redis_kill(self) -> None:
        """SIGKILL Redis: every key is lost (it keeps nothing on disk), as in a real outage."""
        self.procs["redis"].kill()

    async def redis_start(self) -> None:
        """Start an empty Redis on the same port."""
        self.procs["redis"].start()
        self._save()
        await self._wait("redis")

    async def redis_flush(self) -> None:
        """FLUSHALL: a clean queue state between tests (the service rebuilds from the pods)."""
        line = await controlplane.redis_command(self._redis_port(), b"FLUSHALL", 5)
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
        await self._wait("kube-apiserver")

    async def set_gpu_slices(self, n: int) -> None:
        """What the NVIDIA device plugin does after ``replicas: n``: the node's GPU capacity changes."""
        from gpu_queue_dev.cluster import bootstrap

        async with self.kube() as kube:
            await bootstrap.set_gpu_slices(kube, GPU_NODE, n, self.timeout)
        self.state.slices = n
        self._save()

    async def set_node_ready(self, ready: bool, node: str = GPU_NODE) -> None:
        """What a kubelet that stops (or resumes) reporting and the node lifecycle controller do to
        a node: its Ready condition and the not-ready taints. kwok is restarted around the change
        and leaves the node alone while it is NotReady (it would mark it Ready at its next
        heartbeat); the pods on it stay as they are, as on a node whose kubelet went away."""
        from gpu_queue_dev.cluster import bootstrap

        kwok = self.procs["kwok"]
        with self._step(f"marking {node} {'Ready' if ready else 'NotReady'}"):
            kwok.stop(self.timeout)
            async with self.kube() as kube:
                if ready:
                    # kwok takes the node back first; only then do the taints go, so no pod is
                    # granted a slice of a node whose fake kubelet is not running it yet.
                    await bootstrap.manage_node(kube, node)
                else:
                    await bootstrap.set_node_ready(kube, node, ready, self.timeout)
                await bootstrap.forget_node_leases(kube, (GPU_NODE, CPU_NODE))
            kwok.start()
            self._save()
            await self._wait("kwok")
            if ready:
                async with self.kube() as kube:
                    await bootstrap.wait_node_lease(kube, node, self.timeout)
                    await bootstrap.set_node_ready(kube, node, ready, self.timeout)
        if ready:
            await self._wait_nodes_ready()

    async def clean_hub_namespace(self, within: float | None = None) -> None:
        """Delete every pod (grace 0) and Event in the hub namespace and wait until the pods are gone."""
        from gpu_queue_dev.cluster import bootstrap

        async with self.kube() as kube:
            await bootstrap.clean_namespace(kube, HUB_NAMESPACE, within or self.timeout)

    async def revive(self) -> list[str]:
        """Start again whatever is not running (after a fault test), in dependency order; the names."""
        order = ["etcd", "redis", "kube-apiserver", "kube-scheduler", "kwok"]
        order += [n for n in self.procs if n.startswith("service-")]
        revived: list[str] = []
        for name in order:
            proc = self.procs.get(name)
            if proc is None or proc.alive():
                continue
            with self._step(f"restarting {name}"):
                proc.start()
                self._save()
                await self._wait(name)
            revived.append(name)
        return revived

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
