"""The pure parts of the Kueue comparison (``bench/peer.py``): the order, percentile, ratio and
histogram maths its figures rest on, the metric parsing, and what it sends Kueue. Kueue itself is
not needed (the bench runs it; these do not)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("peer_bench", ROOT / "bench" / "peer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pydantic resolve annotations through it
    spec.loader.exec_module(module)
    return module


peer = _load()


# ------------------------------------------------------------------------------ order


def test_no_inversion_when_granted_in_arrival_order() -> None:
    assert peer.inversions([(1, 10), (2, 11), (3, 12), (4, 13)]) == 0


def test_every_pair_inverted_when_granted_in_reverse() -> None:
    pods = [(i, 100 - i) for i in range(30)]
    assert peer.inversions(pods) == peer.pairs(30) == 435


def test_one_overtake_is_one_inversion_per_pod_overtaken() -> None:
    # c (created third) is granted before a and b: two pairs out of order, (a, b) is not.
    assert peer.inversions([(1, 20), (2, 21), (3, 5)]) == 2
    # The input order does not matter, only the keys.
    assert peer.inversions([(3, 5), (1, 20), (2, 21)]) == 2


def test_ties_are_not_inversions() -> None:
    assert peer.inversions([(1, 7), (2, 7), (2, 3)]) == 1


def test_arrival_stamps_order_by_time_whatever_the_zone_spelling() -> None:
    early, late = peer.parse_stamp("2026-12-01T21:00:00.000002Z"), peer.parse_stamp("2026-12-01T22:00:00.000001+01:00")
    assert late < early


# ------------------------------------------------------------------------------ percentiles and ratios


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert peer.percentile(values, 0.5) == 50
    assert peer.percentile(values, 0.95) == 95
    assert peer.percentile(values, 0.99) == 99
    assert peer.percentile(values, 1.0) == 100
    assert peer.percentile([42.0], 0.99) == 42
    assert math.isnan(peer.percentile([], 0.5))


def test_dist_reports_milliseconds_and_count() -> None:
    dist = peer.Dist.of([10.0, 20.0, 30.0, 40.0])
    assert (dist.n, dist.p50_ms, dist.p95_ms, dist.max_ms) == (4, 20.0, 40.0, 40.0)
    assert peer.Dist.of([]).p50_ms is None


def test_ratio_is_ours_over_kueues_and_undefined_without_a_denominator() -> None:
    assert peer.ratio(2.0, 4.0) == 0.5
    assert peer.ratio(1500.0, 100.0) == 15.0
    assert peer.ratio(0.0, 5.0) == 0.0
    assert peer.ratio(1.0, 0.0) is None
    assert peer.ratio(None, 3.0) is None
    assert peer.ratio(3.0, None) is None
    assert peer.ratio(math.nan, 3.0) is None


def test_histogram_quantile_interpolates_within_a_bucket() -> None:
    buckets = {0.005: 0.0, 0.025: 10.0, 0.1: 10.0, math.inf: 10.0}
    assert peer.histogram_quantile(0.5, buckets) == pytest.approx(0.015)
    assert peer.histogram_quantile(0.99, buckets) == pytest.approx(0.0248)
    # In +Inf: the largest finite bound; no observations: NaN.
    assert peer.histogram_quantile(0.99, {0.1: 1.0, math.inf: 10.0}) == 0.1
    assert math.isnan(peer.histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}))


# ------------------------------------------------------------------------------ metrics


def _request(verb: str, resource: str, value: int, group: str = "", sub: str = "", dry: str = "") -> str:
    labels = f'code="201",component="apiserver",dry_run="{dry}",group="{group}",resource="{resource}",'
    labels += f'scope="resource",subresource="{sub}",verb="{verb}",version="v1"'
    return f"apiserver_request_total{{{labels}}} {value}"


def _webhook(name: str, kind: str, le: str, value: int, rejected: str = "false") -> str:
    labels = f'name="{name}",operation="CREATE",rejected="{rejected}",type="{kind}",le="{le}"'
    return f"apiserver_admission_webhook_admission_duration_seconds_bucket{{{labels}}} {value}"


METRICS = "\n".join(
    [
        "# HELP apiserver_request_total [STABLE] Counter of apiserver requests",
        "# TYPE apiserver_request_total counter",
        _request("POST", "pods", 40),
        _request("POST", "pods", 3, dry="All"),
        _request("PATCH", "pods", 12, sub="status"),
        _request("LIST", "pods", 99),
        _request("POST", "workloads", 8, group="kueue.x-k8s.io"),
        _webhook("mpod.kb.io", "admit", "0.005", 1),
        _webhook("mpod.kb.io", "admit", "+Inf", 4),
        _webhook("mpod.kb.io", "admit", "+Inf", 1, rejected="true"),
        _webhook('v\\"odd\\"', "validating", "+Inf", 2),
        'etcd_request_duration_seconds_bucket{le="+Inf"} 5',
    ]
)


def test_writes_are_counted_by_resource_without_reads_or_dry_runs() -> None:
    samples = peer.parse_samples(METRICS, (peer.REQUESTS, peer.WEBHOOK_SECONDS))
    assert peer.write_counts(samples) == {
        "core/pods": 40.0,
        "core/pods/status": 12.0,
        "kueue.x-k8s.io/workloads": 8.0,
    }


def test_counter_delta_keeps_what_grew() -> None:
    before = {"core/pods": 40.0, "core/events": 3.0}
    after = {"core/pods": 52.0, "core/events": 3.0, "kueue.x-k8s.io/workloads": 8.0}
    assert peer.counter_delta(after, before) == {"core/pods": 12, "kueue.x-k8s.io/workloads": 8}


def test_webhook_buckets_sum_the_series_of_one_webhook_and_type() -> None:
    buckets = peer.webhook_buckets(peer.parse_samples(METRICS, (peer.WEBHOOK_SECONDS,)))
    assert buckets[("mpod.kb.io", "admit")] == {0.005: 1.0, math.inf: 5.0}
    assert buckets[('v"odd"', "validating")] == {math.inf: 2.0}  # escaped label values
    assert peer.bucket_delta({0.005: 3.0, math.inf: 9.0}, {0.005: 1.0, math.inf: 5.0}) == {0.005: 2.0, math.inf: 4.0}


def test_cpu_seconds_from_proc_stat_with_an_awkward_process_name() -> None:
    fields = ["S", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", str(3 * peer.CLK_TCK), str(peer.CLK_TCK)]
    line = "4242 (kueue (x) y) " + " ".join(fields + ["0"] * 30)
    assert peer.cpu_seconds_of(line) == 4.0
    assert peer.rss_mib_of("Name:\tkueue\nVmRSS:\t   51200 kB\n") == 50.0


# ------------------------------------------------------------------------------ what Kueue gets


def _hook(name: str, groups: list[str], resources: list[str], path: str) -> dict[str, Any]:
    return {
        "name": name,
        "admissionReviewVersions": ["v1"],
        "clientConfig": {"service": {"name": "webhook-service", "namespace": "system", "path": path}},
        "rules": [{"apiGroups": groups, "apiVersions": ["v1"], "operations": ["CREATE"], "resources": resources}],
        "sideEffects": "None",
    }


def test_kueue_webhooks_keep_pods_and_kueues_kinds_called_by_url() -> None:
    docs = [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "mutating-webhook-configuration"},
            "webhooks": [
                _hook("mpod.kb.io", [""], ["pods"], "/mutate--v1-pod"),
                _hook("mjob.kb.io", ["batch"], ["jobs"], "/mutate-batch-v1-job"),
                _hook("mworkload.kb.io", ["kueue.x-k8s.io"], ["workloads"], "/mutate-kueue-x-k8s-io-v1beta2-workload"),
            ],
        },
        {"kind": "Service", "metadata": {"name": "ignored"}},
    ]
    (config,) = peer.kueue_webhooks(docs, "https://127.0.0.1:9443/", b"CA", "jhub")
    assert config["metadata"]["name"] == "kueue-mutating-webhook-configuration"
    hooks = {h["name"]: h for h in config["webhooks"]}
    assert set(hooks) == {"mpod.kb.io", "mworkload.kb.io"}
    assert hooks["mpod.kb.io"]["clientConfig"] == {"url": "https://127.0.0.1:9443/mutate--v1-pod", "caBundle": "Q0E="}
    selector = hooks["mpod.kb.io"]["namespaceSelector"]["matchExpressions"][0]
    assert (selector["operator"], selector["values"]) == ("In", ["jhub"])
    assert "namespaceSelector" not in hooks["mworkload.kb.io"]
    assert docs[0]["webhooks"][0]["clientConfig"]["service"]["path"] == "/mutate--v1-pod"  # input untouched


def test_kueue_config_changes_only_what_a_local_process_needs() -> None:
    shipped = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "leaderElection": {"leaderElect": True},
        "clientConnection": {"qps": 50, "burst": 100},
        "integrations": {"frameworks": ["batch/job", "pod", "deployment"]},
    }
    cfg = peer.kueue_config(shipped, {"health": 1, "metrics": 2, "webhook": 3}, Path("/certs"))
    assert cfg["integrations"] == {"frameworks": ["pod"]}
    assert cfg["webhook"] == {"host": "127.0.0.1", "port": 3, "certDir": "/certs"}
    assert cfg["internalCertManagement"] == {"enable": False}
    assert cfg["featureGates"]["VisibilityOnDemand"] is False
    assert cfg["leaderElection"] == {"leaderElect": True, "resourceNamespace": "kueue-system"}
    assert cfg["clientConnection"] == shipped["clientConnection"]
    assert shipped["integrations"]["frameworks"] == ["batch/job", "pod", "deployment"]


def test_the_cluster_queue_is_strict_fifo_with_8_gpus_and_covers_every_requested_resource() -> None:
    (_, flavor), (_, cq), (lq_path, lq) = peer.kueue_queues("jhub")
    spec = cq["spec"]
    assert spec["queueingStrategy"] == "StrictFIFO"
    (group,) = spec["resourceGroups"]
    assert group["coveredResources"] == ["cpu", "memory", "nvidia.com/gpu"]
    quotas = {r["name"]: r["nominalQuota"] for r in group["flavors"][0]["resources"]}
    assert quotas["nvidia.com/gpu"] == 8
    assert group["flavors"][0]["name"] == flavor["metadata"]["name"]
    assert lq["spec"]["clusterQueue"] == cq["metadata"]["name"] and lq_path.endswith("/namespaces/jhub/localqueues")


async def test_kueues_pod_is_the_kubespawner_pod_with_gpu_queues_resources_and_the_queue_label() -> None:
    from gpu_queue_dev.spawnerpods import pod_manifest
    from webhook.config import load_config

    config = load_config(None, env={})
    template = await pod_manifest("template", "gpu-enabled")
    pod = peer.kueue_template(template, config)
    assert pod["metadata"]["labels"][peer.QUEUE_LABEL] == peer.LOCAL_QUEUE
    assert not any(g["name"] == config.gate_name for g in pod["spec"].get("schedulingGates") or [])
    assert not any(k.startswith(f"{config.prefix}/") for k in pod["metadata"]["annotations"])
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert str(limits["nvidia.com/gpu"]) == "1"
    alice = peer.personalize(pod, "alice")
    assert alice["metadata"]["name"] == "jupyter-alice"
    assert alice["metadata"]["annotations"]["hub.jupyter.org/username"] == "alice"
    assert pod["metadata"]["name"] == template["metadata"]["name"]  # the template is untouched


# ------------------------------------------------------------------------------ the run


def test_the_run_order_alternates_abba() -> None:
    order = peer.run_order(2, ["gpu-queue", "kueue"])
    assert order == [(0, "gpu-queue"), (0, "kueue"), (1, "kueue"), (1, "gpu-queue")]


def _round(system: str, r: int, first8: list[float], rss: float, error: str | None = None) -> Any:
    return peer.RoundResult(system=system, round=r, position=r, first8_ms=first8, system_rss_idle_mib=rss, error=error)


def test_figures_pool_latencies_average_the_rest_and_leave_failed_rounds_out() -> None:
    rounds = [
        _round("gpu-queue", 0, [1000.0, 1100.0], 100.0),
        _round("kueue", 0, [50.0, 60.0], 40.0),
        _round("kueue", 1, [70.0, 80.0], 60.0),
        _round("gpu-queue", 1, [1200.0, 1300.0], 120.0),
        _round("gpu-queue", 2, [9e9], 9e9, error="BenchError: boom"),
    ]
    figures = peer.figures(rounds)
    p50 = figures["first8_create_to_ungated_p50_ms"]
    assert (p50.gpu_queue, p50.kueue) == (1100.0, 60.0)
    assert p50.ratio == round(1100 / 60, 3)
    rss = figures["rss_idle"]
    assert (rss.gpu_queue, rss.kueue, rss.ratio) == (110.0, 50.0, 2.2)
    assert rss.gpu_queue_range == [100.0, 120.0] and rss.kueue_range == [40.0, 60.0]
    assert figures["order_paced_inversions"].gpu_queue is None  # no round measured it
