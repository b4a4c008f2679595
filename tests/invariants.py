"""The design's invariants, checked from outside while faults and load hit a real cluster.

``InvariantChecker`` keeps its own list+watch of the hub namespace's pods, independent of the
service, so it sees every state the API server went through (one observation per watch event:
each is the namespace's exact state at that resourceVersion) and checks:

- **I1 capacity** at every observation: the slices of ungated, unfinished pods of the pool (a
  two-slice pod counts two) plus other pods' use of the resource on its nodes <= capacity. At
  every grant the pending pods of ``other_namespaces`` that ask for the resource (no nodeName, no
  scheduling gate, not finished or deleting: the scheduler may give them a slice first) count too,
  so a grant that leaves a pod granted-but-unschedulable is a violation.
- **I2 order**: no pod was granted while a pod requested earlier was still waiting. Grants of one
  controller pass share an ``admitted-at``; "still waiting" is decided from the watch's order of
  events (exact), or, for a pod the cluster showed only after the grant, from its first
  ``requested-at`` plus the settle window (the pod had asked long enough before to be granted
  first: a late-visible overtake, still a violation of the pods' order). An early grant inside
  the earlier pod's settle window is allowed when that pod is granted within the window plus
  ``_OVERTAKEN_GRACE`` (a slice was left for it: it did not wait for a release), whether this
  watch showed it before the grant or after: the controller's own watch may be slower than this
  one, and the early grant is decided from what the controller saw.
- **one grant per pod**: the first ``admitted-at`` seen for a pod (by uid) never changes, and no
  pool pod appears ungated without one.
- **I3 convergence** (``converged``): the queue API lists exactly the gated pods, in requested-at
  order, at positions 1..n, and its holders are exactly the ungated pods.

After a watch gap (the API server restarted) the checker re-lists; orders it cannot decide across
the gap are counted as ``undecidable``, never guessed. ``summary()`` is what the tests print.

Also here, because both the fault and the load tests need them: ``PodFactory`` (KubeSpawner's pod,
built once and re-stamped per user, so thousands of spawns cost no KubeSpawner time), the queue
API and Prometheus readers, and a histogram quantile like PromQL's.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gpu_queue_dev.cluster import DevCluster
from gpu_queue_dev.cluster.pki import client_ssl_context
from gpu_queue_dev.spawnerpods import pod_manifest
from tests.scenarios import ADMITTED_AT, GATE, REQUESTED_AT, Target
from webhook.kube import Kube, KubeError
from webhook.pods import parse_time

POOL_ANNOTATION = "gpu-queue.io/pool"
GPU_RESOURCE = "nvidia.com/gpu"
FINISHED = frozenset({"Succeeded", "Failed"})
POLL = 0.02


# ------------------------------------------------------------------------------------ pods


class PodFactory:
    """KubeSpawner's pod manifests, built once per profile and re-stamped for each user.

    Building a manifest through KubeSpawner costs ~80 ms of CPU; a burst of 500 or a stream of
    50/s would measure the test's own CPU, not the cluster. The user name only appears as text in
    the manifest (name, labels, annotations, env), so a placeholder swapped by string keeps every
    other byte what a hub sends.
    """

    PLACEHOLDER = "zzqueueplaceholderzz"

    def __init__(self, namespace: str, templates: Mapping[str, str]) -> None:
        self.namespace = namespace
        self.templates = dict(templates)

    @classmethod
    async def build(cls, namespace: str, profiles: Iterable[str] = ("gpu-enabled", "cpu-only")) -> PodFactory:
        templates = {
            profile: json.dumps(await pod_manifest(cls.PLACEHOLDER, profile, namespace=namespace))
            for profile in profiles
        }
        return cls(namespace, templates)

    def pod(self, user: str, profile: str = "gpu-enabled") -> dict[str, Any]:
        """The pod for ``user`` (lower-case letters and digits: KubeSpawner keeps them as they are)."""
        if not user.isalnum() or not user.islower():
            raise ValueError(f"user {user!r}: use lower-case letters and digits so the pod name is the user name")
        data: dict[str, Any] = json.loads(self.templates[profile].replace(self.PLACEHOLDER, user))
        return data

    async def create(self, kube: Kube, user: str, profile: str = "gpu-enabled") -> dict[str, Any]:
        """POST the pod as the hub would; the API server's answer (the admitted, mutated pod)."""
        return await kube.request("POST", f"/api/v1/namespaces/{self.namespace}/pods", body=self.pod(user, profile))


