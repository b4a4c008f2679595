"""gpu-queue side by side with Kueue (issue 14): the same GPU spawns through each, on the same machine,
in one run, so the figures compare.

Each round starts a fresh local control plane per system (real etcd, kube-apiserver, kube-scheduler,
kwok fake nodes: one GPU node with ``nvidia.com/gpu: 8``) and alternates the order (gpu-queue,
Kueue, Kueue, gpu-queue, ...), so drift on a shared machine falls on both alike:

- gpu-queue: the dev cluster as ``gpu-queue dev`` runs it (the service and Redis, the chart's RBAC
  and webhooks), with the shipped controller timings (the dev cluster's faster ones are undone);
- Kueue v0.17.0 (``tools/build-kueue.sh``): its CRDs, kube-controller-manager with only the
  garbage collector (a deleted pod's Workload must go before its quota frees), Kueue as a local
  process with its shipped configuration except: the plain-Pod integration only, webhook and probes
  on 127.0.0.1 with a certificate made here (internal cert management off), the visibility API off.
  A ResourceFlavor, a StrictFIFO ClusterQueue (``nvidia.com/gpu`` 8, cpu and memory far above
  what 8 pods ask) and a LocalQueue in the hub namespace.

Both get the pod a real KubeSpawner builds for the GPU profile (``gpu_queue_dev.spawnerpods``);
Kueue's copy has the queue-name label and the resources gpu-queue's admission would set.
Scenarios, per system and round: idle, first 8 (create -> ungated with a free slice), release
(delete a holder -> the next pod ungated, ``--cycles`` times with ``--waiting`` or more waiting),
order (``--order-pods`` creates 100 ms apart, then at once: inversions among granted pairs),
re-spawn (a queued user deletes and re-creates their pod), storm (``--storm`` creates,
``--in-flight`` at a time: the API server's own webhook latency), with an idle window before and
one with pods waiting. Through all of it: the systems' RSS, their CPU seconds per scenario (from
/proc) and the API server's write counter, each scenario's window closing once the API server is
quiet again (the same rule for both: the work a scenario set off is in its window).

    python bench/peer.py [--quick] [--rounds 2] [--cycles 20] [--storm 500] ...

One JSON object on stdout (``PeerResult``), progress on stderr. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import json
import math
import os
import re
import shutil
import ssl
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import jsonpatch
import yaml
from pydantic import BaseModel, ConfigDict, Field

from gpu_queue_dev.cluster import HUB_NAMESPACE, DevCluster, chart, missing_cluster_tools
from gpu_queue_dev.cluster.controlplane import http_ok
from gpu_queue_dev.cluster.pki import client_ssl_context
from gpu_queue_dev.cluster.procs import ManagedProcess, free_ports, stop_groups
from gpu_queue_dev.cluster.service import DEV_CONFIG_DEFAULTS
from gpu_queue_dev.cluster.state import write_file
from gpu_queue_dev.spawnerpods import pod_manifest
from gpu_queue_dev.tools import cache_dir, find_tool
from tests.invariants import Buckets
from tests.invariants import quantile as histogram_quantile
from webhook.admission import mutate, parse_review
from webhook.certs import make_ca, make_serving_cert
from webhook.config import Config, default_config_text, load_config

KUEUE_VERSION = "v0.17.0"
KUEUE_GATE = "kueue.x-k8s.io/admission"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_NAMESPACE = "kueue-system"
LOCAL_QUEUE = "gpu-users"
CLUSTER_QUEUE = "gpu"
FLAVOR = "default-flavor"
SLICES = 8
SYSTEMS = ("gpu-queue", "kueue")
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})
REQUESTS = "apiserver_request_total"
WEBHOOK_SECONDS = "apiserver_admission_webhook_admission_duration_seconds"
WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
KUEUE_API = "/apis/kueue.x-k8s.io/v1beta2"
CLK_TCK = os.sysconf("SC_CLK_TCK")

Obj = dict[str, Any]


class BenchError(Exception):
    """A step of the bench failed; the message says which and why."""


def say(line: str) -> None:
    print(f"[peer {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ pure maths


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the value at rank ceil(q*n)); NaN without values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def inversions(pods: Sequence[tuple[int, int]]) -> int:
    """Pairs out of arrival order: (created, granted) keys per pod; a pair counts when the pod
    created first was granted second. n(n-1)/2 pairs at most; ties are no inversion."""
    count = 0
    for i, (created_a, granted_a) in enumerate(pods):
        for created_b, granted_b in pods[i + 1 :]:
            if (created_a - created_b) * (granted_a - granted_b) < 0:
                count += 1
    return count


def parse_stamp(value: str) -> datetime:
    """An RFC 3339 time as the API server and gpu-queue write them (``Z`` or an offset)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def pairs(n: int) -> int:
    return n * (n - 1) // 2


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """ours / theirs, None where undefined (a side missing, or theirs 0)."""
    if ours is None or theirs is None or math.isnan(ours) or math.isnan(theirs) or theirs == 0:
        return None
    return round(ours / theirs, 3)


def mean(values: Iterable[float | None]) -> float | None:
    got = [v for v in values if v is not None and not math.isnan(v)]
    return round(sum(got) / len(got), 3) if got else None


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_samples(text: str, prefixes: tuple[str, ...]) -> list[Sample]:
    """The samples of the metrics named ``prefixes*`` from a Prometheus text page (the API
    server's is megabytes; only these lines are parsed)."""
    out: list[Sample] = []
    for line in text.splitlines():
        if not line.startswith(prefixes):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = {k: _unescape(v) for k, v in _LABEL.findall(match.group(2) or "")}
        out.append(Sample(match.group(1), labels, float(match.group(3))))
    return out


def resource_key(labels: Mapping[str, str]) -> str:
    group = labels.get("group") or "core"
    key = f"{group}/{labels.get('resource', '?')}"
    return f"{key}/{labels['subresource']}" if labels.get("subresource") else key


def write_counts(samples: Iterable[Sample]) -> dict[str, float]:
    """Writes the API server counted (every answer code, dry runs left out), by resource."""
    out: dict[str, float] = {}
    for s in samples:
        if s.name == REQUESTS and s.labels.get("verb") in WRITE_VERBS and not s.labels.get("dry_run"):
            key = resource_key(s.labels)
            out[key] = out.get(key, 0.0) + s.value
    return out


def counter_delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, int]:
    """What grew between two scrapes (counters only grow; zeros left out)."""
    return {k: round(v - before.get(k, 0.0)) for k, v in sorted(after.items()) if round(v - before.get(k, 0.0)) > 0}


def webhook_buckets(samples: Iterable[Sample]) -> dict[tuple[str, str], Buckets]:
    """The API server's webhook latency buckets by (webhook name, type admit/validating)."""
    out: dict[tuple[str, str], Buckets] = {}
    for s in samples:
        if s.name == f"{WEBHOOK_SECONDS}_bucket":
            series = out.setdefault((s.labels.get("name", "?"), s.labels.get("type", "?")), {})
            bound = float(s.labels["le"])
            series[bound] = series.get(bound, 0.0) + s.value
    return out


def bucket_delta(after: Mapping[float, float], before: Mapping[float, float]) -> Buckets:
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def add_buckets(into: Buckets, more: Mapping[float, float]) -> Buckets:
    for bound, count in more.items():
        into[bound] = into.get(bound, 0.0) + count
    return into


