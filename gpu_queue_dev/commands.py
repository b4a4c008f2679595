"""``gpu-queue dev up|down|status``: a local control plane with fake GPU nodes, no Docker needed.

``up`` starts the processes and exits, leaving them running; the state file in ``--state-dir``
lets ``down`` and ``status`` (and the tests) find them again.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gpu_queue_dev.cluster import DevCluster, DevClusterError, DevState, missing_cluster_tools
from gpu_queue_dev.cluster.procs import pid_matches


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_up(args: argparse.Namespace) -> int:
    missing = missing_cluster_tools()
    if missing:
        _err(
            f"error: missing tools: {', '.join(missing)}\n"
            "build them once with: tools/build.sh   (from the repository; a cold build takes 15-30 minutes)"
        )
        return 2
    cluster = DevCluster(
        Path(args.state_dir),
        slices=args.slices,
        replicas=args.replicas,
        config=args.config,
        progress=lambda line: _err(f"  {line}"),
    )
    _err(f"starting a dev cluster in {cluster.state_dir}")
    try:
        asyncio.run(cluster.start())
    except DevClusterError as exc:
        _err(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        cluster.stop()
        _err("interrupted; stopped what was started")
        return 130
    print(describe(cluster.state))
    return 0


def run_down(args: argparse.Namespace) -> int:
    cluster = DevCluster.from_state_dir(args.state_dir)
    if cluster is None:
        _err(f"no dev cluster in {args.state_dir} (no state file)")
        return 0
    for name, what in cluster.stop().items():
        print(f"{name:<16} {what}")
    print(f"logs and data are kept in {cluster.state_dir}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    cluster = DevCluster.from_state_dir(args.state_dir)
    if cluster is None:
        _err(f"no dev cluster in {args.state_dir}; start one with: gpu-queue dev up --state-dir {args.state_dir}")
        return 3
    state = cluster.state
    alive = {name: pid_matches(p.pid, p.start_time) for name, p in state.processes.items()}
    print(describe(state, alive))
    return 0 if alive and all(alive.values()) else 1


def describe(state: DevState, alive: dict[str, bool] | None = None) -> str:
    """The processes, the addresses, and how to use them."""
    lines = [f"dev cluster in {state.state_dir} (Kubernetes {state.kubernetes_version or '?'})", ""]
    for name, proc in state.processes.items():
        status = "" if alive is None else ("running" if alive.get(name) else "NOT RUNNING")
        lines.append(f"  {name:<16} pid {proc.pid:<8} {status:<12} {proc.url:<28} log {proc.log}")
    lines.append("")
    lines.append(f"  hub namespace {state.hub_namespace}; nodes {state.gpu_node} ({state.slices} nvidia.com/gpu), "
                 f"{state.cpu_node}")  # fmt: skip
    if state.services:
        api = state.services[state.webhook_replica].url
        lines.append(f"  webhooks call replica {state.webhook_replica} ({api})")
    lines += [
        "",
        "use it:",
        f"  export KUBECONFIG={state.kubeconfig}",
        f"  kubectl get nodes   # admin; the service's own identity is {state.service_kubeconfig}",
    ]
    if state.services:
        lines.append(
            f"  gpu-queue status --api {state.services[state.webhook_replica].url} --ca {state.ca_file} "
            f"--token {state.admin_token}"
        )
        lines.append(f"  read-only token: {state.read_token}")
    lines.append(f"  gpu-queue dev down --state-dir {state.state_dir}")
    if state.startup_seconds:
        lines.append(f"  (started in {state.startup_seconds:.1f}s)")
    return "\n".join(lines)