def pod_name(user: str) -> str:
    return f"jupyter-{user}"


def make_target(cluster: DevCluster, kube: Kube, replica: int = 0) -> Target:
    """The scenarios' Target on the dev cluster, its queue API on ``replica``."""
    return Target(
        kube=kube,
        namespace=cluster.hub_namespace,
        gpu_node=cluster.gpu_node,
        api_url=cluster.api_url(replica),
        read_token=cluster.read_token,
        ca_file=str(cluster.ca_file),
        set_slices=cluster.set_gpu_slices,
        slices=cluster.slices,
    )


async def delete_pods(kube: Kube, namespace: str, names: Iterable[str], concurrency: int = 50) -> None:
    """Log users out at once (grace 0, as the scenarios do: kwok runs no kubelet to wait for).

    Also the fast way to empty the namespace: the dev API server deletes a collection with one
    worker, about 3x slower than 50 deletes in flight.
    """
    limit = asyncio.Semaphore(concurrency)

    async def one(name: str) -> None:
        async with limit:
            await kube.delete_if_present(f"/api/v1/namespaces/{namespace}/pods/{name}", grace_seconds=0)

    await asyncio.gather(*(one(n) for n in names))


# ------------------------------------------------------------------------------- the checker


def _annotations(pod: Mapping[str, Any]) -> dict[str, str]:
    return dict((pod.get("metadata") or {}).get("annotations") or {})


def _gated(pod: Mapping[str, Any]) -> bool:
    return any(g.get("name") == GATE for g in (pod.get("spec") or {}).get("schedulingGates") or [])


def _deleting(pod: Mapping[str, Any]) -> bool:
    return (pod.get("metadata") or {}).get("deletionTimestamp") is not None


def _stamp(pod: Mapping[str, Any], annotation: str) -> datetime | None:
    text = _annotations(pod).get(annotation)
    return parse_time(text) if text else None


def _gpu_limit(pod: Mapping[str, Any]) -> int:
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        value = ((container.get("resources") or {}).get("limits") or {}).get(GPU_RESOURCE)
        if value is not None:
            total += int(str(value))
    return total


# A pod overtaken inside its settle window by an early grant must be granted itself by the end of
# that window, give or take a controller pass on a loaded machine.
_OVERTAKEN_GRACE = timedelta(seconds=10)


@dataclass
class Track:
    """What the checker knows of one pool pod (by uid: a returning user's new pod is a new track)."""

    uid: str
    name: str
    first_stamp: datetime | None
    stamp: datetime
    seen_seq: int
    present: bool = True
    gated: bool = True
    deleting: bool = False
    finished: bool = False
    granted_seq: int | None = None
    granted_mono: float | None = None
    admitted_at: datetime | None = None
    gone_seq: int | None = None  # left the queue without a grant (deleted or terminating while gated)
    slices: int = 1  # what its notebook asks of the pool's resource (a two-slice profile holds two)

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.stamp, self.name)

    @property
    def holding(self) -> bool:
        return self.present and not self.gated and not self.finished

    @property
    def queued(self) -> bool:
        return self.present and self.gated and not self.deleting


@dataclass
class PoolView:
    """The pool as the checker last saw it: holders (sorted by name), the queue in FIFO order."""

    holding: list[str]
    queued: list[str]


@dataclass
class Violation:
    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.detail}"


class _Gone(Exception):
    """The watch's resourceVersion expired: list again."""


