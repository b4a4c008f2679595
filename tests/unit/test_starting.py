"""Stuck heads vs slow starts: what a granted pod's status and Events say about its start, and what
the leader does past ``admitTimeoutSeconds`` (release the stuck, keep the slow and tell them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from webhook.config import load_config
from webhook.controller.cache import WatchCache
from webhook.controller.events import EventWriter
from webhook.controller.stuck import StuckHeads
from webhook.kube import Kube
from webhook.starting import Stage, start_state, with_events

CONFIG = load_config(env={"GPU_QUEUE_POOLS__GPU__ADMIT_TIMEOUT_SECONDS": "600"})
GRANTED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def granted_pod(name: str = "jupyter-alice", *, node: str = "gpu-1", status: dict[str, Any] | None = None) -> Any:
    spec: dict[str, Any] = {"containers": [{"name": "notebook"}]}
    if node:
        spec["nodeName"] = node
    return {
        "metadata": {
            "namespace": "jhub",
            "name": name,
            "uid": f"uid-{name}",
            "resourceVersion": "7",
            "labels": {"component": "singleuser-server"},
            "annotations": {
                CONFIG.pool_annotation: "gpu",
                CONFIG.requested_at_annotation: "2026-12-01T11:50:00Z",
                CONFIG.admitted_at_annotation: "2026-12-01T12:00:00Z",
            },
        },
        "spec": spec,
        "status": {"phase": "Pending", **(status or {})},
    }


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"containerStatuses": [{"name": "notebook", "state": {"waiting": {"reason": reason, "message": message}}}]}


def event(reason: str, message: str, at: str, kind: str = "Normal") -> dict[str, Any]:
    return {
        "reason": reason,
        "message": message,
        "lastTimestamp": at,
        "type": kind,
        "involvedObject": {"uid": "uid-jupyter-alice"},
    }


# ----------------------------------------------------------------------------- the classifier


@pytest.mark.parametrize(
    ("status", "node", "stage", "reason"),
    [
        ({"conditions": [{"type": "Ready", "status": "True"}]}, "gpu-1", Stage.READY, ""),
        (
            {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                             "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]},
            "", Stage.UNSCHEDULED, "Unschedulable",
        ),
        ({}, "", Stage.UNSCHEDULED, "NotScheduled"),
        (waiting("ContainerCreating"), "gpu-1", Stage.STARTING, "ContainerCreating"),
        (waiting("PodInitializing"), "gpu-1", Stage.STARTING, "PodInitializing"),
        (waiting("ErrImagePull", "rpc error: not found"), "gpu-1", Stage.FAILING, "ErrImagePull"),
        (waiting("ImagePullBackOff", "Back-off pulling image"), "gpu-1", Stage.FAILING, "ImagePullBackOff"),
        (waiting("CrashLoopBackOff", "back-off 5m0s restarting"), "gpu-1", Stage.FAILING, "CrashLoopBackOff"),
        (waiting("CreateContainerConfigError", 'secret "x" not found'), "gpu-1", Stage.FAILING,
         "CreateContainerConfigError"),
        ({"containerStatuses": [{"name": "notebook", "state": {"running": {"startedAt": "2026-12-01T12:01:00Z"}}}]},
         "gpu-1", Stage.STARTED, ""),
        ({"initContainerStatuses": [{"name": "block-metadata", "state": {"running": {}}}],
          "containerStatuses": [{"name": "notebook", "state": {"waiting": {"reason": "PodInitializing"}}}]},
         "gpu-1", Stage.STARTING, "PodInitializing"),
        ({"phase": "Failed", "reason": "Evicted", "message": "node low on memory"}, "gpu-1", Stage.FAILING, "Evicted"),
        ({}, "gpu-1", Stage.SILENT, "NoStatus"),
    ],
)  # fmt: skip
def test_the_stage_of_a_start_is_read_from_the_pods_status(
    status: dict[str, Any], node: str, stage: Stage, reason: str
) -> None:
    state = start_state(granted_pod(node=node, status=status))
    assert (state.stage, state.reason) == (stage, reason)
    assert state.stuck is (stage in (Stage.UNSCHEDULED, Stage.FAILING, Stage.SILENT))


def test_a_pod_being_created_is_judged_by_its_latest_event() -> None:
    creating = start_state(granted_pod(status=waiting("ContainerCreating")))
    pulling = with_events(
        creating,
        [event("Scheduled", "assigned", "2026-12-01T12:00:01Z"),
         event("Pulling", 'Pulling image "cuda:12.8-devel"', "2026-12-01T12:00:02Z")],
    )  # fmt: skip
    assert (pulling.stage, pulling.reason, pulling.stuck) == (Stage.STARTING, "Pulling", False)
    assert 'Pulling image "cuda:12.8-devel"' in pulling.describe()
    mount = with_events(
        creating,
        [event("Pulling", "Pulling image", "2026-12-01T12:00:02Z"),
         event("FailedMount", 'MountVolume.SetUp failed for volume "home"', "2026-12-01T12:08:00Z", "Warning")],
    )  # fmt: skip
    assert (mount.stage, mount.reason, mount.stuck) == (Stage.FAILING, "FailedMount", True)
    recovered = with_events(
        creating,
        [event("FailedMount", "timed out", "2026-12-01T12:02:00Z", "Warning"),
         event("Pulling", "Pulling image", "2026-12-01T12:03:00.5Z")],
    )  # fmt: skip
    assert not recovered.stuck, "a mount that failed and then went on to the pull is progress"
    assert with_events(creating, []) == creating


def test_events_refine_only_a_pod_being_created() -> None:
    crash = start_state(granted_pod(status=waiting("CrashLoopBackOff")))
    assert with_events(crash, [event("Pulling", "x", "2026-12-01T12:09:00Z")]) == crash


# -------------------------------------------------------------------------- the leader's choice


class EventsApi(Kube):
    """Answers the Events list; records every write."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        super().__init__(None, timeout=1.0)  # type: ignore[arg-type]  # no client: nothing is sent
        self.events = events
        self.writes: list[tuple[str, str]] = []
        self.lists = 0

    async def request(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        if method == "GET" and path.endswith("/events"):
            self.lists += 1
            return {"items": self.events}
        self.writes.append((method, path))
        return {}


async def judge(pod: Any, events: list[dict[str, Any]], after: timedelta) -> tuple[EventsApi, list[str], StuckHeads]:
    api = EventsApi(events)
    cache = WatchCache(CONFIG)
    cache.pod_changed("ADDED", pod)
    writer = EventWriter(api, "gpu-queue-0")
    stuck = StuckHeads(CONFIG, api, cache, writer)
    await stuck.check("gpu", cache.plans()["gpu"], GRANTED + after)
    said = []
    while not writer.queue.empty():
        _view, reason, message, kind = writer.queue.get_nowait()
        said.append(f"{kind} {reason}: {message}")
    return api, said, stuck


async def test_a_large_image_still_pulling_past_the_timeout_keeps_its_slice_and_is_told_so() -> None:
    pod = granted_pod(status=waiting("ContainerCreating"))
    api, said, stuck = await judge(pod, [event("Pulling", 'Pulling image "cuda:12.8"', "2026-12-01T12:00:02Z")],
                                   timedelta(minutes=11))  # fmt: skip
    assert api.writes == [], "a pull in progress is never released or deleted"
    assert len(said) == 1 and said[0].startswith("Normal SlowStart: GPU slice granted 11m00s ago")
    assert 'Pulling image "cuda:12.8"' in said[0] and "the slice is kept" in said[0]
    again = cache_of(stuck)
    await stuck.check("gpu", again, GRANTED + timedelta(minutes=11, seconds=1))
    assert api.lists == 1, "the Events are read again only after a while"
    assert stuck.events.queue.empty(), "told once"


def cache_of(stuck: StuckHeads) -> Any:
    return stuck.cache.plans()["gpu"]


@pytest.mark.parametrize(
    ("status", "node", "events", "why"),
    [
        (waiting("ImagePullBackOff", "Back-off pulling image"), "gpu-1", [], "ImagePullBackOff"),
        (waiting("CrashLoopBackOff", "back-off 5m0s"), "gpu-1", [], "CrashLoopBackOff"),
        (waiting("ContainerCreating"), "gpu-1",
         [event("FailedMount", "MountVolume.SetUp failed", "2026-12-01T12:09:00Z", "Warning")], "FailedMount"),
        ({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                          "message": "0/2 nodes are available"}]}, "", [], "could not be scheduled"),
        ({}, "gpu-1", [], "its node has not started it"),
    ],
)  # fmt: skip
async def test_a_stuck_head_is_released_and_the_user_is_told_why(
    status: dict[str, Any], node: str, events: list[dict[str, Any]], why: str
) -> None:
    api, said, _ = await judge(granted_pod(node=node, status=status), events, timedelta(minutes=11))
    assert [m for m, _ in api.writes] == ["PATCH", "DELETE"], "marked released, then deleted"
    assert len(said) == 1 and said[0].startswith("Warning StuckAdmission: GPU slice granted 11m00s ago but")
    assert why in said[0] and "releasing it for the next user" in said[0]


