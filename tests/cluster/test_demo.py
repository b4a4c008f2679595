"""``gpu-queue demo``, run as a user runs it from the README: a subprocess on a fresh state dir.

Pins: exit 0; the ninth user's spawn page line in KubeSpawner's format
(``<time> [Normal] Waiting for a GPU slice: position 1 of 1, ...``); the queue API's answer for the
raw user name with an @ in it; the "GPU slice granted after" line; the summary with every check
passed and the grant latency; plain output (no ANSI) when stdout is not a terminal; no process
left behind. Also: it refuses (exit 2) a state dir where a dev cluster runs, leaving that cluster
alone; it names the missing tools and how to build them (exit 2); the live table's redraw.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_queue_dev.cluster.procs import group_members, pid_matches, proc_start_time
from gpu_queue_dev.cluster.state import DevState, ProcessState, load_state, save_state
from gpu_queue_dev.demo import GPU_USERS, NINTH_USER, Screen, cast_for
from tests.helpers.cluster import require_cluster_tools

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT = 240  # a cold start on a loaded two-core machine: well under this


def _demo(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        check=False,
    )


def _leftovers(state_dir: Path) -> dict[str, list[int]]:
    """Processes of the demo's cluster still alive, by name (from the state file it wrote)."""
    state = load_state(state_dir)
    if state is None:
        return {}
    left = {name: group_members(p.pid) for name, p in state.processes.items()}
    return {name: pids for name, pids in left.items() if pids}


def test_demo_plays_the_seed_story_and_leaves_nothing_behind(tmp_path: Path) -> None:
    require_cluster_tools()
    state_dir = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "webhook.cli", "demo", "--pace", "0", "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        out, err = proc.communicate(timeout=DEMO_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the demo's own teardown, as Ctrl-C
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"the demo did not finish within {DEMO_TIMEOUT}s:\n{out[-3000:]}\n{err[-2000:]}")
    finally:
        left = _leftovers(state_dir)
        if left:
            subprocess.run(
                [sys.executable, "-m", "webhook.cli", "dev", "down", "--state-dir", str(state_dir)],
                capture_output=True,
                timeout=60,
                cwd=REPO,
                check=False,
            )
    assert not left, f"the demo left processes behind: {left}"
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-4000:]}\n{err[-2000:]}"

    # The user's view: the spawn page line, as KubeSpawner's progress() formats an Event.
    assert re.search(r"\d{4}-\d\d-\d\dT[\d:.]+Z \[Normal\] Waiting for a GPU slice: position 1 of 1, ", out), out
    assert re.search(r"\[Normal\] GPU slice granted after \d+s", out), out
    # The queue API, asked by the raw hub user name (the @ travels percent-encoded).
    assert "GET /api/v1/users/ines%40physics.example.edu" in out
    assert f'"user": "{NINTH_USER}"' in out and '"state": "queued"' in out and '"position": 1,' in out
    # The live table, as plain snapshots: the ninth queued, then holding; the leaver logged out.
    assert re.search(rf"^{re.escape(NINTH_USER)} +GPU Enabled +queued #1 ", out, re.M), out
    assert re.search(rf"^{re.escape(NINTH_USER)} +GPU Enabled +holding +kwok-gpu-0 ", out, re.M), out
    assert re.search(r"^dmitri +GPU Enabled +logged out ", out, re.M), out
    assert re.search(r"^jonas +CPU Only +running +kwok-cpu-0 ", out, re.M), out
    assert "bob.smith" in out
    # The summary: what happened, the latency, every check.
    assert "summary" in out
    assert re.search(r"grant latency \(logout to slice granted\): \d+ ms", out), out
    assert re.search(r"result: all 7 checks passed", out), out
    assert "[FAILED]" not in out and "[not run]" not in out
    assert "stopped the dev cluster" in out
    assert "\x1b[" not in out, "no ANSI escapes when stdout is not a terminal"


def test_demo_refuses_a_state_dir_where_a_cluster_runs(tmp_path: Path) -> None:
    """The demo needs its own cluster: it names the running one and how to stop it, and leaves it be."""
    state_dir = tmp_path / "dev"
    state_dir.mkdir()
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        save_state(
            DevState(
                state_dir=state_dir,
                apiserver_url="https://127.0.0.1:1",
                etcd_url="http://127.0.0.1:2",
                redis_url="redis://127.0.0.1:3/0",
                kubeconfig=state_dir / "kubeconfig",
                service_kubeconfig=state_dir / "service.kubeconfig",
                config=state_dir / "config.yaml",
                ca_file=state_dir / "ca.crt",
                cluster_ca_file=state_dir / "cluster-ca.crt",
                read_token="r",
                admin_token="a",
                hub_namespace="jhub",
                service_namespace="gpu-queue",
                gpu_node="kwok-gpu-0",
                cpu_node="kwok-cpu-0",
                slices=8,
                services=[],
                processes={
                    "etcd": ProcessState(
                        name="etcd",
                        pid=stand_in.pid,
                        start_time=proc_start_time(stand_in.pid),
                        argv=["etcd"],
                        log=state_dir / "etcd.log",
                    )
                },
            )
        )
        result = _demo("--pace", "0", "--state-dir", str(state_dir))
        assert result.returncode == 2, result.stdout + result.stderr
        assert "already running" in result.stderr
        assert f"gpu-queue dev down --state-dir {state_dir}" in result.stderr
        assert "--state-dir DIR" in result.stderr
        assert pid_matches(stand_in.pid, proc_start_time(stand_in.pid)), "the running cluster must be left alone"
    finally:
        stand_in.kill()
        stand_in.wait()


def test_demo_names_missing_tools(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "GPU_QUEUE_TOOLS_BIN": str(empty), "PATH": str(Path(sys.executable).parent)}
    result = _demo("--state-dir", str(tmp_path / "dev"), env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    for tool in ("etcd", "kube-apiserver", "kube-scheduler", "kwok"):
        assert tool in result.stderr
    assert "make setup" in result.stderr and "tools/build.sh" in result.stderr
    assert not (tmp_path / "dev").exists(), "nothing is started or written before the tools are there"


def test_live_screen_redraws_the_table_in_place() -> None:
    """On a terminal the table is erased (cursor up over its lines, clear) before narration and
    drawn again below it; elsewhere the table only appears as snapshots, once per change."""
    live = io.StringIO()
    screen = Screen(live, live=True)
    screen.table("HEAD\nrow 1\nrow 2")
    screen.say("step 1")
    assert live.getvalue() == "HEAD\nrow 1\nrow 2\n\x1b[3A\r\x1b[Jstep 1\nHEAD\nrow 1\nrow 2\n"

    plain = io.StringIO()
    screen = Screen(plain, live=False)
    screen.table("HEAD\nrow 1")
    screen.say("step 1")
    screen.snapshot()
    screen.snapshot()
    screen.table("HEAD\nrow 2")
    screen.snapshot()
    assert plain.getvalue() == "step 1\nHEAD\nrow 1\n\nHEAD\nrow 2\n\n"


def test_cast_has_a_user_per_slice() -> None:
    assert cast_for(8).gpu == GPU_USERS
    assert any("." in u for u in GPU_USERS) and "@" in NINTH_USER
    big = cast_for(10)
    assert len(big.gpu) == 10 and len(set(big.gpu)) == 10 and big.leaver in big.gpu
    assert cast_for(1).leaver == cast_for(1).gpu[0]