def cpu_seconds_of(stat_text: str) -> float:
    """utime + stime of a /proc/PID/stat line, in seconds (the name field may hold spaces)."""
    fields = stat_text[stat_text.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib_of(status_text: str) -> float:
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    try:
        return cpu_seconds_of(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return math.nan


def rss_mib(pid: int) -> float:
    try:
        return rss_mib_of(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return math.nan


# ---------------------------------------------------------------------------- the result


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Dist(_Model):
    """Latencies in milliseconds (nearest-rank percentiles)."""

    n: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @classmethod
    def of(cls, ms: Sequence[float]) -> Dist:
        def r(q: float) -> float | None:
            return round(percentile(ms, q), 1) if ms else None

        return cls(n=len(ms), p50_ms=r(0.5), p95_ms=r(0.95), p99_ms=r(0.99), max_ms=r(1.0))


class OrderResult(_Model):
    """Creates in one go, then releases until every pod was granted; creation and grant order are
    the API server's revisions (the create's answer, the first watch event without a gate)."""

    mode: str = Field(description="paced (100 ms apart) or concurrent")
    pods: int
    granted: int
    pairs: int
    inversions: int
    stamp_inversions: int | None = Field(
        None, description="gpu-queue only: against its own arrival stamp (requested-at, ties by name), I2"
    )
    max_in_use: int


class RespawnResult(_Model):
    """8 holders, ``waiters`` queued 1.1 s apart; the one at ``position_before`` deletes and re-creates
    its pod (same user, same name); then the holders leave one by one."""

    waiters: int
    position_before: int
    granted_rank: int | None = Field(description="its place in the grant order among the waiters")
    kept_place: bool | None


class ScenarioCost(_Model):
    """What one scenario cost: CPU seconds per process (from /proc/PID/stat), the API server's
    write counter (POST/PUT/PATCH/DELETE/APPLY, any answer) and the bench's own share of it."""

    seconds: float
    cpu_s: dict[str, float]
    system_cpu_s: float = Field(description="the system's own processes (Kueue: not the controller-manager)")
    apiserver_writes: int
    bench_writes: int
    other_writes: int = Field(description="everything but the bench's: the system, scheduler, kwok, GC")
    writes_by_resource: dict[str, int]


class WebhookLatency(_Model):
    name: str
    type: str
    pods: bool = Field(description="a webhook on pods (Kueue's others are on its own kinds, e.g. Workloads)")
    calls: int
    p50_ms: float | None
    p99_ms: float | None
    within_100ms: float | None = Field(description="share of calls the API server saw answered within 100 ms")
    buckets: dict[str, float] = Field(description="cumulative delta counts by upper bound, for pooling")


class StormResult(_Model):
    pods: int
    in_flight: int
    failed: int
    create: Dist
    created_s: float
    settled_s: float | None = Field(description="start to 8 holding and every other pod gated")
    webhooks: list[WebhookLatency]


class RoundResult(_Model):
    system: str
    round: int
    position: int = Field(description="its place in the run order")
    startup_s: float | None = None
    first8_ms: list[float] = Field(default_factory=list)
    release_ms: list[float] = Field(default_factory=list)
    release_reaction_ms: list[float] = Field(
        default_factory=list, description="the freed holder's DELETED event -> the next head ungated"
    )
    release_in_order: int | None = None
    release_max_in_use: int | None = None
    order: list[OrderResult] = Field(default_factory=list)
    respawn: RespawnResult | None = None
    storm: StormResult | None = None
    rss_idle_mib: dict[str, float] = Field(default_factory=dict)
    rss_peak_mib: dict[str, float] = Field(default_factory=dict)
    system_rss_idle_mib: float | None = None
    system_rss_peak_mib: float | None = None
    costs: dict[str, ScenarioCost] = Field(default_factory=dict)
    error: str | None = None


class Comparison(_Model):
    unit: str
    gpu_queue: float | None
    kueue: float | None
    ratio: float | None = Field(description="gpu-queue / Kueue")
    gpu_queue_range: list[float] | None = None
    kueue_range: list[float] | None = None
    better: str = "lower"


class PeerResult(_Model):
    benchmark: str = "peer"
    kueue_version: str = KUEUE_VERSION
    kubernetes_version: str = ""
    cpus: int | None
    loadavg_before: list[float]
    loadavg_after: list[float] = Field(default_factory=list)
    options: dict[str, Any]
    run_order: list[str]
    figures: dict[str, Comparison] = Field(default_factory=dict)
    rounds: list[RoundResult] = Field(default_factory=list)
    elapsed_s: float = 0.0
    notes: list[str] = Field(default_factory=list)


# ------------------------------------------------------------------------------ pods


def personalize(template: Obj, user: str) -> Obj:
    """The template as KubeSpawner builds it for ``user`` (name, user label and annotation)."""
    pod = copy.deepcopy(template)
    pod["metadata"]["name"] = f"jupyter-{user}"
    pod["metadata"]["labels"]["hub.jupyter.org/username"] = user
    pod["metadata"]["annotations"]["hub.jupyter.org/username"] = user
    return pod


def kueue_template(template: Obj, config: Config, queue: str = LOCAL_QUEUE) -> Obj:
    """The KubeSpawner pod as Kueue's users would send it: the resources, env and placement
    gpu-queue's admission sets (its pure ``mutate``), without gpu-queue's gate and annotations,
    with Kueue's queue-name label."""
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "peer-bench",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "namespace": template["metadata"].get("namespace", HUB_NAMESPACE),
            "object": template,
        },
    }
    answer = mutate(parse_review(json.dumps(review).encode()), config, datetime.now(UTC))
    if answer.response is None:
        raise BenchError("gpu-queue's mutate gave no answer for the template pod")
    pod: Obj = jsonpatch.apply_patch(copy.deepcopy(template), answer.response.patch_ops())
    gates = [g for g in pod["spec"].get("schedulingGates") or [] if g.get("name") != config.gate_name]
    if gates:
        pod["spec"]["schedulingGates"] = gates
    else:
        pod["spec"].pop("schedulingGates", None)
    annotations = pod["metadata"].get("annotations") or {}
    pod["metadata"]["annotations"] = {k: v for k, v in annotations.items() if not k.startswith(f"{config.prefix}/")}
    pod["metadata"].setdefault("labels", {})[QUEUE_LABEL] = queue
    asked = [c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") for c in pod["spec"]["containers"]]
    if not any(asked):
        raise BenchError("the mutated template asks for no nvidia.com/gpu: the GPU profile changed?")
    return pod


def covers_pods(hook: Obj) -> bool:
    """Whether a webhook is called for core pods."""
    rules = hook.get("rules") or []
    return any("pods" in (r.get("resources") or []) and "" in (r.get("apiGroups") or []) for r in rules)


def kueue_webhooks(docs: Iterable[Obj], base_url: str, ca_pem: bytes, namespace: str) -> list[Obj]:
    """Kueue's shipped webhook configurations cut to what this cluster has (pods and Kueue's own
    kinds), called by URL on 127.0.0.1, the pod webhooks limited to the hub namespace."""
    out: list[Obj] = []
    for doc in docs:
        if not doc or doc.get("kind") not in WEBHOOK_KINDS:
            continue
        hooks: list[Obj] = []
        for hook in doc.get("webhooks") or []:
            pods = covers_pods(hook)
            own = any("kueue.x-k8s.io" in (r.get("apiGroups") or []) for r in hook.get("rules") or [])
            if not (pods or own):
                continue
            hook = copy.deepcopy(hook)
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": base_url.rstrip("/") + path, "caBundle": base64.b64encode(ca_pem).decode()}
            if pods:
                hook["namespaceSelector"] = {
                    "matchExpressions": [
                        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace]}
                    ]
                }
            hooks.append(hook)
        out.append(
            {
                "apiVersion": doc["apiVersion"],
                "kind": doc["kind"],
                "metadata": {"name": f"kueue-{doc['metadata']['name']}"},
                "webhooks": hooks,
            }
        )
    return out


