"""Render the Helm chart with a real ``helm`` binary: shared by the chart tests and the cluster tier
(which applies what this returns to a real control plane)."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from gpu_queue_dev.tools import find_tool

CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "gpu-queue"
RELEASE = "gpu-queue"
NAMESPACE = "gpu-queue"
# The chart's minimum (scheduling gates are GA in 1.30); helm built with `go install` would
# otherwise assume v1.20 and refuse the chart's kubeVersion.
KUBE_VERSION = "1.30.0"


class HelmError(Exception):
    """helm failed; the message is helm's stderr."""


def helm_path() -> Path | None:
    """The helm binary (tools/build.sh's cache, then PATH), or None."""
    return find_tool("helm")


def _helm(args: Sequence[str], *, timeout: float = 120) -> str:
    helm = helm_path()
    if helm is None:
        raise HelmError("helm not found: build it with tools/build.sh or put it on PATH")
    done = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise HelmError(done.stderr.strip() or done.stdout.strip())
    return done.stdout


def _values_file(values: Mapping[str, Any], directory: str) -> str:
    path = Path(directory) / "values.yaml"
    path.write_text(yaml.safe_dump(dict(values), sort_keys=False))
    return str(path)


def render_chart(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    kube_version: str = KUBE_VERSION,
    extra_args: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """``helm template`` the chart with ``values``; every rendered object, hooks included, in order.

    Raises HelmError (helm's message) when the chart refuses the values.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = _helm(
            [
                "template",
                release,
                str(CHART_DIR),
                "--namespace",
                namespace,
                "--kube-version",
                kube_version,
                "--values",
                _values_file(values or {}, tmp),
                *extra_args,
            ]
        )
    return [doc for doc in yaml.safe_load_all(out) if doc]


def lint_chart(values: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE) -> str:
    """``helm lint --strict``; returns its output, raises HelmError on failure."""
    with tempfile.TemporaryDirectory() as tmp:
        return _helm(
            [
                "lint",
                str(CHART_DIR),
                "--strict",
                "--namespace",
                namespace,
                "--kube-version",
                KUBE_VERSION,
                "--values",
                _values_file(values or {}, tmp),
            ]
        )


def find(objects: Sequence[Mapping[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """The rendered objects of a kind (and name)."""
    return [
        dict(obj)
        for obj in objects
        if obj.get("kind") == kind and (name is None or obj.get("metadata", {}).get("name") == name)
    ]


def one(objects: Sequence[Mapping[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The single rendered object of a kind (and name); AssertionError when not exactly one."""
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, rendered {len(found)}"
    return found[0]


def is_hook(obj: Mapping[str, Any]) -> bool:
    return "helm.sh/hook" in (obj.get("metadata", {}).get("annotations") or {})
