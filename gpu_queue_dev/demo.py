"""``gpu-queue demo``: the seed story, played on a local control plane with real KubeSpawner pods.

It is the README's first command, so it explains itself as it goes: it starts a dev cluster
(etcd, kube-apiserver, kube-scheduler, kwok fake nodes, Redis and the service), creates pods
exactly as a zero-to-jupyterhub hub creates them, shows what a user sees (the spawn page's lines,
made from the pod's Events) and what an admin sees (the queue API, a live table of pods), checks
that what the design promises happened, and tears the cluster down. It exits non-zero, naming
the step that went wrong, when the story did not happen as expected, so it doubles as a smoke
test of a fresh checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import ssl
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO, TypeVar
from urllib.parse import quote

import aiohttp
from pydantic import ValidationError
from yarl import URL

from gpu_queue_dev.cluster import DevCluster, DevClusterError, missing_cluster_tools
from gpu_queue_dev.cluster.procs import pid_matches
from gpu_queue_dev.cluster.state import load_state
from gpu_queue_dev.spawnerpods import PROFILE_LIST
from webhook.admin import format_duration, render_table
from webhook.api import API_PREFIX, QueueListing
from webhook.config import Config
from webhook.kube import Kube, KubeError, load_client, pod_path
from webhook.pods import parse_time

T = TypeVar("T")

GPU_PROFILE: Final = "gpu-enabled"
CPU_PROFILE: Final = "cpu-only"

# Realistic hub user names: KubeSpawner escapes them into pod names, so the raw name (with its dot
# or @) survives only in the hub.jupyter.org/username annotation, which is what the queue API uses.
GPU_USERS: Final = ("alice", "bob.smith", "carmen", "dmitri", "esther", "farid", "grace", "hiro")
NINTH_USER: Final = "ines@physics.example.edu"
CPU_USER: Final = "jonas"

# How long each step may take before the demo says it did not happen (generous: a loaded laptop).
START_SECONDS: Final = 60.0
EVENT_SECONDS: Final = 20.0
API_SECONDS: Final = 15.0
GRANT_SECONDS: Final = 10.0
# The design's promise is a grant within a second of the logout; the demo fails above this budget,
# which leaves room for a busy two-core machine without hiding a real regression (seconds).
GRANT_BUDGET_SECONDS: Final = 2.0

POLL_SECONDS: Final = 0.05
GRANT_POLL_SECONDS: Final = 0.01  # the grant latency is measured by this poll: keep it fine
REFRESH_SECONDS: Final = 0.25  # live table redraw period on a terminal


class StoryFailed(Exception):
    """A step of the story did not happen; the message is the reason the summary prints."""


# ------------------------------------------------------------------------------------- the cast


@dataclass(frozen=True)
class Cast:
    """Who does what: ``gpu`` fill the pool, ``ninth`` queues, ``cpu`` starts at once, ``leaver``
    logs out."""

    gpu: tuple[str, ...]
    ninth: str
    cpu: str
    leaver: str


def cast_for(slices: int) -> Cast:
    """As many GPU users as slices: the seed's eight names first, then numbered ones."""
    extra = tuple(f"user{i:02d}" for i in range(len(GPU_USERS) + 1, slices + 1))
    gpu = (GPU_USERS + extra)[:slices]
    return Cast(gpu=gpu, ninth=NINTH_USER, cpu=CPU_USER, leaver=gpu[min(3, slices - 1)])


def _profile_title(slug: str) -> str:
    """The profile's display name as the hub's profile list shows it."""
    for entry in PROFILE_LIST:
        if entry["slug"] == slug:
            return str(entry["display_name"])
    return slug


def _profile_short(slug: str | None) -> str:
    if slug is None:
        return "-"
    return _profile_title(slug).split(" - ", 1)[0]


# ---------------------------------------------------------------------------------------- output