def kueue_queues(namespace: str, gpus: int = SLICES) -> list[tuple[str, Obj]]:
    """(collection path, object): the flavor, a StrictFIFO ClusterQueue whose only binding quota is
    the GPUs (Kueue needs every requested resource covered), the hub namespace's LocalQueue."""
    return [
        (
            f"{KUEUE_API}/resourceflavors",
            {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}},
        ),
        (
            f"{KUEUE_API}/clusterqueues",
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "ClusterQueue",
                "metadata": {"name": CLUSTER_QUEUE},
                "spec": {
                    "namespaceSelector": {},
                    "queueingStrategy": "StrictFIFO",
                    "resourceGroups": [
                        {
                            "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                            "flavors": [
                                {
                                    "name": FLAVOR,
                                    "resources": [
                                        {"name": "cpu", "nominalQuota": "1000"},
                                        {"name": "memory", "nominalQuota": "10000Gi"},
                                        {"name": "nvidia.com/gpu", "nominalQuota": gpus},
                                    ],
                                }
                            ],
                        }
                    ],
                },
            },
        ),
        (
            f"{KUEUE_API}/namespaces/{namespace}/localqueues",
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "LocalQueue",
                "metadata": {"name": LOCAL_QUEUE, "namespace": namespace},
                "spec": {"clusterQueue": CLUSTER_QUEUE},
            },
        ),
    ]


def kueue_config(shipped: Obj, ports: Mapping[str, int], cert_dir: Path) -> Obj:
    """Kueue's shipped manager configuration, changed only where a local process must differ."""
    cfg = copy.deepcopy(shipped)
    cfg["namespace"] = KUEUE_NAMESPACE
    cfg["health"] = {"healthProbeBindAddress": f"127.0.0.1:{ports['health']}"}
    cfg["metrics"] = {"bindAddress": f"127.0.0.1:{ports['metrics']}"}
    cfg["webhook"] = {"host": "127.0.0.1", "port": ports["webhook"], "certDir": str(cert_dir)}
    cfg["internalCertManagement"] = {"enable": False}
    # In a pod the Lease's namespace comes from the service account; out of one it must be named.
    cfg["leaderElection"] = {**(cfg.get("leaderElection") or {}), "resourceNamespace": KUEUE_NAMESPACE}
    cfg["integrations"] = {"frameworks": ["pod"]}
    # The visibility API is an aggregated API server on 0.0.0.0 that needs an APIService: not here.
    cfg["featureGates"] = {**(cfg.get("featureGates") or {}), "VisibilityOnDemand": False}
    return cfg


def shipped_gpu_queue_timings() -> dict[str, Any]:
    """The seed config's controller timings, over the dev cluster's faster test ones."""
    seed = yaml.safe_load(default_config_text())["controller"]
    return {"controller": {k: seed[k] for k in DEV_CONFIG_DEFAULTS["controller"]}}


# ------------------------------------------------------------------------------ API client


class ApiError(BenchError):
    def __init__(self, status: int, what: str, message: str) -> None:
        super().__init__(f"{what}: {status} {message}")
        self.status = status
        self.message = message


class Api:
    """The bench's own client (aiohttp, the admin certificate). It counts its writes, so the API
    server's write counter splits into the bench's and everyone else's."""

    def __init__(self, server: str, ssl_ctx: ssl.SSLContext, limit: int = 128) -> None:
        self.server = server.rstrip("/")
        connector = aiohttp.TCPConnector(ssl=ssl_ctx, limit=limit)
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))
        self.writes = 0

    async def close(self) -> None:
        await self._session.close()

    async def call(
        self, method: str, path: str, body: Obj | None = None, query: Mapping[str, str] | None = None
    ) -> Obj:
        if method != "GET":
            self.writes += 1
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        async with self._session.request(
            method, self.server + path, params=dict(query or {}), data=data, headers=headers
        ) as resp:
            text = await resp.text()
            if resp.status >= 300:
                try:
                    message = json.loads(text).get("message", text)
                except ValueError:
                    message = text
                raise ApiError(resp.status, f"{method} {path}", str(message)[:400])
            result: Obj = json.loads(text) if text else {}
            return result

    async def get_or_none(self, path: str) -> Obj | None:
        try:
            return await self.call("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def text(self, path: str) -> str:
        async with self._session.get(self.server + path) as resp:
            return await resp.text()

    @contextlib.asynccontextmanager
    async def stream(self, path: str, query: Mapping[str, str]) -> AsyncIterator[aiohttp.ClientResponse]:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self._session.get(self.server + path, params=dict(query), timeout=timeout) as resp:
            if resp.status != 200:
                raise ApiError(resp.status, f"watch {path}", (await resp.text())[:400])
            yield resp


# ------------------------------------------------------------------------------ pod watch


@dataclass
class Seen:
    """One pod (by uid) as the watch showed it."""

    uid: str
    name: str
    first_rv: int
    ungated_rv: int | None = None
    ungated_at: float | None = None
    terminating: bool = False
    deleted: bool = False
    gone_at: float | None = None  # the receipt time of its DELETED event
    stamp: str | None = None


@dataclass
class PodWatch:
    """A watch on the hub namespace's pods: when each lost its gates (the receipt time of the event,
    and its revision), which hold a slice now, and the most that ever held one at once."""

    api: Api
    namespace: str
    stamp_annotation: str | None = None
    pods: dict[str, Seen] = field(default_factory=dict)
    uid_of: dict[str, str] = field(default_factory=dict)
    created_rv: dict[str, int] = field(default_factory=dict)
    grants: list[str] = field(default_factory=list)
    holding: set[str] = field(default_factory=set)
    max_in_use: int = 0
    _cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    _task: asyncio.Task[None] | None = None

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods"

    async def start(self) -> None:
        rv = await self._list()
        self._task = asyncio.create_task(self._run(rv))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _list(self) -> str:
        listing = await self.api.call("GET", self._path)
        now = time.perf_counter()
        present = {p["metadata"]["uid"] for p in listing.get("items") or []}
        async with self._cond:
            for pod in listing.get("items") or []:
                self._apply(pod, now, deleted=False)
            for uid, seen in self.pods.items():
                if uid not in present and not seen.deleted:
                    seen.deleted = True
                    self.holding.discard(uid)
            self._cond.notify_all()
        return str(listing["metadata"]["resourceVersion"])

    async def _run(self, rv: str) -> None:
        while True:
            query = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": "1800"}
            try:
                async with self.api.stream(self._path, query) as resp:
                    while line := await resp.content.readline():
                        event = json.loads(line)
                        now = time.perf_counter()
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "ERROR":
                            rv = await self._list()  # 410 Gone: start again from a fresh list
                            break
                        rv = str(obj["metadata"]["resourceVersion"])
                        if kind == "BOOKMARK":
                            continue
                        async with self._cond:
                            self._apply(obj, now, deleted=kind == "DELETED")
                            self._cond.notify_all()
            except (aiohttp.ClientError, ApiError, ValueError, TimeoutError) as exc:
                say(f"pod watch interrupted ({exc}); resuming")
                await asyncio.sleep(0.2)

    def _apply(self, pod: Obj, now: float, deleted: bool) -> None:
        meta = pod["metadata"]
        uid, rv = str(meta["uid"]), int(meta["resourceVersion"])
        seen = self.pods.get(uid)
        if seen is None:
            seen = self.pods[uid] = Seen(uid=uid, name=str(meta["name"]), first_rv=rv)
            self.uid_of[seen.name] = uid
        if not (pod.get("spec") or {}).get("schedulingGates") and seen.ungated_rv is None and not deleted:
            seen.ungated_rv, seen.ungated_at = rv, now
            self.grants.append(uid)
        if self.stamp_annotation:
            seen.stamp = (meta.get("annotations") or {}).get(self.stamp_annotation, seen.stamp)
        seen.terminating = seen.terminating or meta.get("deletionTimestamp") is not None
        if deleted and not seen.deleted:
            seen.gone_at = now
        seen.deleted = seen.deleted or deleted
        if seen.ungated_rv is not None and not seen.terminating and not seen.deleted:
            self.holding.add(uid)
            self.max_in_use = max(self.max_in_use, len(self.holding))
        else:
            self.holding.discard(uid)

    async def wait(self, check: Callable[[], bool], within: float, what: str) -> None:
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(check), within)
            except TimeoutError:
                raise BenchError(f"timed out after {within:.0f} s waiting for {what}") from None

    async def wait_ungated(self, uid: str, within: float) -> Seen:
        await self.wait(lambda: self.pods.get(uid, Seen("", "", 0)).ungated_at is not None, within, f"{uid} ungated")
        return self.pods[uid]

    async def wait_grants(self, count: int, within: float) -> None:
        await self.wait(lambda: len(self.grants) >= count, within, f"grant number {count}")

    async def wait_gone(self, uid: str, within: float) -> None:
        await self.wait(lambda: self.pods.get(uid, Seen("", "", 0, deleted=True)).deleted, within, f"{uid} gone")

    async def wait_empty(self, within: float) -> None:
        await self.wait(lambda: all(s.deleted for s in self.pods.values()), within, "every pod gone")

    def waiting(self) -> list[Seen]:
        """Gated, live pods in arrival order."""
        live = [s for s in self.pods.values() if s.ungated_rv is None and not s.terminating and not s.deleted]
        return sorted(live, key=lambda s: self.created_rv.get(s.uid, s.first_rv))

    def holders(self) -> list[Seen]:
        """Pods holding a slice, the longest-held first."""
        return sorted((self.pods[u] for u in self.holding), key=lambda s: s.ungated_rv or 0)


