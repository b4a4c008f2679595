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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in the file, type-checking imports too:
    the direction of imports is the architecture, whether or not Python would run into the loop)."""
    files = {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for imported in _imports(path):
            while imported and imported not in files:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                targets.add(imported)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("package", ["webhook", "gpu_queue_dev"])
def test_no_import_cycles(package: str) -> None:
    assert _cycles(_import_graph(package)) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_gpu_queue_dev_and_demo_hand_over_to_the_dev_package(capsys: pytest.CaptureFixture[str]) -> None:
    from webhook.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["demo", "--help"])
    assert exited.value.code == 0
    assert "--pace SECONDS" in capsys.readouterr().out