@pytest.mark.parametrize(
    "status",
    [waiting("ImagePullBackOff"), {"containerStatuses": [{"name": "notebook", "state": {"running": {}}}]}],
)
async def test_nothing_is_judged_before_the_timeout_and_a_running_server_never(status: dict[str, Any]) -> None:
    early, said, _ = await judge(granted_pod(status=status), [], timedelta(minutes=9))
    assert early.writes == [] and said == []
    if "containerStatuses" in status and "running" in status["containerStatuses"][0]["state"]:
        # Its containers run (on a node that went NotReady, say): readiness is the hub's to time out.
        late, said, _ = await judge(granted_pod(status=status), [], timedelta(hours=2))
        assert late.writes == [] and said[0].startswith("Normal SlowStart")


async def test_a_slow_pull_that_turns_into_a_pull_error_is_released_then() -> None:
    pod = granted_pod(status=waiting("ContainerCreating"))
    api, said, stuck = await judge(pod, [event("Pulling", "Pulling image", "2026-12-01T12:00:02Z")],
                                   timedelta(minutes=11))  # fmt: skip
    assert api.writes == [] and said[0].startswith("Normal SlowStart")
    failed = granted_pod(status=waiting("ImagePullBackOff", "Back-off pulling image"))
    failed["metadata"]["resourceVersion"] = "8"
    stuck.cache.pod_changed("MODIFIED", failed)
    await stuck.check("gpu", cache_of(stuck), GRANTED + timedelta(minutes=14))
    assert [m for m, _ in api.writes] == ["PATCH", "DELETE"]
    _, reason, message, kind = stuck.events.queue.get_nowait()
    assert (kind, reason) == ("Warning", "StuckAdmission") and "ImagePullBackOff" in message


def test_within_one_second_the_api_servers_order_decides_which_event_is_latest() -> None:
    """The kubelet's lastTimestamp has whole seconds and the scheduler's eventTime microseconds:
    a pull started in the same second as a FailedMount retry is ordered by resourceVersion."""
    creating = start_state(granted_pod(status=waiting("ContainerCreating")))
    mount = {
        **event("FailedMount", "timed out", "2026-12-01T12:05:00Z", "Warning"),
        "metadata": {"resourceVersion": "41"},
    }
    pull = {**event("Pulling", "Pulling image", "2026-12-01T12:05:00Z"), "metadata": {"resourceVersion": "42"}}
    scheduled = {
        "reason": "Scheduled",
        "eventTime": "2026-12-01T12:05:00.900000Z",
        "metadata": {"resourceVersion": "40"},
    }
    assert with_events(creating, [pull, scheduled, mount]).reason == "Pulling"
    assert with_events(creating, [{**mount, "metadata": {"resourceVersion": "43"}}, pull]).reason == "FailedMount"