# ------------------------------------------------------------------------------ the systems


class System(Protocol):
    name: str
    cluster: DevCluster
    pod_webhooks: set[str]

    async def start(self) -> None: ...
    async def setup(self, api: Api, within: float) -> None: ...
    def pod(self, user: str) -> Obj: ...
    def processes(self) -> dict[str, int]: ...
    def helpers(self) -> dict[str, int]: ...
    async def drained(self, api: Api, within: float) -> None: ...
    def stop(self) -> None: ...


def _progress(prefix: str) -> Callable[[str], None]:
    return lambda line: say(f"{prefix}: {line}")


class GpuQueueSystem:
    """The dev cluster with one service replica, as ``gpu-queue dev up`` starts it."""

    name = "gpu-queue"

    def __init__(self, state: Path, template: Obj) -> None:
        self.cluster = DevCluster(
            state,
            replicas=1,
            slices=SLICES,
            config_overrides=shipped_gpu_queue_timings(),
            progress=_progress(self.name),
        )
        self.template = template
        self.pod_webhooks: set[str] = set()

    async def start(self) -> None:
        await self.cluster.start()

    async def setup(self, api: Api, within: float) -> None:
        # The dev cluster registered the chart's webhooks (both on pods) and proved they are called.
        configs = chart.load_webhooks(self.cluster.chart_objects)
        self.pod_webhooks = {str(hook["name"]) for config in configs for hook in config["webhooks"]}

    def pod(self, user: str) -> Obj:
        return personalize(self.template, user)

    def processes(self) -> dict[str, int]:
        procs = self.cluster.procs
        return {"gpu-queue": procs["service-0"].pid or 0, "redis": procs["redis"].pid or 0}

    def helpers(self) -> dict[str, int]:
        return {}

    async def drained(self, api: Api, within: float) -> None:
        await asyncio.sleep(1.0)  # the controller sees the deletions through its own watch

    def stop(self) -> None:
        self.cluster.stop()


UNSHARE_SCRIPT = (
    # Kueue v0.17 reads its metrics certificate from this fixed path whenever internal cert
    # management is off. In a private mount namespace, /etc overlaid (upper layer on a tmpfs that
    # goes with the namespace) gives it one without touching the machine's /etc.
    'set -e; mount -t tmpfs -o mode=0700 tmpfs "$1"; mkdir "$1/upper" "$1/work"; '
    'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/upper,workdir=$1/work" /etc; '
    'mkdir -p /etc/kueue/metrics/certs; cp "$2/tls.crt" "$2/tls.key" /etc/kueue/metrics/certs/; '
    'shift 2; exec "$@"'
)