class Screen:
    """Narration plus a pods table: redrawn in place on a terminal, appended snapshots elsewhere.

    Everything goes through one object on the event loop's thread, so the live redraw and the
    narration never interleave mid-line.
    """

    def __init__(self, stream: TextIO, live: bool) -> None:
        self.stream = stream
        self.live = live
        self._table = ""
        self._drawn_lines = 0
        self._last_snapshot = ""

    def say(self, text: str = "") -> None:
        self._erase()
        self.stream.write(text + "\n")
        self._draw()

    def table(self, text: str) -> None:
        """Replace the table: redrawn now on a terminal; shown at the next ``snapshot`` otherwise."""
        self._table = text
        if self.live:
            self._erase()
            self._draw()

    def snapshot(self) -> None:
        """Where the story pauses: a plain copy of the table, unless nothing changed."""
        if self.live or not self._table or self._table == self._last_snapshot:
            return
        self._last_snapshot = self._table
        self.stream.write(self._table + "\n\n")
        self.stream.flush()

    def freeze(self) -> None:
        """Leave the last table on screen: from here on, text goes below it."""
        if self.live and self._drawn_lines:
            self._drawn_lines = 0
            self.stream.write("\n")
        self._table = ""
        self.stream.flush()

    def _erase(self) -> None:
        if self.live and self._drawn_lines:
            # Up to the first line of the table, then clear to the end of the screen.
            self.stream.write(f"\x1b[{self._drawn_lines}A\r\x1b[J")
            self._drawn_lines = 0

    def _draw(self) -> None:
        if self.live and self._table:
            width = max(20, shutil.get_terminal_size((120, 24)).columns - 1)
            lines = [line[:width] for line in self._table.splitlines()]  # no wrapping: the count stays true
            self.stream.write("\n".join(lines) + "\n")
            self._drawn_lines = len(lines)
        self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    return stream.isatty() and os.environ.get("TERM", "") != "dumb"


# ----------------------------------------------------------------------------------- pod reading


def _meta(pod: dict[str, Any], key: str) -> dict[str, str]:
    value = (pod.get("metadata") or {}).get(key) or {}
    return value if isinstance(value, dict) else {}


def _name(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["name"])