_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass
class InvariantChecker:
    """A background list+watch of ``namespace`` that checks I1 at every observation; ``check()``
    adds I2 and the one-grant rule, ``converged()`` checks I3 through the queue API.

    Work per watch event is O(1) (only the changed pod is re-read): a 500-pod burst makes
    thousands of events, and the checker shares two cores with the cluster it measures.
    """

    kube: Kube
    namespace: str
    capacity: int
    pool: str = "gpu"
    settle_seconds: float = 1.0
    label_selector: str = "component=singleuser-server"
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    tracks: dict[str, Track] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    seq: int = 0
    observations: int = 0
    lists: int = 0
    watch_errors: int = 0
    max_in_use: int = 0
    i3_seconds: list[float] = field(default_factory=list)
    # Namespaces whose GPU pods (every pod, no label selector) count against the pool too.
    other_namespaces: tuple[str, ...] = ()
    _holding: set[str] = field(default_factory=set)
    _other_use: dict[str, int] = field(default_factory=dict)
    _pending_other: dict[str, int] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _other_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _synced: asyncio.Event = field(default_factory=asyncio.Event)
    _others_listed: set[str] = field(default_factory=set)

    # ------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> InvariantChecker:
        self._task = asyncio.create_task(self._run(), name="invariant-watch")
        self._other_tasks = [
            asyncio.create_task(self._run_others(ns), name=f"invariant-watch-{ns}") for ns in self.other_namespaces
        ]
        await wait_until(self._is_synced, 30, "the invariant checker's first list")
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [t for t in (self._task, *self._other_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task, self._other_tasks = None, []

    async def _is_synced(self) -> bool:
        for task in (self._task, *self._other_tasks):
            if task is not None and task.done():
                task.result()  # surface a crash of a watch loop
        return self._synced.is_set() and self._others_listed >= set(self.other_namespaces)

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods"

    async def _run(self) -> None:
        """List, watch from the list's version, re-list on 410 or any failure (a fault test's API
        server restart), quickly: a gap is only as long as the API server is away."""
        while True:
            try:
                version = await self._list()
                while True:
                    version = await self._watch(version)
            except asyncio.CancelledError:
                raise
            except _Gone:
                continue
            except (KubeError, aiohttp.ClientError, OSError, TimeoutError, json.JSONDecodeError):
                self.watch_errors += 1
                await asyncio.sleep(0.2)  # a retry pace, not a wait for a condition

    async def _list(self) -> str:
        listing = await self.kube.request(
            "GET", self.path, query={"labelSelector": self.label_selector}, request_timeout=60.0
        )
        self.pods = {p["metadata"]["uid"]: p for p in listing.get("items") or []}
        self.lists += 1
        self.seq += 1
        self._holding.clear()
        self._other_use.clear()
        for track in self.tracks.values():
            if track.uid not in self.pods:
                self._left(track)
        for uid, pod in self.pods.items():
            self._apply(uid, pod)
        self._check_capacity()
        self._synced.set()
        return str((listing.get("metadata") or {}).get("resourceVersion", ""))

    async def _watch(self, version: str) -> str:
        query: dict[str, str | int | bool] = {
            "labelSelector": self.label_selector,
            "resourceVersion": version,
            "allowWatchBookmarks": True,
            "timeoutSeconds": 120,
        }
        async for event in self.kube.stream(self.path, query, read_timeout=150):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Gone
                raise KubeError(int(obj.get("code") or 500), str(obj.get("message", "watch error")))
            version = str((obj.get("metadata") or {}).get("resourceVersion", version))
            if kind not in ("ADDED", "MODIFIED", "DELETED"):
                continue
            uid = str((obj.get("metadata") or {}).get("uid"))
            self.seq += 1
            if kind == "DELETED":
                self.pods.pop(uid, None)
                self._holding.discard(uid)
                self._other_use.pop(uid, None)
                track = self.tracks.get(uid)
                if track is not None:
                    self._left(track)
            else:
                self.pods[uid] = obj
                self._apply(uid, obj)
            self._check_capacity()
        return version

    async def _run_others(self, namespace: str) -> None:
        """List+watch every pod of ``namespace``: only their use of the resource matters (I1)."""
        path = f"/api/v1/namespaces/{namespace}/pods"
        while True:
            try:
                listing = await self.kube.request("GET", path, request_timeout=60.0)
                for pod in listing.get("items") or []:
                    self._apply_other(pod["metadata"]["uid"], pod)
                self._others_listed.add(namespace)
                version = str((listing.get("metadata") or {}).get("resourceVersion", ""))
                query: dict[str, str | int | bool] = {"resourceVersion": version, "timeoutSeconds": 120}
                async for event in self.kube.stream(path, query, read_timeout=150):
                    obj = event.get("object") or {}
                    uid = str((obj.get("metadata") or {}).get("uid"))
                    if event.get("type") == "DELETED":
                        self._other_use.pop(uid, None)
                        self._pending_other.pop(uid, None)
                    elif event.get("type") in ("ADDED", "MODIFIED"):
                        self._apply_other(uid, obj)
                    self._check_capacity()
            except asyncio.CancelledError:
                raise
            except (KubeError, aiohttp.ClientError, OSError, TimeoutError, json.JSONDecodeError):
                self.watch_errors += 1
                await asyncio.sleep(0.2)

    def _apply_other(self, uid: str, pod: dict[str, Any]) -> None:
        """A pod that is not the pool's: bound, its use counts; pending and schedulable, it competes."""
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        use = _gpu_limit(pod) if status.get("phase") not in FINISHED else 0
        bound = bool(spec.get("nodeName"))
        pending = not bound and not _deleting(pod) and not spec.get("schedulingGates")
        self._other_use.pop(uid, None)
        self._pending_other.pop(uid, None)
        if use and bound:
            self._other_use[uid] = use
        elif use and pending:
            self._pending_other[uid] = use

    # ---------------------------------------------------------------------- observations

    def _left(self, track: Track) -> None:
        track.present = False
        if track.granted_seq is None and track.gone_seq is None:
            track.gone_seq = self.seq

    def _apply(self, uid: str, pod: dict[str, Any]) -> None:
        """Pod ``uid`` is now ``pod``: its track, its share of the pool's use, the one-grant rule."""
        finished = (pod.get("status") or {}).get("phase") in FINISHED
        if _annotations(pod).get(POOL_ANNOTATION) != self.pool:
            # I1 counts other pods asking for the resource on the pool's nodes too.
            scheduled = bool((pod.get("spec") or {}).get("nodeName"))
            use = _gpu_limit(pod) if scheduled and not finished else 0
            if use:
                self._other_use[uid] = use
            else:
                self._other_use.pop(uid, None)
            return
        name = pod["metadata"]["name"]
        stamp = _stamp(pod, REQUESTED_AT)
        track = self.tracks.get(uid)
        if track is None:
            track = Track(uid=uid, name=name, first_stamp=stamp, stamp=stamp or _NEVER, seen_seq=self.seq)
            self.tracks[uid] = track
        if stamp is not None:
            track.stamp = stamp
        track.present, track.finished, track.deleting = True, finished, _deleting(pod)
        track.gated = _gated(pod)
        track.slices = max(1, _gpu_limit(pod))
        admitted = _stamp(pod, ADMITTED_AT)
        if track.gated:
            if track.deleting and track.gone_seq is None:
                track.gone_seq = self.seq
        elif track.granted_seq is None:
            track.granted_seq, track.granted_mono, track.admitted_at = self.seq, time.monotonic(), admitted
            if admitted is None:
                self._violate("grant", f"{name} is ungated without an admitted-at annotation")
        if admitted is not None and track.admitted_at is not None and admitted != track.admitted_at:
            self._violate("double grant", f"{name}: admitted-at changed {track.admitted_at} -> {admitted}")
        if track.holding:
            self._holding.add(uid)
        else:
            self._holding.discard(uid)

    def _check_capacity(self) -> None:
        """I1 at this observation (every watch event is one resourceVersion of the namespace)."""
        self.observations += 1
        in_use = sum(self.tracks[uid].slices for uid in self._holding) + sum(self._other_use.values())
        self.max_in_use = max(self.max_in_use, in_use)
        if in_use > self.capacity:
            holders = sorted(self.tracks[uid].name for uid in self._holding)
            self._violate("I1", f"{in_use} slices in use of {self.capacity} at observation {self.seq}: {holders}")
        granted = [t.name for t in self.tracks.values() if t.granted_seq == self.seq]
        pending = sum(self._pending_other.values())
        if granted and pending and in_use + pending > self.capacity:
            self._violate(
                "I1",
                f"{granted} granted at observation {self.seq} with {in_use} slices in use and {pending} asked for "
                f"by pending pods of {list(self.other_namespaces)} (capacity {self.capacity}): someone is left "
                "granted but unschedulable",
            )

    def _violate(self, invariant: str, detail: str) -> None:
        if len(self.violations) < 50:
            self.violations.append(Violation(invariant, detail))

    # ---------------------------------------------------------------------------- queries

    def view(self) -> PoolView:
        present = [t for t in self.tracks.values() if t.present]
        holding = sorted(t.name for t in present if t.holding)
        queued = [t.name for t in sorted((t for t in present if t.queued), key=lambda t: t.order)]
        return PoolView(holding, queued)

    def track(self, name: str) -> Track | None:
        """The present pod called ``name`` (else the latest one seen)."""
        named = [t for t in self.tracks.values() if t.name == name]
        return next((t for t in named if t.present), named[-1] if named else None)

    def granted(self) -> list[Track]:
        """Every pod seen granted, in the order the cluster showed the grants."""
        return sorted((t for t in self.tracks.values() if t.granted_seq is not None), key=lambda t: t.granted_seq or 0)

    async def wait(self, check: Callable[[PoolView], bool], within: float, what: str) -> PoolView:
        """Poll the watched state until ``check`` holds; fail after ``within`` seconds naming ``what``."""

        async def ready() -> PoolView | None:
            await self._is_synced()
            view = self.view()
            return view if check(view) else None

        try:
            result: PoolView = await wait_until(ready, within, what)
        except AssertionError as exc:
            view = self.view()
            raise AssertionError(f"{exc}; holding {view.holding}, queued {view.queued}") from None
        return result

    # ------------------------------------------------------------------------------ checks

    def order_violations(self) -> tuple[list[Violation], int, int]:
        """I2 over every (earlier-requested A, granted B) pair: (violations, pairs, undecidable)."""
        found: list[Violation] = []
        pairs = undecidable = 0
        settle = timedelta(seconds=self.settle_seconds)
        tracks = [t for t in self.tracks.values() if t.stamp is not _NEVER]
        for b in tracks:
            if b.granted_seq is None or b.admitted_at is None:
                continue
            for a in tracks:
                if a is b or a.order >= b.order:
                    continue
                pairs += 1
                if a.admitted_at is not None and a.admitted_at <= b.admitted_at:
                    continue  # granted first, or in the same pass
                if a.granted_seq is None and a.gone_seq is not None and a.gone_seq <= b.granted_seq:
                    if a.gone_seq == b.granted_seq:
                        undecidable += 1  # both happened inside one watch gap
                    continue  # left the queue before B's grant
                if a.seen_seq < b.granted_seq:
                    # Shown to this watch before B's grant. Allowed only as an early grant the
                    # controller made before its own watch showed A (two watches, two paces):
                    # inside A's settle window, with A granted soon after without waiting for a
                    # release; a pod the controller saw and passed over waits for one.
                    early = a.first_stamp is not None and b.admitted_at < a.first_stamp + settle
                    served = (
                        a.first_stamp is not None
                        and a.admitted_at is not None
                        and a.admitted_at <= a.first_stamp + settle + _OVERTAKEN_GRACE
                    )
                    if not (early and served):
                        what = f"{b.name} granted at {b.admitted_at} while {a.name} (asked earlier) waited"
                        found.append(Violation("I2", what))
                elif a.first_stamp is not None and a.first_stamp + settle <= b.admitted_at:
                    found.append(
                        Violation(
                            "I2",
                            f"{b.name} granted at {b.admitted_at} before {a.name}, stamped {a.first_stamp} "
                            f"(> {self.settle_seconds}s earlier) but shown by the API server only after the grant",
                        )
                    )
                elif (
                    a.first_stamp is not None
                    and a.gone_seq is None
                    and ((a.admitted_at or datetime.now(UTC)) > a.first_stamp + settle + _OVERTAKEN_GRACE)
                ):
                    # B went early, inside A's settle window, while A was on its way: allowed only if a
                    # slice was left for A, so A's own grant must not wait for a release.
                    found.append(
                        Violation(
                            "I2",
                            f"{b.name} granted at {b.admitted_at}, early, before {a.name} (stamped {a.first_stamp}, "
                            f"shown after the grant), which then waited: granted at {a.admitted_at}",
                        )
                    )
        return found, pairs, undecidable

    def check(self) -> dict[str, Any]:
        """Raise on any violation so far (I1, one grant, I2); else the summary."""
        order, pairs, undecidable = self.order_violations()
        everything = [*self.violations, *order]
        summary = self.summary(pairs=pairs, undecidable=undecidable)
        if everything:
            shown = "\n  ".join(str(v) for v in everything[:20])
            raise AssertionError(f"{len(everything)} invariant violation(s):\n  {shown}\nsummary: {summary}")
        return summary

    def summary(self, *, pairs: int | None = None, undecidable: int | None = None) -> dict[str, Any]:
        if pairs is None or undecidable is None:
            _, pairs, undecidable = self.order_violations()
        grants = self.granted()
        return {
            "observations": self.observations,
            "lists": self.lists,
            "watch_errors": self.watch_errors,
            "pods_seen": len(self.tracks),
            "grants": len(grants),
            "I1_max_in_use": self.max_in_use,
            "capacity": self.capacity,
            "I2_pairs_checked": pairs,
            "I2_undecidable": undecidable,
            "double_grants": sum(1 for v in self.violations if v.invariant == "double grant"),
            "I3_seconds": [round(s, 2) for s in self.i3_seconds],
            "violations": len(self.violations),
        }

    async def converged(self, target: Target, within: float, *, sample: int = 5) -> float:
        """I3: poll until the queue API lists exactly the gated pods in requested-at order at 1..n and
        its holders are the ungated pods; then ``sample`` per-pod answers agree. The seconds taken."""
        started = time.monotonic()
        last: list[str] = []

        async def agrees() -> bool:
            nonlocal last
            view = self.view()
            listing = await queue_listing(target, self.pool)
            entries = listing["entries"]
            names = [e["name"] for e in entries]
            positions = [e["position"] for e in entries]
            holders = sorted(h["name"] for h in (await pool_status(target, self.pool)).get("holders") or [])
            last = [f"api queue {names[:8]}.. ({listing['queueLength']})", f"pods {view.queued[:8]}..", f"{holders=}"]
            return (
                names == view.queued
                and positions == list(range(1, len(names) + 1))
                and listing["queueLength"] == len(names)
                and holders == view.holding
            )

        try:
            await wait_until(agrees, within, "the queue API to list every gated pod at 1..n in order (I3)", 0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen: {last}") from None
        took = time.monotonic() - started
        queued = self.view().queued
        if queued and sample:
            step = max(1, len(queued) // sample)
            picks = sorted({*range(0, len(queued), step), len(queued) - 1})
            answers = await asyncio.gather(*(target.position(queued[i]) for i in picks))
            for i, answer in zip(picks, answers, strict=True):
                assert answer.get("state") == "queued" and answer.get("position") == i + 1, (queued[i], i + 1, answer)
        self.i3_seconds.append(took)
        return took


async def wait_until(check: Callable[[], Awaitable[Any]], within: float, what: str, interval: float = POLL) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds naming ``what``."""
    deadline = time.monotonic() + within
    last: BaseException | None = None
    while True:
        try:
            value = await check()
        except (KubeError, aiohttp.ClientError, OSError, TimeoutError, KeyError) as exc:
            last = exc
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {within:.0f}s waiting for {what}" + (f" (last: {last!r})" if last else "")
            )
        await asyncio.sleep(interval)


# ------------------------------------------------------------------------- HTTP readers


async def _api_get(target: Target, path: str) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=target.ca_file)
    headers = {"Authorization": f"Bearer {target.read_token}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"{target.api_url}/api/v1{path}", headers=headers, ssl=context) as response,
    ):
        if response.status != 200:
            raise KubeError(response.status, f"queue API {path}: {(await response.text())[:200]}")
        data: dict[str, Any] = await response.json()
        return data


async def queue_listing(target: Target, pool: str) -> dict[str, Any]:
    """``GET /pools/{pool}/queue``: the whole FIFO (up to the API's page limit) with positions."""
    return await _api_get(target, f"/pools/{pool}/queue?limit=1000")


async def pool_status(target: Target, pool: str) -> dict[str, Any]:
    """One pool of ``GET /pools``: capacity, in use, queue length, holders."""
    listing: Any = await _api_get(target, "/pools")
    return next(p for p in listing if p["name"] == pool)


async def lease_holder(kube: Kube) -> int | None:
    """The index of the replica holding the leader Lease, or None when nobody holds it."""
    lease = await kube.request("GET", "/apis/coordination.k8s.io/v1/namespaces/gpu-queue/leases/gpu-queue-leader")
    identity = (lease.get("spec") or {}).get("holderIdentity") or ""
    return int(identity.rsplit("-", 1)[1]) if identity.startswith("gpu-queue-") else None


async def current_leader(kube: Kube, within: float = 20.0) -> int:
    """The index of the replica holding the leader Lease, waiting for one to hold it."""

    async def holder() -> tuple[int] | None:
        index = await lease_holder(kube)
        return (index,) if index is not None else None

    found: tuple[int] = await wait_until(holder, within, "a replica to hold the leader Lease")
    return found[0]


async def http_text(url: str, ssl_context: ssl.SSLContext | None = None) -> str:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session,
        session.get(url, ssl=ssl_context if ssl_context is not None else False) as response,
    ):
        text = await response.text()
        if response.status != 200:
            raise KubeError(response.status, f"GET {url}: {text[:200]}")
        return text


async def apiserver_metrics(cluster: DevCluster) -> str:
    """The API server's own ``/metrics``, read with the admin identity (system:masters)."""
    context = client_ssl_context(cluster.state.cluster_ca_file, cluster.pki / "admin.crt", cluster.pki / "admin.key")
    return await http_text(f"{cluster.apiserver_url}/metrics", context)


# --------------------------------------------------------------------------- Prometheus

Buckets = dict[float, float]  # upper bound -> cumulative count


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric ``name`` (a counter's ``_total`` or a histogram's ``_bucket``)."""
    out: list[tuple[dict[str, str], float]] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out.append((dict(sample.labels), float(sample.value)))
    return out


def histogram(text: str, metric: str, labels: Mapping[str, str] | None = None) -> Buckets:
    """The cumulative buckets of histogram ``metric``, summed over every series matching ``labels``."""
    buckets: Buckets = {}
    for found, value in samples(text, f"{metric}_bucket"):
        if all(found.get(k) == v for k, v in (labels or {}).items()):
            bound = float(found["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    return buckets


def bucket_diff(after: Buckets, before: Buckets) -> Buckets:
    """What was observed between two scrapes (the counters only grow)."""
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def quantile(q: float, buckets: Buckets) -> float:
    """PromQL's ``histogram_quantile``: linear within the bucket; the largest finite bound if the
    quantile falls in +Inf; NaN with no observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of raw values (client-side latencies)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
