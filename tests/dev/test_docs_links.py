"""The docs' relative links and images point at files that exist, and the screenshots in
``docs/images`` are the steps the browser tests take (``tests/e2e/test_hub_story.py`` on kind,
``tests/cluster/test_waiting_room.py`` on a real hub), so a renamed step or a deleted picture fails
here instead of showing a broken page."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s#]+)(?:#[^)]*)?\)")


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted(REPO.glob("*/README.md"))]


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(path.read_text()) if not re.match(r"[a-z]+:", t)]


def test_every_relative_link_and_image_in_the_docs_exists() -> None:
    missing = [
        f"{path.relative_to(REPO)} -> {target}"
        for path in markdown_files()
        for target in relative_links(path)
        if not (path.parent / target).exists()
    ]
    assert not missing, missing


def test_the_docs_screenshots_are_steps_the_browser_test_takes() -> None:
    story = (REPO / "tests" / "e2e" / "test_hub_story.py").read_text()
    steps = set(re.findall(r'\.shot\("([^"]+)"\)', story))
    shown = {t for t in relative_links(REPO / "docs" / "users.md") if t.startswith("images/hub-")}
    assert shown, "docs/users.md shows no screenshot of the hub"
    unknown = [t for t in shown if Path(t).stem.removeprefix("hub-") not in steps]
    assert not unknown, f"screenshots no step of tests/e2e/test_hub_story.py takes: {unknown}"


def test_the_waiting_room_screenshots_are_steps_of_its_browser_test() -> None:
    tests = ("test_waiting_room.py", "test_policies_cluster.py")  # the waiting room, its fair-use notes
    test = "".join((REPO / "tests" / "cluster" / name).read_text() for name in tests)
    steps = set(re.findall(r'\.shot\("([^"]+)"\)', test))
    shown = {
        t
        for t in relative_links(REPO / "docs" / "users.md")
        if t.startswith("images/waiting-room-") and not t.startswith("images/waiting-room-kind-")
    }
    assert shown, "docs/users.md shows no screenshot of the waiting room"
    unknown = [t for t in shown if Path(t).stem not in steps]
    assert not unknown, f"screenshots no step of {' or '.join(tests)} takes: {unknown}"


def test_the_waiting_rooms_kind_screenshots_are_steps_of_its_kind_test() -> None:
    test = (REPO / "tests" / "e2e" / "test_waiting_room_kind.py").read_text()
    steps = set(re.findall(r'\.shot\("([^"]+)"\)', test))
    shown = {t for t in relative_links(REPO / "docs" / "users.md") if t.startswith("images/waiting-room-kind-")}
    assert shown, "docs/users.md shows no screenshot of the waiting room on kind"
    unknown = [t for t in shown if Path(t).stem.removeprefix("waiting-room-kind-") not in steps]
    assert not unknown, f"screenshots no step of tests/e2e/test_waiting_room_kind.py takes: {unknown}"
