"""The kind tier's JupyterHub: installed by ``scripts/kind-hub.sh`` the way zero-to-jupyterhub
deploys it, reached on the worker node's address at ``proxy-public``'s node port (kind's nodes are
containers on a network of this host), removed afterwards; and where its tests keep screenshots."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.e2e.browser import User
from tests.e2e.kind import REPO

HUB_NAMESPACE = "jhub"


@contextlib.contextmanager
def installed_hub(**env: str) -> Iterator[str]:
    """The hub's URL while it is installed; ``env``: the script's settings (``CULL_TIMEOUT``,
    ``STOCK_PAGES``...)."""
    kubeconfig = os.environ["GPU_QUEUE_E2E_KUBECONFIG"]
    cluster = os.environ["GPU_QUEUE_E2E_CLUSTER"]
    environment = {**os.environ, "KUBECONFIG": kubeconfig, **env}
    script = str(REPO / "scripts" / "kind-hub.sh")
    subprocess.run([script, "--install", cluster], check=True, env=environment)
    kubectl = ["kubectl", "--kubeconfig", kubeconfig]
    address = subprocess.run(
        [*kubectl, "get", "node", os.environ["GPU_QUEUE_E2E_GPU_NODE"], "-o",
         "jsonpath={.status.addresses[?(@.type=='InternalIP')].address}"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    port = subprocess.run(
        [*kubectl, "-n", HUB_NAMESPACE, "get", "svc", "proxy-public", "-o", "jsonpath={.spec.ports[0].nodePort}"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    try:
        yield f"http://{address}:{port}"
    finally:
        subprocess.run([script, "--uninstall", cluster], check=False, env=environment)


def shots_folder(name: str) -> Path:
    """``$GPU_QUEUE_E2E_ARTIFACTS/<name>`` (CI keeps it), created."""
    root = Path(os.environ.get("GPU_QUEUE_E2E_ARTIFACTS") or REPO / ".e2e-artifacts") / name
    root.mkdir(parents=True, exist_ok=True)
    return root


async def keep_evidence(pages: Mapping[str, User], shots: Path) -> None:
    """On a failure: every open page as a screenshot, the hub namespace's pods, Events and the hub's
    log, next to the step screenshots."""
    for name, user in pages.items():
        with contextlib.suppress(Exception):
            await user.page.screenshot(path=str(shots / f"failure-{name}.png"))
            (shots / f"failure-{name}.url").write_text(user.page.url)
    kubectl = ["kubectl", "--kubeconfig", os.environ["GPU_QUEUE_E2E_KUBECONFIG"], "-n", HUB_NAMESPACE]
    for what, args in {
        "pods": ["get", "pods,pvc", "-o", "wide"],
        "events": ["get", "events", "--sort-by=.lastTimestamp"],
        "hub-log": ["logs", "deploy/hub", "--tail=300"],
    }.items():
        result = subprocess.run([*kubectl, *args], capture_output=True, text=True, check=False)
        (shots / f"failure-{what}.txt").write_text(result.stdout + result.stderr)
