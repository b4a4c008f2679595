"""How a granted pod's start is going, read from its status (and, when that is not enough, from
its Events): the difference between a stuck head and a slow start.

A CUDA image of several GB can take longer than ``admitTimeoutSeconds`` to pull; that pod is
making progress and keeps its slice. A pod the scheduler cannot place, or whose start fails (an
image that cannot be pulled, a container that crashes again and again, a volume that never
mounts), is stuck: it holds a slice the next user could use. Pure: no I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from webhook.pods import parse_time


class Stage(Enum):
    """Where a granted pod is on its way to Ready."""

    READY = "ready"
    STARTED = "started"  # its containers run; readiness is the server's (and the hub's) business
    STARTING = "starting"  # on a node, being created: pulling images, mounting volumes, init containers
    UNSCHEDULED = "unscheduled"  # not on a node
    FAILING = "failing"  # its start fails and is retried with backoff
    SILENT = "silent"  # on a node whose kubelet has said nothing about it


# Container waiting reasons of a start that fails (kubelet's names); ContainerCreating and
# PodInitializing are progress.
FAILING_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "PreStartHookError",
        "PostStartHookError",
    }
)
# Event reasons of a start that fails while the containers still wait in ContainerCreating.
FAILING_EVENTS = frozenset(
    {"FailedMount", "FailedAttachVolume", "FailedCreatePodSandBox", "FailedCreatePodContainer", "FailedSync"}
)
# The kubelet's (and attach controller's) Events of a start going on; the scheduler's Scheduled
# always comes before them and says nothing about the start.
PROGRESS_EVENTS = frozenset({"Pulling", "Pulled", "SuccessfulAttachVolume", "Created", "Started"})


@dataclass(frozen=True)
class StartState:
    stage: Stage
    reason: str = ""  # the kubelet's or scheduler's word for it (``ImagePullBackOff``, ``Unschedulable``)
    message: str = ""  # what it said, for the user's Event

    @property
    def stuck(self) -> bool:
        """No progress to wait for: the slice is better used by the next user."""
        return self.stage in (Stage.UNSCHEDULED, Stage.FAILING, Stage.SILENT)

    def describe(self) -> str:
        """One phrase for an Event: why the server is not ready yet."""
        words = {
            Stage.READY: "it is ready",
            Stage.STARTED: "it is running and not ready yet",
            Stage.STARTING: "it is still starting",
            Stage.UNSCHEDULED: "it could not be scheduled",
            Stage.FAILING: "its start keeps failing",
            Stage.SILENT: "its node has not started it",
        }[self.stage]
        detail = ": ".join(part for part in (self.reason, _short(self.message)) if part)
        return f"{words} ({detail})" if detail else words


NO_STATUS = StartState(Stage.SILENT, "NoStatus", "the node's kubelet has reported nothing for it")


def start_state(pod: Mapping[str, Any]) -> StartState:
    """The stage of the pod's start from its spec and status alone."""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
    if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
        return StartState(Stage.READY)
    if not spec.get("nodeName"):
        scheduled = next((c for c in conditions if c.get("type") == "PodScheduled"), None)
        if scheduled is not None and scheduled.get("status") == "False":
            return StartState(
                Stage.UNSCHEDULED, str(scheduled.get("reason") or ""), str(scheduled.get("message") or "")
            )
        return StartState(Stage.UNSCHEDULED, "NotScheduled", "the scheduler has not placed it")
    statuses = _container_statuses(status)
    for container in statuses:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = str(waiting.get("reason") or "")
        if reason in FAILING_WAITING:
            return StartState(Stage.FAILING, reason, str(waiting.get("message") or ""))
    main = [c for c in status.get("containerStatuses") or [] if isinstance(c, dict)]
    if main and all("running" in (c.get("state") or {}) for c in main):
        return StartState(Stage.STARTED)
    if status.get("phase") == "Failed":
        return StartState(Stage.FAILING, str(status.get("reason") or "Failed"), str(status.get("message") or ""))
    if statuses or any(c.get("type") in ("PodReadyToStartContainers", "Initialized") for c in conditions):
        reasons = [str(((c.get("state") or {}).get("waiting") or {}).get("reason") or "") for c in statuses]
        return StartState(Stage.STARTING, next((r for r in reasons if r), ""))
    return NO_STATUS


def with_events(state: StartState, events: Iterable[Mapping[str, Any]]) -> StartState:
    """Refine a ``STARTING`` pod by its latest Event: a volume that never mounts or a sandbox that
    cannot be made is a failing start; a pull in progress is named as such."""
    if state.stage is not Stage.STARTING:
        return state
    latest = _latest(events)
    if latest is None:
        return state
    reason = str(latest.get("reason") or "")
    message = str(latest.get("message") or "")
    if reason in FAILING_EVENTS:
        return StartState(Stage.FAILING, reason, message)
    if reason == "Pulling":
        return StartState(Stage.STARTING, "Pulling", message)
    return state


def _container_statuses(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found: list[Mapping[str, Any]] = []
    for key in ("initContainerStatuses", "containerStatuses"):
        found.extend(c for c in status.get(key) or [] if isinstance(c, dict))
    return found


def _latest(events: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The Event last seen: by its time to the second (the kubelet's lastTimestamp has no more;
    eventTime's microseconds are dropped so the two compare), then by resourceVersion (the API
    server's order of writes) within a second."""

    def when(event: Mapping[str, Any]) -> tuple[datetime, int]:
        series = event.get("series") or {}
        version = str((event.get("metadata") or {}).get("resourceVersion") or "")
        order = int(version) if version.isdigit() else 0
        for text in (series.get("lastObservedTime"), event.get("lastTimestamp"), event.get("eventTime")):
            stamp = parse_time(text) if isinstance(text, str) else None
            if stamp is not None:
                return stamp.replace(microsecond=0), order
        return datetime.min.replace(tzinfo=UTC), order

    ordered = sorted(events, key=when)
    relevant = [e for e in ordered if str(e.get("reason") or "") in FAILING_EVENTS | PROGRESS_EVENTS]
    return relevant[-1] if relevant else None


def _short(message: str, limit: int = 200) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"
