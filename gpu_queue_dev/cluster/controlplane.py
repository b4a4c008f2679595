"""The control plane's processes: etcd, kube-apiserver, kube-scheduler, kwok and Redis, their command
lines and their health checks.

They run as local processes (no Docker), the way controller-runtime's envtest runs them, so the API
server really calls the webhook over TLS, really enforces RBAC and scheduling-gate rules, and
really serves watches. kwok plays the kubelet of the fake nodes.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path

import aiohttp
import yaml

from gpu_queue_dev.cluster import manifests
from gpu_queue_dev.cluster.pki import Pki
from gpu_queue_dev.cluster.procs import DevClusterError, ManagedProcess
from gpu_queue_dev.cluster.state import DevState, write_file
from gpu_queue_dev.tools import find_tool

# The binaries a dev cluster runs; helm renders the service's RBAC and webhooks from the chart.
CLUSTER_TOOLS = ("etcd", "kube-apiserver", "kube-scheduler", "kwok", "redis-server", "helm")
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
POD_CIDR = "10.244.0.1/16"
NODE_IP = "10.0.1.1"

LogPath = Callable[[str], Path]


def missing_cluster_tools() -> list[str]:
    """The binaries a dev cluster needs that are not built (``tools/build.sh``) or on PATH."""
    return [name for name in CLUSTER_TOOLS if find_tool(name) is None]


def _tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        raise DevClusterError(f"{name} not found: build the tools with tools/build.sh (or put {name} on PATH)")
    return str(path)


def control_plane(state: DevState, pki: Pki, ports: Mapping[str, int], log_path: LogPath) -> list[ManagedProcess]:
    """etcd, kube-apiserver, kube-scheduler, kwok and redis, defined (not started)."""
    p, d = ports, state.state_dir

    def proc(name: str, argv: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        return ManagedProcess(name, argv, log_path(name), env=env, cwd=d)

    etcd = proc(
        "etcd",
        [
            _tool("etcd"),
            "--name=dev",
            f"--data-dir={d / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{p['etcd']}",
            f"--advertise-client-urls=http://127.0.0.1:{p['etcd']}",
            f"--listen-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
            f"--initial-cluster=dev=http://127.0.0.1:{p['etcd-peer']}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ],
    )
    apiserver = proc(
        "kube-apiserver",
        [
            _tool("kube-apiserver"),
            f"--etcd-servers={state.etcd_url}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p['apiserver']}",
            f"--cert-dir={pki.dir}",
            f"--tls-cert-file={pki.cert('apiserver')}",
            f"--tls-private-key-file={pki.key('apiserver')}",
            f"--client-ca-file={pki.cluster_ca}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={state.apiserver_url}/",
            f"--service-account-key-file={pki.dir / 'sa.pub'}",
            f"--service-account-signing-key-file={pki.key('sa')}",
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
    sched_config = write_file(
        d / "kube-scheduler.yaml",
        yaml.safe_dump(
            {
                "apiVersion": "kubescheduler.config.k8s.io/v1",
                "kind": "KubeSchedulerConfiguration",
                "clientConnection": {"kubeconfig": str(state.kubeconfig)},
                "leaderElection": {"leaderElect": False},
            }
        ),
    )
    scheduler = proc(
        "kube-scheduler",
        [
            _tool("kube-scheduler"),
            f"--config={sched_config}",
            # A secure port (not 0) so start-up can wait on /readyz, which turns ready once the
            # scheduler's informers have synced; /readyz is on the always-allowed paths.
            "--bind-address=127.0.0.1",
            f"--secure-port={p['scheduler']}",
        ],
    )
    kwok = proc(
        "kwok",
        [
            _tool("kwok"),
            f"--kubeconfig={state.kubeconfig}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={manifests.KWOK_ANNOTATION}={manifests.KWOK_ANNOTATION_VALUE}",
            f"--cidr={POD_CIDR}",
            f"--node-ip={NODE_IP}",
            f"--server-address=127.0.0.1:{p['kwok']}",
            # Without it the standalone binary keeps no node Leases and heartbeats a node's status
            # only every 10-20 minutes; with it: Leases, and a status heartbeat every 20-45 s, so
            # the service sees node updates that do not change capacity.
            "--node-lease-duration-seconds=40",
        ],
        # kwok reads ~/.kwok/kwok.yaml when it exists: pin HOME so a personal config never leaks in.
        env={**os.environ, "HOME": str(d)},
    )
    redis_dir = d / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    redis = proc(
        "redis",
        [_tool("redis-server"), "--bind", "127.0.0.1", "--port", str(p["redis"]), "--dir", str(redis_dir),
         "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
    )  # fmt: skip
    return [etcd, apiserver, scheduler, kwok, redis]


# ------------------------------------------------------------------------------ health


async def http_ok(url: str, ssl_ctx: ssl.SSLContext | bool = True, want: Callable[[str], bool] | None = None) -> bool:
    """One GET: 200 (and ``want`` of the body, if given)."""
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url, ssl=ssl_ctx) as resp:
        text = await resp.text()
        return resp.status == 200 and (want is None or want(text))


async def wait_etcd(proc: ManagedProcess, etcd_url: str, within: float) -> None:
    def healthy(text: str) -> bool:
        return '"health":"true"' in text.replace(" ", "")

    await proc.wait_until(lambda: http_ok(etcd_url + "/health", want=healthy), within)


async def wait_apiserver(proc: ManagedProcess, apiserver_url: str, admin_ssl: ssl.SSLContext, within: float) -> None:
    # /readyz turns 200 after every post-start hook (bootstrap RBAC roles, system namespaces).
    await proc.wait_until(lambda: http_ok(apiserver_url + "/readyz", admin_ssl), within)


async def wait_scheduler(proc: ManagedProcess, port: int, within: float) -> None:
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # its self-signed serving cert, on 127.0.0.1
    await proc.wait_until(lambda: http_ok(f"https://127.0.0.1:{port}/readyz", insecure), within)


async def wait_kwok(proc: ManagedProcess, port: int, within: float) -> None:
    await proc.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), within)


async def redis_command(port: int, command: bytes, within: float = 2.0) -> bytes:
    """One inline command to the local Redis; its first answer line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(command + b"\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), within)
    finally:
        writer.close()


async def wait_redis(proc: ManagedProcess, port: int, within: float) -> None:
    async def pong() -> bool:
        return (await redis_command(port, b"PING")).startswith(b"+PONG")

    await proc.wait_until(pong, within)
