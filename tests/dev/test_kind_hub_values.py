"""The kind hub's values (tools/kind-hub/merge_values.py): the docs' values mount the waiting room's
templates and point the hub at them, and STOCK_PAGES' ``--unset`` takes only that pointer away."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MERGE = REPO / "tools" / "kind-hub" / "merge_values.py"
FILES = [
    "hub.extraFiles.gpu-queue-hub.stringData=webhook/hub.py",
    "hub.extraFiles.gpu-queue-ca.stringData=README.md",
    "hub.extraFiles.gpu-queue-spawn-pending.stringData=webhook/hub_templates/spawn_pending.html",
    "hub.extraFiles.gpu-queue-home.stringData=webhook/hub_templates/home.html",
]


def merged(*extra: str) -> tuple[int, dict[str, Any], str]:
    args = [sys.executable, str(MERGE), "values", "-f", "docs/z2jh-values.yaml", "-f", "tools/kind-hub/values.yaml"]
    for item in FILES:
        args += ["--set-file", item]
    result = subprocess.run([*args, *extra], cwd=REPO, capture_output=True, text=True, check=False)
    return result.returncode, (yaml.safe_load(result.stdout) if result.returncode == 0 else {}), result.stderr


def test_the_docs_values_mount_both_templates_where_template_paths_looks() -> None:
    code, values, err = merged()
    assert code == 0, err
    hub = values["hub"]
    folder = "/usr/local/etc/jupyterhub/gpu-queue-templates"
    assert hub["extraFiles"]["gpu-queue-spawn-pending"]["mountPath"] == f"{folder}/spawn_pending.html"
    assert hub["extraFiles"]["gpu-queue-home"]["mountPath"] == f"{folder}/home.html"
    assert hub["extraFiles"]["gpu-queue-home"]["stringData"] == (REPO / "webhook/hub_templates/home.html").read_text()
    assert folder in hub["extraConfig"]["gpu-queue-templates"]
    spawner = hub["config"]["QueueAwareKubeSpawner"]
    slugs = {p["slug"] for p in values["singleuser"]["profileList"]}
    assert spawner["queue_fallback_profile"] in slugs, "the fallback is one of the docs' profiles"


def test_unset_takes_away_the_template_paths_and_nothing_else() -> None:
    code, values, err = merged("--unset", "hub.extraConfig.gpu-queue-templates")
    assert code == 0, err
    assert "gpu-queue-templates" not in values["hub"]["extraConfig"]
    assert "gpu-queue" in values["hub"]["extraConfig"], "the spawner's own config stays"
    assert "gpu-queue-spawn-pending" in values["hub"]["extraFiles"]


@pytest.mark.parametrize("key", ["hub.extraConfig.no-such-snippet", "no.such.path"])
def test_unset_of_a_value_that_is_not_there_is_an_error(key: str) -> None:
    code, _, err = merged("--unset", key)
    assert code != 0 and f"--unset {key}: no such value" in err