class KueueSystem:
    """A dev cluster without gpu-queue, plus kube-controller-manager (garbage collector only) and Kueue."""

    name = "kueue"

    def __init__(self, state: Path, template: Obj, manifests: Path, log_level: str = "2") -> None:
        self.cluster = DevCluster(state / "cluster", replicas=0, slices=SLICES, progress=_progress(self.name))
        self.log_level = log_level
        self.dir = state / "kueue"
        self.template = template
        self.manifests = manifests
        self.procs: dict[str, ManagedProcess] = {}
        self.pod_webhooks: set[str] = set()

    async def start(self) -> None:
        await self.cluster.start()

    def pod(self, user: str) -> Obj:
        return personalize(self.template, user)

    def processes(self) -> dict[str, int]:
        return {"kueue": self.procs["kueue"].pid or 0} if "kueue" in self.procs else {}

    def helpers(self) -> dict[str, int]:
        proc = self.procs.get("kube-controller-manager")
        return {"kube-controller-manager": proc.pid or 0} if proc else {}

    async def setup(self, api: Api, within: float) -> None:
        ports = dict(zip(("webhook", "health", "metrics", "kcm"), free_ports(4), strict=True))
        certs = self.dir / "certs"
        ca = make_ca("gpu-queue-peer-bench-kueue-ca")
        serving = make_serving_cert(ca, ["localhost"], ["127.0.0.1"])
        write_file(certs / "tls.crt", serving.cert_pem)
        write_file(certs / "tls.key", serving.key_pem, 0o600)
        await api.call("POST", "/api/v1/namespaces", {"metadata": {"name": KUEUE_NAMESPACE}})
        await self._crds(api, within)
        await self._controller_manager(ports["kcm"], within)
        await self._kueue(ports, certs, within)
        docs = list(yaml.safe_load_all((self.manifests / "webhooks.yaml").read_text()))
        for config in kueue_webhooks(docs, f"https://127.0.0.1:{ports['webhook']}", ca.cert_pem, HUB_NAMESPACE):
            self.pod_webhooks |= {h["name"] for h in config["webhooks"] if covers_pods(h)}
            kind = "mutating" if config["kind"].startswith("Mutating") else "validating"
            await api.call("POST", f"/apis/admissionregistration.k8s.io/v1/{kind}webhookconfigurations", config)
        started = time.monotonic()
        for path, obj in kueue_queues(HUB_NAMESPACE):
            while True:  # the API server's webhook informer may not have the configurations yet
                try:
                    await api.call("POST", path, obj)
                    break
                except ApiError as exc:
                    if time.monotonic() - started > within:
                        raise
                    say(f"kueue: {obj['kind']} not created yet ({exc.message[:120]}); retrying")
                    await asyncio.sleep(0.5)
        await self._wait_active(api, within)
        await self._probe(api, within)

    async def _crds(self, api: Api, within: float) -> None:
        files = sorted((self.manifests / "crd").glob("*.yaml"))
        if not files:
            raise BenchError(f"no CRDs in {self.manifests / 'crd'}: run tools/build-kueue.sh")
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the Workload CRD is 1.4 MB of YAML
        names = []
        for path in files:
            crd = yaml.load(path.read_text(), Loader=loader)
            await api.call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
            names.append(crd["metadata"]["name"])
        deadline = time.monotonic() + within
        for name in names:
            while True:
                crd = await api.call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
                conditions = (crd.get("status") or {}).get("conditions") or []
                if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"CRD {name} not Established within {within:.0f} s")
                await asyncio.sleep(0.1)
        say(f"kueue: {len(names)} CRDs established")

    async def _controller_manager(self, port: int, within: float) -> None:
        tool = find_tool("kube-controller-manager")
        if tool is None:
            raise BenchError("kube-controller-manager not found: build it with tools/build-kind.sh")
        kubeconfig = str(self.cluster.kubeconfig)
        argv = [
            str(tool),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            # Only what Kueue's plain pods need: a deleted pod's Workload (its owner reference) is
            # deleted, and only then is its quota free.
            "--controllers=garbage-collector-controller",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.dir / 'kcm-certs'}",
        ]
        proc = ManagedProcess("kube-controller-manager", argv, self.cluster.log_path("kube-controller-manager"))
        self.procs[proc.name] = proc
        proc.start()
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # its self-signed serving certificate, on 127.0.0.1
        await proc.wait_until(lambda: http_ok(f"https://127.0.0.1:{port}/healthz", insecure), within)
        say("kueue: kube-controller-manager (garbage collector) up")

    async def _kueue(self, ports: Mapping[str, int], certs: Path, within: float) -> None:
        tool, unshare = find_tool("kueue"), shutil.which("unshare")
        if tool is None:
            raise BenchError("kueue not found: build it with tools/build-kueue.sh")
        if unshare is None:
            raise BenchError("unshare (util-linux) not found: Kueue runs in a private mount namespace")
        shipped = yaml.safe_load((self.manifests / "controller_manager_config.yaml").read_text())
        config = write_file(self.dir / "config.yaml", yaml.safe_dump(kueue_config(shipped, ports, certs)))
        scratch = self.dir / "etc-overlay"
        scratch.mkdir(parents=True, exist_ok=True)
        flags = (
            ["--mount", "--propagation", "private"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--mount"]
        )
        # 2 is what Kueue's manifests and Helm chart run it with (``--kueue-log-level``).
        kueue = [str(tool), f"--config={config}", f"--zap-log-level={self.log_level}"]
        argv = [unshare, *flags, "sh", "-c", UNSHARE_SCRIPT, "kueue-etc", str(scratch), str(certs), *kueue]
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig), "HOME": str(self.dir)}
        proc = ManagedProcess("kueue", argv, self.cluster.log_path("kueue"), env=env, cwd=self.dir)
        self.procs[proc.name] = proc
        proc.start()
        await proc.wait_until(lambda: http_ok(f"http://127.0.0.1:{ports['health']}/readyz"), within)
        say("kueue: ready (webhook server listening)")

    async def _wait_active(self, api: Api, within: float) -> None:
        deadline = time.monotonic() + within
        while True:
            cq = await api.call("GET", f"{KUEUE_API}/clusterqueues/{CLUSTER_QUEUE}")
            conditions = (cq.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Active" and c.get("status") == "True" for c in conditions):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"ClusterQueue {CLUSTER_QUEUE} not Active within {within:.0f} s: {conditions}")
            await asyncio.sleep(0.2)

    async def _probe(self, api: Api, within: float) -> None:
        """A dry-run create must come back with Kueue's gate: the API server calls its webhook."""
        pod = self.pod("probe")
        deadline = time.monotonic() + within
        while True:
            got = await api.call("POST", f"/api/v1/namespaces/{HUB_NAMESPACE}/pods", pod, {"dryRun": "All"})
            if any(g.get("name") == KUEUE_GATE for g in got.get("spec", {}).get("schedulingGates") or []):
                return
            if time.monotonic() > deadline:
                raise BenchError("Kueue's pod webhook does not gate the GPU pod")
            await asyncio.sleep(0.2)

    async def drained(self, api: Api, within: float) -> None:
        """Until every Workload is gone (the garbage collector deleted it): only then is quota free."""
        deadline = time.monotonic() + within
        while (await api.call("GET", f"{KUEUE_API}/namespaces/{HUB_NAMESPACE}/workloads")).get("items"):
            if time.monotonic() > deadline:
                raise BenchError(f"Workloads still there {within:.0f} s after their pods went")
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)

    def stop(self) -> None:
        refs = [ref for ref in (p.ref() for p in self.procs.values()) if ref is not None]
        stop_groups(refs, 10.0)
        self.cluster.stop()


# ------------------------------------------------------------------------------ measuring


class Sampler:
    """RSS of the system's processes every 200 ms: the peak, and what an idle window averaged."""

    def __init__(self, processes: Mapping[str, int], helpers: Mapping[str, int]) -> None:
        self.processes = {**processes, **helpers}
        self.own = set(processes)
        self.samples: list[dict[str, float]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def sample(self) -> None:
        rss = {name: rss_mib(pid) for name, pid in self.processes.items()}
        self.samples.append({name: 0.0 if math.isnan(v) else v for name, v in rss.items()})

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.2)

    def _total(self, sample: Mapping[str, float]) -> float:
        return sum(v for n, v in sample.items() if n in self.own)

    def mean_since(self, index: int) -> tuple[dict[str, float], float]:
        window = self.samples[index:] or self.samples[-1:]
        per = {n: round(sum(s[n] for s in window) / len(window), 1) for n in self.processes}
        return per, round(sum(self._total(s) for s in window) / len(window), 1)

    def peak(self) -> tuple[dict[str, float], float]:
        per = {n: round(max(s[n] for s in self.samples), 1) for n in self.processes}
        return per, round(max(self._total(s) for s in self.samples), 1)


@dataclass
class Snapshot:
    at: float
    writes: dict[str, float]
    webhooks: dict[tuple[str, str], Buckets]
    cpu: dict[str, float]
    bench_writes: int


