"""Pods as KubeSpawner builds them, read from a recording, so the product's unit tests need neither
the development package nor a hub.

``tests/unit/data/kubespawner-pods.json`` is made by ``python -m gpu_queue_dev.spawnerpods record``
with the KubeSpawner version zero-to-jupyterhub ships; ``tests/dev/test_spawnerpods.py`` fails as
soon as the installed KubeSpawner would build any of them differently.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

RECORDING = Path(__file__).resolve().parents[1] / "unit" / "data" / "kubespawner-pods.json"


@functools.cache
def recording() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RECORDING.read_text())
    return data


def profile_list() -> list[dict[str, Any]]:
    """The profileList the recorded pods were built from (the docs' seed profiles)."""
    return copy.deepcopy(recording()["profileList"])


async def spawner_pod(
    user: str, profile: str | None = "gpu-enabled", server: str = "", *, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A fresh copy of the pod KubeSpawner builds for ``user``'s ``server`` with ``profile`` chosen
    and ``extra`` traits set (async, the signature of the builder it stands for)."""
    wanted = {"user": user, "profile": profile, "server": server, "extra": extra or {}}
    for case in recording()["cases"]:
        if all(case[k] == v for k, v in wanted.items()):
            return copy.deepcopy(case["pod"])
    raise LookupError(
        f"no recorded KubeSpawner pod for {wanted}: add the case to {RECORDING.name} and run "
        f"`python -m gpu_queue_dev.spawnerpods record {RECORDING.relative_to(RECORDING.parents[2])}`"
    )
