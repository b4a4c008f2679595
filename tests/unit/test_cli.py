"""``gpu-queue dev`` and ``gpu-queue demo`` belong to the development package: without it (the
image, a plain install) they say how to get it instead of failing with a traceback."""

from __future__ import annotations

import sys

import pytest

from webhook.cli import main


@pytest.mark.parametrize(("argv", "target"), [(["dev", "up"], "make setup"), (["demo", "--keep"], "make demo")])
def test_dev_commands_without_the_dev_package_say_how_to_install_it(
    argv: list[str], target: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "gpu_queue_dev.cli", None)  # as if the package were not installed
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"`gpu-queue {argv[0]}` is development tooling" in err
    assert "pip install -e '.[dev]'" in err and target in err


def test_the_product_commands_are_listed_with_the_dev_ones_marked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("serve", "config", "certs", "status", "queue"):
        assert command in out
    assert "needs the dev extra" in out