class Bench:
    """One system in one round: its cluster, the bench's client and watch, the scenarios."""

    def __init__(self, system: System, api: Api, watch: PodWatch, opts: Options, result: RoundResult) -> None:
        self.system, self.api, self.watch, self.opts, self.result = system, api, watch, opts, result
        self.ns = HUB_NAMESPACE
        self.pids = {**system.processes(), **system.helpers()}
        self.own = set(system.processes())
        self._last: tuple[Snapshot, Snapshot] | None = None

    # ---- measurement windows

    async def snapshot(self) -> Snapshot:
        cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        text = await self.api.text("/metrics")
        samples = parse_samples(text, (REQUESTS, WEBHOOK_SECONDS))
        return Snapshot(time.perf_counter(), write_counts(samples), webhook_buckets(samples), cpu, self.api.writes)

    def cost(self, before: Snapshot, after: Snapshot) -> ScenarioCost:
        cpu = {n: round(after.cpu[n] - before.cpu[n], 2) for n in self.pids}
        writes = counter_delta(after.writes, before.writes)
        total, bench = sum(writes.values()), after.bench_writes - before.bench_writes
        return ScenarioCost(
            seconds=round(after.at - before.at, 2),
            cpu_s=cpu,
            system_cpu_s=round(sum(v for n, v in cpu.items() if n in self.own and not math.isnan(v)), 2),
            apiserver_writes=total,
            bench_writes=bench,
            other_writes=total - bench,
            writes_by_resource=writes,
        )

    async def writes_now(self) -> float:
        return sum(write_counts(parse_samples(await self.api.text("/metrics"), (REQUESTS,))).values())

    async def quiet(self) -> None:
        """Until the API server counts at most 3 writes in a second (Lease renewals, heartbeats): the
        work a scenario set off (Kueue's remaining Workloads, gpu-queue's position Events) is done.
        The same rule for both; CPU is no guide, Kueue's scheduler keeps busy while pods wait."""
        deadline = time.monotonic() + self.opts.quiet_max
        last = await self.writes_now()
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            now = await self.writes_now()
            if now - last <= 3:
                return
            last = now

    @contextlib.asynccontextmanager
    async def window(self, name: str) -> AsyncIterator[None]:
        """A scenario's costs: from just before it until the API server is quiet again."""
        say(f"{self.system.name}: {name}")
        before = await self.snapshot()
        yield
        if not name.endswith("idle"):
            await self.quiet()
        after = await self.snapshot()
        self.result.costs[name] = self.cost(before, after)
        self._last = (before, after)

    # ---- pods

    async def create(self, user: str) -> str:
        obj = await self.api.call("POST", f"/api/v1/namespaces/{self.ns}/pods", self.system.pod(user))
        uid = str(obj["metadata"]["uid"])
        self.watch.created_rv[uid] = int(obj["metadata"]["resourceVersion"])
        return uid

    async def delete(self, name: str) -> None:
        await self.api.call("DELETE", f"/api/v1/namespaces/{self.ns}/pods/{name}", query={"gracePeriodSeconds": "0"})

    async def clean(self) -> None:
        """Every pod gone and the system's slices free: the state each scenario starts from."""
        if any(not s.deleted for s in self.watch.pods.values()):
            await self.api.call("DELETE", f"/api/v1/namespaces/{self.ns}/pods", query={"gracePeriodSeconds": "0"})
            await self.watch.wait_empty(self.opts.timeout * 4)
        await self.system.drained(self.api, self.opts.timeout * 4)

    async def release_one(self) -> tuple[str, float, float]:
        """Delete the longest holder; the next grant (uid), the seconds from the delete call to
        it, and the seconds from the holder's DELETED event (as a watch sees it) to it: the part
        of the wait that is the system's own, not the API server's delete."""
        holders = self.watch.holders()
        if not holders:
            raise BenchError("nothing holds a slice, so nothing can be released")
        before = len(self.watch.grants)
        victim = holders[0]
        started = time.perf_counter()
        await self.delete(victim.name)
        await self.watch.wait_grants(before + 1, self.opts.timeout)
        uid = self.watch.grants[before]
        ungated = self.watch.pods[uid].ungated_at or math.nan
        return uid, ungated - started, ungated - (victim.gone_at or math.nan)

    # ---- scenarios

    async def warm_up(self) -> None:
        """One spawn and logout end to end (and the garbage collector's part for Kueue)."""
        uid = await self.create("warmup")
        await self.watch.wait_ungated(uid, self.opts.timeout * 2)
        await self.clean()

    async def idle(self, sampler: Sampler) -> None:
        mark = len(sampler.samples)
        async with self.window("idle"):
            await asyncio.sleep(self.opts.idle)
        self.result.rss_idle_mib, self.result.system_rss_idle_mib = sampler.mean_since(mark)

    async def first8(self) -> None:
        async with self.window("first8"):
            for i in range(SLICES):
                started = time.perf_counter()
                uid = await self.create(f"f8u{i:02d}")
                seen = await self.watch.wait_ungated(uid, self.opts.timeout)
                self.result.first8_ms.append(round(((seen.ungated_at or math.nan) - started) * 1000, 1))
                await asyncio.sleep(0.2)

    async def release(self) -> None:
        """From the 8 holders of ``first8``: queue cycles + waiting more, then release one at a time."""
        for i in range(self.opts.cycles + self.opts.waiting):
            await self.create(f"rlu{i:03d}")
        await asyncio.sleep(2.0)
        if len(self.watch.holding) != SLICES:
            raise BenchError(f"{len(self.watch.holding)} pods hold a slice before the release cycles, not {SLICES}")
        async with self.window("queued_idle"):  # 8 holders, the rest waiting, nothing happening
            await asyncio.sleep(self.opts.idle)
        self.watch.max_in_use = len(self.watch.holding)
        in_order = 0
        async with self.window("release"):
            for _ in range(self.opts.cycles):
                head = self.watch.waiting()[0].uid
                uid, seconds, reaction = await self.release_one()
                self.result.release_ms.append(round(seconds * 1000, 1))
                if math.isfinite(reaction):
                    self.result.release_reaction_ms.append(round(reaction * 1000, 1))
                in_order += uid == head
                await asyncio.sleep(0.3)
        self.result.release_in_order = in_order
        self.result.release_max_in_use = self.watch.max_in_use

    async def order(self, mode: str) -> None:
        await self.clean()
        n, gap = self.opts.order_pods, 0.1
        self.watch.max_in_use = 0
        async with self.window(f"order_{mode}"):
            start = time.perf_counter()

            async def paced(i: int) -> str:
                await asyncio.sleep(max(0.0, start + i * gap - time.perf_counter()))
                return await self.create(f"o{mode[0]}{i:02d}")

            if mode == "paced":
                uids = list(await asyncio.gather(*(paced(i) for i in range(n))))
            else:
                uids = list(await asyncio.gather(*(self.create(f"o{mode[0]}{i:02d}") for i in range(n))))
            first = min(SLICES, n)
            await self.watch.wait(
                lambda: sum(self.watch.pods[u].ungated_rv is not None for u in uids if u in self.watch.pods) >= first,
                self.opts.timeout,
                f"the first {first} of the {mode} creates granted",
            )
            await asyncio.sleep(1.5)
            while any(self.watch.pods[u].ungated_rv is None for u in uids):
                await self.release_one()
                await asyncio.sleep(0.2)
        keys = [(self.watch.created_rv[u], self.watch.pods[u].ungated_rv or 0) for u in uids]
        seen = [self.watch.pods[u] for u in uids]
        stamp_inversions = None
        if all(s.stamp for s in seen):
            ranked = {s.uid: i for i, s in enumerate(sorted(seen, key=lambda s: (parse_stamp(s.stamp or ""), s.name)))}
            stamp_inversions = inversions([(ranked[s.uid], s.ungated_rv or 0) for s in seen])
        self.result.order.append(
            OrderResult(
                mode=mode,
                pods=n,
                granted=sum(self.watch.pods[u].ungated_rv is not None for u in uids),
                pairs=pairs(n),
                inversions=inversions(keys),
                stamp_inversions=stamp_inversions,
                max_in_use=self.watch.max_in_use,
            )
        )

    async def respawn(self, waiters: int = 5, position: int = 2) -> None:
        await self.clean()
        async with self.window("respawn"):
            for i in range(SLICES):
                await self.watch.wait_ungated(await self.create(f"rsh{i}"), self.opts.timeout)
            for i in range(waiters):
                await self.create(f"rsw{i}")
                await asyncio.sleep(1.1)  # whole seconds apart: Kueue orders by creationTimestamp
            await asyncio.sleep(1.0)
            user = f"rsw{position - 1}"
            old = self.watch.uid_of[f"jupyter-{user}"]
            await self.delete(f"jupyter-{user}")
            await self.watch.wait_gone(old, self.opts.timeout)
            await asyncio.sleep(1.1)
            new = await self.create(user)
            await asyncio.sleep(1.5)
            granted: list[str] = []
            while len(granted) < waiters:
                uid, _, _ = await self.release_one()
                granted.append(uid)
                await asyncio.sleep(0.2)
        rank = granted.index(new) + 1 if new in granted else None
        self.result.respawn = RespawnResult(
            waiters=waiters,
            position_before=position,
            granted_rank=rank,
            kept_place=None if rank is None else rank == position,
        )

    async def storm(self) -> None:
        await self.clean()
        n, in_flight = self.opts.storm, self.opts.in_flight
        latencies: list[float] = []
        failed = 0
        gate = asyncio.Semaphore(in_flight)
        before_grants, before_pods = len(self.watch.grants), len(self.watch.pods)

        async def one(i: int) -> None:
            nonlocal failed
            async with gate:
                started = time.perf_counter()
                try:
                    await self.create(f"st{i:04d}")
                except (ApiError, aiohttp.ClientError, TimeoutError):
                    failed += 1
                    return
                latencies.append((time.perf_counter() - started) * 1000)

        settled: float | None = None
        async with self.window("storm"):
            start = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            created = time.perf_counter() - start
            want = min(SLICES, n - failed)
            try:
                await self.watch.wait(
                    lambda: (
                        len(self.watch.grants) - before_grants >= want
                        and len(self.watch.pods) - before_pods >= n - failed
                    ),
                    self.opts.timeout * 4,
                    f"{want} of the storm's pods holding",
                )
                settled = time.perf_counter() - start
            except BenchError as exc:
                say(f"{self.system.name}: {exc}")
        if self._last is None:
            raise BenchError("the storm's window recorded no scrapes")
        before, after = self._last
        hooks = []
        for (name, kind), buckets in sorted(after.webhooks.items()):
            delta = bucket_delta(buckets, before.webhooks.get((name, kind), {}))
            calls = max(delta.values(), default=0.0)
            if calls <= 0:
                continue
            p50, p99 = histogram_quantile(0.5, delta), histogram_quantile(0.99, delta)
            within = delta.get(0.1)
            hooks.append(
                WebhookLatency(
                    name=name,
                    type=kind,
                    pods=name in self.system.pod_webhooks,
                    calls=round(calls),
                    p50_ms=round(p50 * 1000, 1),
                    p99_ms=round(p99 * 1000, 1),
                    within_100ms=round(within / calls, 4) if within is not None else None,
                    buckets={str(k): v for k, v in sorted(delta.items())},
                )
            )
        self.result.storm = StormResult(
            pods=n,
            in_flight=in_flight,
            failed=failed,
            create=Dist.of([round(v, 1) for v in latencies]),
            created_s=round(created, 2),
            settled_s=round(settled, 2) if settled is not None else None,
            webhooks=hooks,
        )


