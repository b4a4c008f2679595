"""The product package stands alone: it imports nothing of the development tooling, the product's
unit tests do not either, and the image's build context yields a wheel with the product only."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


# The one crossing: ``gpu-queue dev|demo`` hands over to the dev package's CLI when it is installed.
HAND_OVER = {"webhook/cli.py": ["gpu_queue_dev.cli"]}


@pytest.mark.parametrize("tree", ["webhook", "tests/unit"])
def test_product_and_its_unit_tests_never_import_the_dev_package(tree: str) -> None:
    found = {
        str(path.relative_to(ROOT)): sorted(n for n in _imports(path) if n.split(".")[0] == "gpu_queue_dev")
        for path in sorted((ROOT / tree).rglob("*.py"))
    }
    assert {k: v for k, v in found.items() if v} == {k: v for k, v in HAND_OVER.items() if k.startswith(tree)}


def _docker_context(dest: Path) -> list[str]:
    """Copy what .dockerignore lets into the build context (its form: ignore all, then ``!`` names)."""
    allowed = [
        line[1:].strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!") and line[1:].strip()
    ]
    for name in allowed:
        src = ROOT / name
        if src.is_dir():
            subprocess.run(["cp", "-r", str(src), str(dest / name)], check=True)
        else:
            (dest / name).write_bytes(src.read_bytes())
    return allowed


def test_the_image_wheel_carries_the_product_only(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    assert sorted(_docker_context(context)) == ["README.md", "pyproject.toml", "setup.py", "webhook"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=context,
        check=True,
    )
    (wheel,) = tmp_path.glob("gpu_queue-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[0] for name in names}
    assert {p for p in packages if not p.endswith(".dist-info")} == {"webhook"}
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "gpu-queue = webhook.cli:main" in text
    assert "gpu_queue_dev" not in text, text
