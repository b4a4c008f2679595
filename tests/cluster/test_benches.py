"""The benches the performance page quotes still run and measure what they say (small sizes: the
figures themselves are for a quiet machine, never asserted here)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]


def _bench(name: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / name), *args], capture_output=True, text=True, timeout=200, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_scale_bench_runs_a_leading_pass_over_every_size() -> None:
    result = _bench("scale.py", "--sizes", "50,100", "--queues", "100,200", "--samples", "10")
    sizes = [(c["pods"], c["queued"], c["events_queued_by_the_pass"]) for c in result["controller"]]
    assert sizes == [(50, 10, 10), (100, 20, 20)], "the leader pass tells every queued pod its position"
    assert all(c["memory"]["cache_kept_mib"] > 0 for c in result["controller"])
    assert [p["queued"] for p in result["positions"]] == [100, 200]


def test_service_memory_bench_measures_the_real_replica_before_and_after_a_restart() -> None:
    result = _bench("service_memory.py", "--pods", "300", "--queued", "40")
    stages = [result[s] for s in ("no_pods", "after_creates", "after_restart")]
    assert all(0 < s["rss_mib"] <= s["peak_mib"] for s in stages), stages
    assert result["after_creates"]["peak_mib"] >= result["no_pods"]["peak_mib"], "the high-water mark only rises"
    assert result["goal"]["peak_mib"] == max(result["after_creates"]["peak_mib"], result["after_restart"]["peak_mib"])


def test_service_memory_reads_proc_status_and_the_pending_gauge() -> None:
    spec = importlib.util.spec_from_file_location("service_memory_bench", ROOT / "bench" / "service_memory.py")
    assert spec is not None and spec.loader is not None
    service_memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(service_memory)
    status = "Name:\tpython\nVmHWM:\t   90112 kB\nVmRSS:\t   65536 kB\nThreads:\t3\n"
    assert service_memory.memory_mib(status) == {"peak_mib": 88.0, "rss_mib": 64.0}
    metrics = 'gpu_queue_pending_workloads{pool="cpu"} 3.0\ngpu_queue_pending_workloads{pool="gpu"} 992.0\n'
    assert service_memory.pending_gauge(metrics) == 992.0
    assert service_memory.pending_gauge(metrics, "none") is None