def _is_running(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running"


def _node(pod: dict[str, Any]) -> str:
    return str((pod.get("spec") or {}).get("nodeName") or "")


def _stamp(text: str | None) -> datetime | None:
    return parse_time(text) if text else None


def _spawn_page_line(event: dict[str, Any]) -> str:
    """One Event as KubeSpawner's ``progress()`` shows it on the spawn page."""
    when = event.get("lastTimestamp") or event.get("eventTime") or ""
    return f"{when} [{event.get('type', '')}] {event.get('message', '')}"


def _event_order(event: dict[str, Any]) -> tuple[datetime, int]:
    """When the Event first happened, then the API server's write order for same-second Events
    (``lastTimestamp`` has whole seconds, ``eventTime`` microseconds: compare parsed times)."""
    meta = event.get("metadata") or {}
    texts = (
        event.get("eventTime"),
        event.get("firstTimestamp"),
        event.get("lastTimestamp"),
        meta.get("creationTimestamp"),
    )
    when = next((t for t in (_stamp(x) for x in texts) if t is not None), datetime.min.replace(tzinfo=UTC))
    version = str(meta.get("resourceVersion") or "0")
    return when, int(version) if version.isdigit() else 0


# ---------------------------------------------------------------------------------------- checks


@dataclass
class Check:
    """One promise of the story; ``ok`` is None until the story reaches it."""

    title: str
    ok: bool | None = None
    detail: str = ""

    @property
    def label(self) -> str:
        return {None: "not run", True: "ok", False: "FAILED"}[self.ok]


@dataclass
class Facts:
    """What was measured, for the summary."""

    fill_seconds: float | None = None
    waiting_line: str = ""
    cpu_seconds: float | None = None
    cpu_node: str = ""
    grant_latency: float | None = None
    granted_line: str = ""


@dataclass
class Outcome:
    """The story's result: every check, the facts, and the first failure's reason."""

    checks: dict[str, Check]
    facts: Facts
    failure: str = ""
    startup_seconds: float = 0.0
    story_seconds: float = 0.0
    started: bool = False
    leftovers: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.started and not self.failure and all(c.ok for c in self.checks.values())


# ----------------------------------------------------------------------------------------- story


class Story:
    """The seed story against a running dev cluster, as the hub (admin kubeconfig) and a user."""

    def __init__(
        self, cluster: DevCluster, kube: Kube, http: aiohttp.ClientSession, screen: Screen, pace: float
    ) -> None:
        self.cluster = cluster
        self.kube = kube
        self.http = http
        self.screen = screen
        self.pace = pace
        self.config: Config = cluster.service_config
        self.slices = cluster.state.slices
        self.cast = cast_for(self.slices)
        self.namespace = cluster.hub_namespace
        self.pool = self.config.profiles[GPU_PROFILE].pool or "gpu"
        self.tls = ssl.create_default_context(cafile=str(cluster.ca_file))
        self.selector = ",".join(f"{k}={v}" for k, v in self.config.pod_selector.items())
        self.order: list[str] = []  # pod names in spawn order: the table's row order
        self.logged_out: dict[str, tuple[str, str]] = {}  # pod name -> (user, profile)
        self.pod_of: dict[str, str] = {}  # user -> pod name
        self.facts = Facts()
        self.shown_events: set[str] = set()  # Event uids already shown: the spawn page only appends
        c = self.cast
        n = self.slices
        self.checks: dict[str, Check] = {
            "fill": Check(f"{n} GPU users hold the {n} slices and run on {cluster.gpu_node}"),
            "queued": Check(f"{c.ninth} is gated and the spawn page says 'position 1 of 1'"),
            "api": Check(f"the queue API answers {c.ninth}: queued, position 1 of 1, {n} of {n} in use"),
            "cpu": Check(f"{c.cpu} (CPU only) starts at once, never gated, while the pool is full"),
            "grant": Check(f"{c.ninth} gets {c.leaver}'s slice within {GRANT_BUDGET_SECONDS:g} s of the logout"),
            "granted-event": Check(f"{c.ninth}'s server runs and the spawn page says 'GPU slice granted after'"),
            "capacity": Check(f"{n} of {n} slices in use at the end, nobody else granted"),
        }
        self._current = "fill"

    # ------------------------------------------------------------------ the steps

    async def play(self) -> None:
        """Every step in order; the first failure stops the story (later steps depend on it)."""
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("fill", self.fill_the_pool),
            ("queued", self.ninth_user_queues),
            ("cpu", self.cpu_user_starts),
            ("grant", self.logout_and_grant),
            ("capacity", self.final_state),
        ]
        for i, (key, step) in enumerate(steps):
            self._current = key
            if i:
                await self.pause()
            try:
                await step()
            except StoryFailed as exc:
                self.fail(self._current, str(exc))
                await self.snapshot()
                raise
            await self.snapshot()

    async def fill_the_pool(self) -> None:
        c, n = self.cast, self.slices
        self.say(f'1. {n} users start "{_profile_title(GPU_PROFILE)}" servers: {", ".join(c.gpu)}')
        started = time.monotonic()
        for user in c.gpu:
            await self.spawn(user, GPU_PROFILE)
            await self.pause(0.25)
        names = [self.pod_of[u] for u in c.gpu]

        async def all_hold() -> bool:
            pods = await self.pods()
            return all(
                nm in pods and not self.gated(pods[nm]) and _is_running(pods[nm]) and _node(pods[nm]) == self.gpu_node
                for nm in names
            )

        await self.wait_for(all_hold, START_SECONDS, f"all {n} GPU pods to be granted a slice and run")
        self.facts.fill_seconds = time.monotonic() - started
        self.passed("fill", f"in {self.facts.fill_seconds:.1f}s")
        self.say(f"   all {n} hold a slice and run on {self.gpu_node} ({self.facts.fill_seconds:.1f}s)")

    async def ninth_user_queues(self) -> None:
        c, n = self.cast, self.slices
        self.say(f"2. {c.ninth} starts a GPU server: all {n} slices are taken")
        created = await self.spawn(c.ninth, GPU_PROFILE)
        name = _name(created)
        if not self.gated(created):
            raise StoryFailed(
                f"the webhook did not gate {name} on create (no {self.config.gate_name} scheduling gate): "
                "is the mutating webhook registered?"
            )
        self.say(f"   the webhook gated pod {name} ({self.config.gate_name}); it waits, Pending, without a node")

        async def told_position_one() -> list[dict[str, Any]] | None:
            events = await self.events(name)
            wanted = "Waiting for a GPU slice: position 1 of 1"
            return events if any(wanted in str(e.get("message", "")) for e in events) else None

        events = await self.wait_for(told_position_one, EVENT_SECONDS, f"the 'position 1 of 1' Event on {name}")
        self.facts.waiting_line = next(
            str(e.get("message", "")) for e in events if "position 1 of 1" in str(e.get("message", ""))
        )
        self.say(f"   {c.ninth}'s spawn page shows (KubeSpawner's progress, from the pod's Events):")
        self.show_events(events)
        self.passed("queued", "")

        self._current = "api"
        path = f"/users/{quote(c.ninth, safe='')}"

        async def queued_at_one() -> dict[str, Any] | None:
            status, answer = await self.api_get(path)
            ok = status == 200 and answer.get("state") == "queued" and answer.get("position") == 1
            return answer if ok else None

        answer = await self.wait_for(queued_at_one, API_SECONDS, f"the queue API to report {c.ninth} at position 1")
        self.say(f"   the queue API (GET {API_PREFIX}{path}, read token, the service's CA) answers:")
        for line in json.dumps(answer, indent=2).splitlines():
            self.say(f"     {line}")
        got = (answer.get("queueLength"), answer.get("capacity"), answer.get("inUse"))
        if got == (1, n, n):
            self.passed("api", "")
        else:
            self.fail("api", f"queueLength, capacity, inUse = {got}, want (1, {n}, {n})")

    async def cpu_user_starts(self) -> None:
        c = self.cast
        self.say(f'3. {c.cpu} starts a "{_profile_title(CPU_PROFILE)}" server while the GPU pool is full')
        started = time.monotonic()
        created = await self.spawn(c.cpu, CPU_PROFILE)
        name = _name(created)

        async def runs() -> dict[str, Any] | None:
            pod = await self.pod(name)
            return pod if pod is not None and _is_running(pod) else None

        pod = await self.wait_for(runs, START_SECONDS, f"the CPU-only pod {name} to run")
        self.facts.cpu_seconds = time.monotonic() - started
        self.facts.cpu_node = _node(pod)
        if self.gated(created) or self.config.pool_annotation in _meta(pod, "annotations"):
            self.fail("cpu", f"{name} was queued, but the CPU profile has no pool")
        else:
            self.passed("cpu", f"{self.facts.cpu_seconds:.1f}s, on {self.facts.cpu_node}")
        self.say(f"   never queued: running on {self.facts.cpu_node} after {self.facts.cpu_seconds:.1f}s")

    async def logout_and_grant(self) -> None:
        c = self.cast
        leaver, ninth = self.pod_of[c.leaver], self.pod_of[c.ninth]
        await self.past_settle_window(ninth)
        self.say(f"4. {c.leaver} logs out: the hub deletes pod {leaver}")
        left = time.monotonic()
        await self.logout(c.leaver)

        async def ungated() -> dict[str, Any] | None:
            pod = await self.pod(ninth)
            return pod if pod is not None and not self.gated(pod) else None

        await self.wait_for(ungated, GRANT_SECONDS, f"{ninth} to get the freed slice", interval=GRANT_POLL_SECONDS)
        latency = time.monotonic() - left
        self.facts.grant_latency = latency
        self.say(f"5. {c.ninth} gets the freed slice {latency:.3f}s after the logout")
        if latency <= GRANT_BUDGET_SECONDS:
            self.passed("grant", f"{latency * 1000:.0f} ms")
        else:
            self.fail("grant", f"{latency:.3f}s from the logout to the gate's removal: over budget")

        self._current = "granted-event"

        async def runs_and_told() -> list[dict[str, Any]] | None:
            pod = await self.pod(ninth)
            if pod is None or not _is_running(pod):
                return None
            events = await self.events(ninth)
            told = any(str(e.get("message", "")).startswith("GPU slice granted after") for e in events)
            return events if told else None

        events = await self.wait_for(
            runs_and_told, START_SECONDS, f"{ninth} to run and get the 'GPU slice granted' Event"
        )
        self.facts.granted_line = next(
            str(e.get("message", "")) for e in events if str(e.get("message", "")).startswith("GPU slice granted")
        )
        self.say(f"   {c.ninth}'s spawn page goes on:")
        self.show_events(events)
        self.passed("granted-event", "")

    async def past_settle_window(self, name: str) -> None:
        """Wait until ``name`` has been queued longer than the controller's order-settle window.

        A pod is never granted within that window of its arrival (so a concurrent spawn stamped a
        moment earlier is not overtaken, I2); with ``--pace 0`` the logout could come inside it,
        and the measured latency would be the window, not the grant path.
        """
        settle = self.config.controller.order_settle_seconds

        async def settled() -> bool:
            pod = await self.pod(name)
            since = _stamp(_meta(pod, "annotations").get(self.config.requested_at_annotation)) if pod else None
            return since is not None and (datetime.now(UTC) - since).total_seconds() > settle

        await self.wait_for(settled, settle + API_SECONDS, f"{name} to be queued for over {settle:g}s")

    async def final_state(self) -> None:
        n = self.slices
        pods = await self.pods()
        holders = sorted(nm for nm, pod in pods.items() if self._pool_of(pod) and not self.gated(pod))
        waiting = sorted(nm for nm, pod in pods.items() if self._pool_of(pod) and self.gated(pod))
        expected = sorted(self.pod_of[u] for u in (*self.cast.gpu, self.cast.ninth) if u != self.cast.leaver)
        if holders == expected and not waiting:
            self.passed("capacity", "")
        else:
            raise StoryFailed(
                f"{len(holders)} of {n} slices in use, {len(waiting)} waiting; "
                f"unexpected holders: {sorted(set(holders) ^ set(expected)) or 'none'}"
            )

    # ------------------------------------------------------------------ hub actions

    async def spawn(self, user: str, profile: str) -> dict[str, Any]:
        """Create the pod KubeSpawner builds for ``user``'s default server, as the hub does."""
        from gpu_queue_dev.spawnerpods import pod_manifest  # needs the hub extra; checked before start

        pod = await pod_manifest(user, profile, "", namespace=self.namespace)
        name = _name(pod)
        try:
            created = await self.kube.request("POST", f"/api/v1/namespaces/{self.namespace}/pods", body=pod)
        except KubeError as exc:
            raise StoryFailed(f"creating {user}'s pod {name} failed: {exc.status} {exc.reason}") from None
        self.order.append(name)
        self.pod_of[user] = name
        await self.refresh()
        return created

    async def logout(self, user: str) -> None:
        """What the hub does on logout or cull: delete the pod (grace 0: kwok has no kubelet)."""
        name = self.pod_of[user]
        try:
            await self.kube.delete_if_present(pod_path(self.namespace, name), grace_seconds=0)
        except KubeError as exc:
            raise StoryFailed(f"deleting {user}'s pod {name} failed: {exc.status} {exc.reason}") from None
        self.logged_out[name] = (user, GPU_PROFILE)

    # ------------------------------------------------------------------ reading

    def gated(self, pod: dict[str, Any]) -> bool:
        gates = (pod.get("spec") or {}).get("schedulingGates") or []
        return any(g.get("name") == self.config.gate_name for g in gates)

    def _pool_of(self, pod: dict[str, Any]) -> str | None:
        return _meta(pod, "annotations").get(self.config.pool_annotation)

    @property
    def gpu_node(self) -> str:
        return self.cluster.gpu_node

    async def pods(self) -> dict[str, dict[str, Any]]:
        """The hub's single-user pods that are not being deleted."""
        listing = await self.kube.request(
            "GET", f"/api/v1/namespaces/{self.namespace}/pods", query={"labelSelector": self.selector}
        )
        items = listing.get("items") or []
        return {_name(p): p for p in items if not p["metadata"].get("deletionTimestamp")}

    async def pod(self, name: str) -> dict[str, Any] | None:
        return await self.kube.get_if_present(pod_path(self.namespace, name))

    async def events(self, name: str) -> list[dict[str, Any]]:
        """Every Event of the pod, oldest first: what KubeSpawner's progress shows."""
        listing = await self.kube.request(
            "GET",
            f"/api/v1/namespaces/{self.namespace}/events",
            query={"fieldSelector": f"involvedObject.name={name}"},
        )
        return sorted(listing.get("items") or [], key=_event_order)

    async def api_get(self, path: str) -> tuple[int, dict[str, Any]]:
        """One queue API call with the read token, verified against the service's CA."""
        url = URL(f"{self.cluster.api_url(0)}{API_PREFIX}{path}", encoded=True)
        headers = {"Authorization": f"Bearer {self.cluster.read_token}", "Accept": "application/json"}
        async with self.http.get(url, headers=headers, ssl=self.tls) as response:
            data = await response.json(content_type=None)
            return response.status, data if isinstance(data, dict) else {}

    # ------------------------------------------------------------------ the table

    async def refresh(self) -> None:
        """Read the pods and the queue and redraw the table (a failed read keeps the old one)."""
        try:
            pods = await self.pods()
            status, raw = await self.api_get(f"/pools/{quote(self.pool, safe='')}/queue")
            listing = QueueListing.model_validate(raw) if status == 200 else None
        except (KubeError, aiohttp.ClientError, OSError, TimeoutError, ValidationError):
            return
        self.screen.table(self.render(pods, listing, datetime.now(UTC)))

    def render(self, pods: dict[str, dict[str, Any]], listing: QueueListing | None, now: datetime) -> str:
        positions = {e.name: e.position for e in listing.entries} if listing is not None else {}
        names = [nm for nm in self.order if nm in pods or nm in self.logged_out]
        names += sorted(nm for nm in pods if nm not in self.order)
        rows: list[list[str]] = []
        for nm in names:
            pod = pods.get(nm)
            if pod is None:
                who, slug = self.logged_out[nm]
                rows.append([who, _profile_short(slug), "logged out", "-", "-"])
                continue
            shown = _meta(pod, "annotations").get("hub.jupyter.org/username") or nm
            profile = _meta(pod, "labels").get(self.config.profile_label)
            state = self._state(pod, positions)
            rows.append([shown, _profile_short(profile), state, _node(pod) or "-", self._waited(pod, now)])
        if listing is not None:
            head = (
                f"pods in {self.namespace}: {listing.in_use} of {listing.capacity} {listing.resource} in use, "
                f"{listing.queue_length} queued"
            )
        else:
            head = f"pods in {self.namespace}"
        return head + "\n" + render_table(["USER", "PROFILE", "STATE", "NODE", "WAITED"], rows)

    def _state(self, pod: dict[str, Any], positions: dict[str, int]) -> str:
        if self.gated(pod):
            position = positions.get(_name(pod))
            return f"queued #{position}" if position is not None else "queued"
        if self._pool_of(pod):
            return "holding" if _is_running(pod) else "granted, starting"
        return "running" if _is_running(pod) else "starting"

    def _waited(self, pod: dict[str, Any], now: datetime) -> str:
        """From the durable arrival time to the grant (or now, while queued); CPU pods never wait."""
        annotations = _meta(pod, "annotations")
        since = _stamp(annotations.get(self.config.requested_at_annotation))
        if since is None:
            return "-"
        until = _stamp(annotations.get(self.config.admitted_at_annotation))
        if until is None and not self.gated(pod):
            return "-"
        return format_duration(((until or now) - since).total_seconds())

    async def live(self) -> None:
        """On a terminal: redraw the table a few times a second until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(REFRESH_SECONDS)

    async def snapshot(self) -> None:
        await self.refresh()
        self.screen.snapshot()

    # ------------------------------------------------------------------ plumbing

    def say(self, text: str) -> None:
        self.screen.say(text)

    def show_events(self, events: list[dict[str, Any]]) -> None:
        """The spawn page's new lines: Events not shown before, oldest first."""
        for event in events:
            uid = str(event["metadata"].get("uid") or event["metadata"]["name"])
            if uid not in self.shown_events:
                self.shown_events.add(uid)
                self.say(f"     {_spawn_page_line(event)}")

    async def pause(self, fraction: float = 1.0) -> None:
        """A beat between story steps so a person can follow; ``--pace 0`` skips it."""
        if self.pace > 0:
            await asyncio.sleep(self.pace * fraction)

    def passed(self, key: str, detail: str) -> None:
        self.checks[key].ok, self.checks[key].detail = True, detail

    def fail(self, key: str, reason: str) -> None:
        self.checks[key].ok, self.checks[key].detail = False, reason

    async def wait_for(
        self,
        check: Callable[[], Awaitable[T | None]],
        within: float,
        what: str,
        interval: float = POLL_SECONDS,
    ) -> T:
        """Poll ``check`` until it returns something truthy; StoryFailed naming ``what`` after
        ``within`` seconds (with the last error, if a read kept failing)."""
        deadline = time.monotonic() + within
        last: BaseException | None = None
        while True:
            try:
                value = await check()
            except (KubeError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = exc
            else:
                if value:
                    return value
            if time.monotonic() >= deadline:
                detail = f" (last error: {last})" if last is not None else ""
                raise StoryFailed(f"timed out after {within:.0f}s waiting for {what}{detail}")
            await asyncio.sleep(interval)


# ------------------------------------------------------------------------------------- summary


def render_summary(outcome: Outcome, cast: Cast, slices: int) -> str:
    """What happened, the grant latency, and every check with its result."""
    f = outcome.facts
    lines = ["summary"]
    happened: list[str] = []
    if f.fill_seconds is not None:
        happened.append(
            f"{slices} GPU users ({cast.gpu[0]} ... {cast.gpu[-1]}) took the {slices} slices in {f.fill_seconds:.1f}s"
        )
    if f.waiting_line:
        happened.append(f'{cast.ninth} was queued; the spawn page said "{f.waiting_line}"')
    if f.cpu_seconds is not None:
        happened.append(f"{cast.cpu} (CPU only) started at once ({f.cpu_seconds:.1f}s) while the GPU pool was full")
    if f.grant_latency is not None:
        happened.append(f"{cast.leaver} logged out; {cast.ninth} got the slice {f.grant_latency:.3f}s later")
    if f.granted_line:
        happened.append(f'{cast.ninth}\'s spawn page said "{f.granted_line}"')
    if happened:
        lines.append("  what happened:")
        lines += [f"    - {line}" for line in happened]
    if f.grant_latency is not None:
        lines.append(f"  grant latency (logout to slice granted): {f.grant_latency * 1000:.0f} ms")
    lines.append("  checks:")
    width = max((len(c.label) for c in outcome.checks.values()), default=6) + 2
    for check in outcome.checks.values():
        detail = "" if not check.detail else f": {check.detail}" if check.ok is False else f" ({check.detail})"
        lines.append(f"    {('[' + check.label + ']').ljust(width)} {check.title}{detail}")
    timing = f"cluster start {outcome.startup_seconds:.1f}s, story {outcome.story_seconds:.1f}s"
    total = len(outcome.checks)
    if outcome.passed:
        lines.append(f"  result: all {total} checks passed ({timing})")
    else:
        failed = [c for c in outcome.checks.values() if c.ok is False]
        reason = outcome.failure or (failed[0].detail if failed else "the story did not finish")
        lines.append(f"  result: FAILED, {len(failed)} of {total} checks failed ({timing})")
        lines.append(f"  reason: {reason}")
    return "\n".join(lines)


def usage_after_keep(cluster: DevCluster) -> str:
    """How to look at the cluster the demo left up."""
    st = cluster.state
    return "\n".join(
        [
            "the cluster stays up (--keep); use it:",
            f"  export KUBECONFIG={st.kubeconfig}",
            f"  kubectl get pods -n {st.hub_namespace}",
            f"  gpu-queue status --api {cluster.api_url(st.webhook_replica)} --ca {st.ca_file} "
            f"--token {st.admin_token}",
            f"  gpu-queue dev down --state-dir {st.state_dir}",
            f"  (also in {st.state_dir / 'env.sh'}; logs in {cluster.logs})",
        ]
    )


# ---------------------------------------------------------------------------------------- driver


async def _play(cluster: DevCluster, screen: Screen, pace: float, outcome: Outcome) -> None:
    """Start the cluster, play the story, fill ``outcome``; leaves stopping to the caller."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)  # SIGTERM tears down like Ctrl-C
    try:
        await _play_inner(cluster, screen, pace, outcome)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _play_inner(cluster: DevCluster, screen: Screen, pace: float, outcome: Outcome) -> None:
    screen.say(f"starting a dev cluster in {cluster.state_dir}")
    try:
        await cluster.start()
    except DevClusterError as exc:
        outcome.failure = f"the dev cluster did not start: {exc}"
        return
    outcome.started = True
    outcome.startup_seconds = cluster.state.startup_seconds
    st = cluster.state
    screen.say(
        f"  Kubernetes {st.kubernetes_version}; node {st.gpu_node} with {st.slices} nvidia.com/gpu, "
        f"node {st.cpu_node}; hub namespace {st.hub_namespace}; gpu-queue at {cluster.api_url(0)}"
    )
    screen.say()
    kube = Kube(await load_client(cluster.kubeconfig))
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            story = Story(cluster, kube, http, screen, pace)
            outcome.checks = story.checks
            outcome.facts = story.facts
            refresher = asyncio.create_task(story.live()) if screen.live else None
            try:
                await story.play()
            except StoryFailed as exc:
                outcome.failure = str(exc)
            finally:
                if refresher is not None:
                    refresher.cancel()
                    await asyncio.gather(refresher, return_exceptions=True)
                    await story.refresh()
                screen.freeze()
    finally:
        outcome.story_seconds = time.monotonic() - started
        await kube.aclose()


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """Teardown must finish: a second Ctrl-C would otherwise leave processes behind."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _teardown(cluster: DevCluster, say: Callable[[str], None]) -> list[str]:
    """Stop every process; the names of any that would not stop."""
    started = time.monotonic()
    with _signals_ignored():
        result = cluster.stop()
    left = [f"{name} ({what})" for name, what in result.items() if what.startswith("still running")]
    forced = [name for name, what in result.items() if what.startswith("killed")]
    note = f"; {', '.join(forced)} needed SIGKILL" if forced else ""
    say(
        f"stopped the dev cluster ({len(result)} processes, {time.monotonic() - started:.1f}s{note}); "
        f"logs kept in {cluster.logs}"
    )
    return left


def _running_cluster(state_dir: Path) -> str | None:
    """Why the demo cannot use ``state_dir`` (a dev cluster is up there), or None."""
    try:
        state = load_state(state_dir)
    except (OSError, ValueError) as exc:
        return f"cannot read the dev cluster state in {state_dir}: {exc}"
    if state is None:
        return None
    alive = [name for name, p in state.processes.items() if pid_matches(p.pid, p.start_time)]
    if not alive:
        return None
    return (
        f"a dev cluster is already running in {state_dir} ({', '.join(alive)}).\n"
        "The demo starts its own cluster with an empty hub namespace. Stop that one first:\n"
        f"  gpu-queue dev down --state-dir {state_dir}\n"
        "or play the demo in another directory: gpu-queue demo --state-dir DIR"
    )


def _preflight(args: argparse.Namespace, state_dir: Path) -> str | None:
    """Everything that can be said before starting anything: the reason not to start, or None."""
    if args.slices < 1:
        return f"--slices must be at least 1 (the story fills the GPU pool), got {args.slices}"
    if args.pace < 0:
        return f"--pace must be 0 or more seconds, got {args.pace}"
    running = _running_cluster(state_dir)
    if running is not None:
        return running
    missing = missing_cluster_tools()
    if missing:
        return (
            f"missing tools: {', '.join(missing)}\n"
            "build them once with `make setup` (or tools/build.sh from the repository); "
            "a cold build takes 15-30 minutes, later runs use the cache"
        )
    try:
        import kubespawner  # noqa: F401
    except ImportError:
        return "jupyterhub-kubespawner is not installed (the demo builds pods with it): pip install 'gpu-queue[hub]'"
    return None


def run_demo(args: argparse.Namespace) -> int:
    """``gpu-queue demo``: 0 when the story happened as the design says, 1 when it did not, 2 when
    it could not start (missing tools, a cluster already up), 130/143 when interrupted."""
    out = sys.stdout
    state_dir = Path(args.state_dir).expanduser().resolve()
    reason = _preflight(args, state_dir)
    if reason is not None:
        print(f"gpu-queue demo: {reason}", file=sys.stderr, flush=True)
        return 2
    screen = Screen(out, _is_terminal(out))
    screen.say("gpu-queue demo: the seed story on a local control plane (no Docker needed)")
    screen.say(
        f"  {args.slices} users fill a GPU time-sliced into {args.slices}; one more queues and is told where it "
        "stands;\n  a CPU user starts at once; a GPU user logs out and the queued one gets the slice."
    )
    screen.say()
    cluster = DevCluster(state_dir, slices=args.slices, replicas=1, progress=lambda line: screen.say(f"  {line}"))
    outcome = Outcome(checks={}, facts=Facts())
    interrupted = 0
    try:
        asyncio.run(_play(cluster, screen, args.pace, outcome))
    except KeyboardInterrupt:
        interrupted = 130
    except asyncio.CancelledError:
        interrupted = 143  # SIGTERM
    except Exception as exc:  # a bug or an unexpected answer: still tear down, and show where
        screen.freeze()
        traceback.print_exc()
        outcome.failure = f"unexpected error: {exc.__class__.__name__}: {exc}"
        outcome.started = False
    screen.freeze()
    if interrupted:
        screen.say("interrupted: stopping the dev cluster")
        _teardown(cluster, screen.say)
        return interrupted
    if not outcome.started:
        print(f"gpu-queue demo: {outcome.failure}", file=sys.stderr, flush=True)
        _teardown(cluster, screen.say)
        return 1
    screen.say(render_summary(outcome, cast_for(cluster.state.slices), cluster.state.slices))
    screen.say()
    if args.keep:
        screen.say(usage_after_keep(cluster))
    else:
        left = _teardown(cluster, screen.say)
        if left:
            screen.say(f"gpu-queue demo: processes left behind: {', '.join(left)}")
            return 1
    return 0 if outcome.passed else 1