# ------------------------------------------------------------------------------ the run


class Options(_Model):
    rounds: int = 2
    cycles: int = 20
    waiting: int = 20
    order_pods: int = 30
    storm: int = 500
    in_flight: int = 50
    idle: float = 10.0
    quiet_max: float = 60.0
    timeout: float = 30.0
    max_minutes: float = 90.0
    systems: list[str] = Field(default_factory=lambda: list(SYSTEMS))
    keep: bool = False
    kueue_log_level: str = "2"


QUICK = {"rounds": 1, "cycles": 8, "waiting": 8, "order_pods": 12, "storm": 100, "in_flight": 20, "idle": 3.0}


def run_order(rounds: int, systems: Sequence[str]) -> list[tuple[int, str]]:
    """ABBA: round r runs the systems in order when r is even, reversed when it is odd."""
    out: list[tuple[int, str]] = []
    for r in range(rounds):
        out += [(r, s) for s in (systems if r % 2 == 0 else list(reversed(systems)))]
    return out


def _rmtree(path: Path) -> None:
    """Remove a state directory, including the overlay's work dir (mode 000, made by the kernel)."""
    for root, dirs, _files in os.walk(path):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), stat.S_IRWXU)
    shutil.rmtree(path, ignore_errors=True)


async def run_round(
    name: str,
    r: int,
    position: int,
    opts: Options,
    templates: Mapping[str, Obj],
    manifests: Path,
    stamp_annotation: str,
) -> tuple[RoundResult, str]:
    result = RoundResult(system=name, round=r, position=position)
    state = Path(tempfile.mkdtemp(prefix=f"gpu-queue-peer-{name}-"))
    system: System = (
        GpuQueueSystem(state, templates[name])
        if name == "gpu-queue"
        else KueueSystem(state, templates[name], manifests, opts.kueue_log_level)
    )
    version = ""
    try:
        started = time.monotonic()
        await system.start()
        version = system.cluster.state.kubernetes_version
        pki = system.cluster.pki
        api = Api(
            system.cluster.apiserver_url,
            client_ssl_context(pki / "cluster-ca.crt", pki / "admin.crt", pki / "admin.key"),
        )
        watch = PodWatch(api, HUB_NAMESPACE, stamp_annotation=stamp_annotation)
        sampler: Sampler | None = None
        try:
            await system.setup(api, opts.timeout * 2)
            result.startup_s = round(time.monotonic() - started, 1)
            say(f"{name}: up in {result.startup_s:.1f} s (round {r + 1})")
            await watch.start()
            sampler = Sampler(system.processes(), system.helpers())
            sampler.start()
            bench = Bench(system, api, watch, opts, result)
            await bench.warm_up()
            await bench.idle(sampler)
            await bench.first8()
            await bench.release()
            await bench.order("paced")
            await bench.order("concurrent")
            await bench.respawn()
            await bench.storm()
        finally:
            if sampler is not None:
                await sampler.stop()
                if sampler.samples:
                    result.rss_peak_mib, result.system_rss_peak_mib = sampler.peak()
            await watch.stop()
            await api.close()
    except Exception as exc:  # one system's failure is reported, the run goes on
        result.error = f"{type(exc).__name__}: {exc}"
        say(f"{name}: FAILED: {result.error}")
        if not opts.keep:
            say(f"{name}: logs were in {system.cluster.logs} (use --keep to keep them)")
    finally:
        say(f"{name}: stopping")
        system.stop()
        if opts.keep:
            say(f"{name}: state and logs kept in {state}")
        else:
            _rmtree(state)
    return result, version


def _values(rounds: Sequence[RoundResult], system: str, get: Callable[[RoundResult], float | None]) -> list[float]:
    out: list[float] = []
    for r in rounds:
        if r.system == system and r.error is None:
            with contextlib.suppress(AttributeError, KeyError, IndexError, TypeError):
                value = get(r)
                if value is not None and not math.isnan(value):
                    out.append(float(value))
    return out


def _pooled(rounds: Sequence[RoundResult], system: str, get: Callable[[RoundResult], Sequence[float]]) -> list[float]:
    return [v for r in rounds if r.system == system and r.error is None for v in get(r)]


def _storm_type(r: RoundResult, kind: str) -> Buckets:
    buckets: Buckets = {}
    for hook in r.storm.webhooks if r.storm else []:
        if hook.type == kind and hook.pods:
            add_buckets(buckets, {float(k): v for k, v in hook.buckets.items()})
    return buckets


