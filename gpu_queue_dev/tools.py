"""Where the Go-built tools (kube-apiserver, kube-scheduler, etcd, kwok, helm) live.

``tools/build.sh`` builds them into a cache outside the repository; this module finds them the same
way in ``gpu-queue dev``, the test tiers and the benchmarks.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

TOOLS = ("kube-apiserver", "kube-scheduler", "etcd", "kwok", "helm")


def cache_dir() -> Path:
    """``$GPU_QUEUE_CACHE`` or ``~/.cache/gpu-queue`` (the build script's default)."""
    return Path(os.environ.get("GPU_QUEUE_CACHE") or Path.home() / ".cache" / "gpu-queue")


def bin_dir() -> Path:
    return Path(os.environ.get("GPU_QUEUE_TOOLS_BIN") or cache_dir() / "bin")


def find_tool(name: str) -> Path | None:
    """The cached build first, then ``PATH``; None when neither has it."""
    candidate = bin_dir() / name
    if candidate.exists() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def missing_tools(names: tuple[str, ...] = TOOLS) -> list[str]:
    """Names of the tools not found: the reason a cluster test skips, and what to build."""
    return [name for name in names if find_tool(name) is None]