def figures(rounds: Sequence[RoundResult]) -> dict[str, Comparison]:
    """Each figure for both systems and ours / Kueue's: latencies pooled over the rounds, everything
    else the mean of the rounds (with their range)."""
    out: dict[str, Comparison] = {}

    def scalar(key: str, unit: str, get: Callable[[RoundResult], float | None], better: str = "lower") -> None:
        a, b = _values(rounds, "gpu-queue", get), _values(rounds, "kueue", get)
        ma, mb = mean(a), mean(b)
        out[key] = Comparison(
            unit=unit,
            gpu_queue=ma,
            kueue=mb,
            ratio=ratio(ma, mb),
            gpu_queue_range=[min(a), max(a)] if len(a) > 1 else None,
            kueue_range=[min(b), max(b)] if len(b) > 1 else None,
            better=better,
        )

    def dist(key: str, get: Callable[[RoundResult], Sequence[float]], qs: Sequence[float]) -> None:
        a, b = _pooled(rounds, "gpu-queue", get), _pooled(rounds, "kueue", get)
        for q in qs:
            pa = round(percentile(a, q), 1) if a else None
            pb = round(percentile(b, q), 1) if b else None
            out[f"{key}_p{round(q * 100)}_ms"] = Comparison(unit="ms", gpu_queue=pa, kueue=pb, ratio=ratio(pa, pb))

    dist("first8_create_to_ungated", lambda r: r.first8_ms, (0.5, 0.95))
    dist("release_to_next_ungated", lambda r: r.release_ms, (0.5, 0.95, 0.99))
    dist("release_event_to_next_ungated", lambda r: r.release_reaction_ms, (0.5, 0.95, 0.99))
    scalar("release_granted_the_earliest_waiter", "cycles", lambda r: r.release_in_order, better="higher")
    for mode in ("paced", "concurrent"):

        def inv(r: RoundResult, mode: str = mode) -> float | None:
            found = [o for o in r.order if o.mode == mode]
            return found[0].inversions if found else None

        def pairs_of(r: RoundResult, mode: str = mode) -> float | None:
            found = [o for o in r.order if o.mode == mode]
            return found[0].pairs if found else None

        scalar(f"order_{mode}_inversions", "pairs", inv)
        scalar(f"order_{mode}_pairs", "pairs", pairs_of, better="same")
    # The re-spawned user was at place 2: 2 is keeping it, the number of waiters is the back.
    scalar("respawn_granted_rank", "place", lambda r: r.respawn.granted_rank if r.respawn else None)
    scalar("rss_idle", "MiB", lambda r: r.system_rss_idle_mib)
    scalar("rss_peak", "MiB", lambda r: r.system_rss_peak_mib)
    for scenario in ("idle", "queued_idle", "first8", "release", "order_paced", "order_concurrent", "respawn", "storm"):

        def cpu(r: RoundResult, s: str = scenario) -> float | None:
            return r.costs[s].system_cpu_s

        def writes(r: RoundResult, s: str = scenario) -> float | None:
            return r.costs[s].other_writes

        scalar(f"cpu_{scenario}", "CPU s", cpu)
        scalar(f"apiserver_writes_{scenario}", "writes", writes)
    scalar("cpu_total", "CPU s", lambda r: sum(c.system_cpu_s for c in r.costs.values()))
    scalar("apiserver_writes_total", "writes", lambda r: sum(c.other_writes for c in r.costs.values()))
    scalar("storm_create_p50", "ms", lambda r: r.storm.create.p50_ms if r.storm else None)
    scalar("storm_create_p99", "ms", lambda r: r.storm.create.p99_ms if r.storm else None)
    scalar("storm_settled", "s", lambda r: r.storm.settled_s if r.storm else None)
    for kind, label in (("admit", "mutating"), ("validating", "validating")):
        for q in (0.5, 0.99):
            values = {}
            for system in SYSTEMS:
                pooled: Buckets = {}
                for r in rounds:
                    if r.system == system and r.error is None:
                        add_buckets(pooled, _storm_type(r, kind))
                v = histogram_quantile(q, pooled)
                values[system] = None if math.isnan(v) else round(v * 1000, 1)
            a, b = values["gpu-queue"], values["kueue"]
            out[f"storm_{label}_webhook_p{round(q * 100)}_ms"] = Comparison(
                unit="ms", gpu_queue=a, kueue=b, ratio=ratio(a, b)
            )
    scalar("startup", "s", lambda r: r.startup_s)
    return out


async def run(opts: Options) -> PeerResult:
    missing = [*missing_cluster_tools(), *(t for t in ("kube-controller-manager", "kueue") if find_tool(t) is None)]
    if "kueue" in opts.systems and missing:
        raise BenchError(
            f"missing {', '.join(missing)}: tools/build.sh, tools/build-kind.sh (kube-controller-manager), "
            "tools/build-kueue.sh"
        )
    manifests = cache_dir() / f"kueue-{KUEUE_VERSION}" / "manifests"
    started = time.monotonic()
    order = run_order(opts.rounds, opts.systems)
    result = PeerResult(
        cpus=os.cpu_count(),
        loadavg_before=[round(x, 2) for x in os.getloadavg()],
        options=opts.model_dump(),
        run_order=[f"{s}#{r + 1}" for r, s in order],
    )
    config = load_config(None, env={})
    template = await pod_manifest("template", "gpu-enabled", namespace=HUB_NAMESPACE)
    templates = {"gpu-queue": template, "kueue": kueue_template(template, config)}
    for position, (r, name) in enumerate(order):
        if time.monotonic() - started > opts.max_minutes * 60:
            result.notes.append(f"stopped before {name} round {r + 1}: past --max-minutes {opts.max_minutes}")
            break
        round_result, version = await run_round(
            name, r, position, opts, templates, manifests, config.requested_at_annotation
        )
        result.rounds.append(round_result)
        result.kubernetes_version = result.kubernetes_version or version
    result.figures = figures(result.rounds)
    result.notes += [
        "ratio = gpu-queue / Kueue; for every figure but release_granted_the_earliest_waiter lower is better",
        "respawn_granted_rank: the re-spawned user was at place 2 of 5; 2 = kept its place, 5 = went to the back",
        "gpu-queue = its service + Redis; Kueue = the kueue process (kube-controller-manager's garbage "
        "collector, which Kueue's plain pods need, is in rounds[].costs[].cpu_s, not in Kueue's figures)",
        "apiserver_writes = every write the API server counted in the scenario except the bench's own "
        "(the system's, and the scheduler's, kwok's and the garbage collector's on its behalf)",
    ]
    result.loadavg_after = [round(x, 2) for x in os.getloadavg()]
    result.elapsed_s = round(time.monotonic() - started, 1)
    return result


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"a few minutes: {QUICK}")
    parser.add_argument("--rounds", type=int, help="rounds of both systems, in ABBA order (2)")
    parser.add_argument("--cycles", type=int, help="release cycles (20)")
    parser.add_argument("--waiting", type=int, help="pods still waiting at the last release cycle (20)")
    parser.add_argument("--order-pods", type=int, help="pods of each order scenario (30)")
    parser.add_argument("--storm", type=int, help="creates in the storm (500)")
    parser.add_argument("--in-flight", type=int, help="storm creates in flight (50)")
    parser.add_argument("--idle", type=float, help="seconds of the idle window (10)")
    parser.add_argument("--quiet-max", type=float, help="seconds a scenario's window waits for writes to stop (60)")
    parser.add_argument("--timeout", type=float, help="seconds any one wait may take (30)")
    parser.add_argument("--max-minutes", type=float, help="start no round after this (90)")
    parser.add_argument("--systems", help="comma-separated: gpu-queue,kueue (both)")
    parser.add_argument("--kueue-log-level", help="Kueue's --zap-log-level: info or 1, 2, ... (2, as it ships)")
    parser.add_argument("--keep", action="store_true", help="keep each cluster's state directory and logs")
    args = parser.parse_args(argv)
    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    keys = (
        *("rounds", "cycles", "waiting", "order_pods", "storm", "in_flight"),
        *("idle", "quiet_max", "timeout", "max_minutes", "kueue_log_level"),
    )
    for key in keys:
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.systems:
        values["systems"] = [s.strip() for s in args.systems.split(",") if s.strip()]
    values["keep"] = args.keep
    opts = Options(**values)
    if not set(opts.systems) <= set(SYSTEMS) or not opts.systems:
        parser.error(f"--systems: one or both of {', '.join(SYSTEMS)}")
    if min(opts.rounds, opts.cycles, opts.waiting, opts.order_pods, opts.storm, opts.in_flight) < 1:
        parser.error("counts must be at least 1")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(argv)
    try:
        result = asyncio.run(run(opts))
    except BenchError as exc:
        print(f"peer bench: {exc}", file=sys.stderr)
        return 2
    print(result.model_dump_json())
    return 1 if any(r.error for r in result.rounds) else 0


if __name__ == "__main__":
    sys.exit(main())
