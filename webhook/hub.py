"""The hub side of gpu-queue: a KubeSpawner that shows the live queue position and does not time out
while a user waits for a GPU slice.

Stock KubeSpawner already works with gpu-queue (the controller writes the position as pod Events,
which the spawn page shows). This subclass adds what Events cannot do:

* a live message on the spawn page (``Waiting for a GPU slice: position 2 of 4, about 5-10 min``),
  polled from the queue API at the interval the API suggests, with the progress bar held still;
  each such progress event also carries the figures as data (``gpu_queue``: ``queue_fields``), so
  a page template can show them its own way while the stock page keeps the plain message;
* a long ``start_timeout`` for queued profiles only, set *before* the hub starts its outer
  ``wait_for(start(), start_timeout)`` (``kubespawner_override`` is applied inside ``start()``,
  after the hub has read the timeout, so it cannot do this);
* scheduler text such as ``0/3 nodes are available: 3 Insufficient nvidia.com/gpu`` rewritten into
  words a user understands;
* the bar held ("Joining the queue ...") while the queue has not indexed a new pod yet, and
  KubeSpawner's "taking longer than expected" counted from the grant, not from the queue;
* a spawn whose pod gpu-queue released as stuck (or an admin removed) ended at once, with why;
* an optional policy: one GPU server per user, refused before the spawn starts (the spawn form),
  so that no JupyterHub version counts it towards ``consecutive_failure_limit`` (5.x counts every
  failed spawn; a refusal through the REST API is taken off its count).

When the API is unreachable it falls back to stock behaviour with one warning and no crash.

This module imports only what the zero-to-jupyterhub hub image ships (jupyterhub, kubespawner,
tornado, traitlets and the standard library) and nothing else from this package, so it can be
mounted into the hub as a single file (``hub.extraFiles``) without installing gpu-queue there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import quote, urlsplit, urlunsplit

from jupyterhub.utils import maybe_future
from kubespawner import KubeSpawner
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Bool, Float, Integer, List, Unicode, default

try:  # JupyterHub 6: a policy refusal; like any 4xx HTTPError, not counted towards consecutive_failure_limit
    from jupyterhub.spawner import SpawnException as _SpawnException
except ImportError:  # JupyterHub 5.x (zero-to-jupyterhub 4.x) counts every failed spawn, 4xx or not
    _SpawnException = None

ProgressEvent = dict[str, Any]

#: The state of a 404 answer: the queue API has seen no pod for this server (yet).
NOT_SEEN = "not-seen"

#: The controller's position Events (hidden while the fresher live line is shown).
QUEUE_COMPONENT = "gpu-queue"
QUEUE_EVENT_REASON = "Queued"
GRANT_EVENT_REASON = "SliceGranted"


class QueueApiError(Exception):
    """The queue API did not give a usable answer (unreachable, refused the token, bad JSON)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent  # retrying will not help (e.g. the token is rejected)


@dataclass(frozen=True)
class QueueStatus:
    """The fields of the API's position answer that the spawn page needs."""

    state: str  # queued | admitted | pending (seen, not indexed yet) | unknown | not-seen (404)
    pool: str | None = None
    position: int | None = None
    queue_length: int = 0
    capacity: int = 0
    in_use: int = 0
    eta_known: bool = False
    eta_min_seconds: float | None = None
    eta_max_seconds: float | None = None
    eta_method: str = ""  # how the API reached the estimate, or why it has none
    refresh_seconds: float = 10.0
    granted_at: datetime | None = None  # when the slice was granted (admitted answers)
    # A group limit holding this queued spawn back (heldBack): the group, its limit, its use.
    held_back: tuple[str, int, int] | None = None
    # groupPriority: how many are ahead by a better rank, per group (priority.ahead)
    priority_ahead: dict[str, int] | None = None
    stop_at: datetime | None = None  # the hold limit's stop of a warned holder (holdLimit.stopAt)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QueueStatus:
        """Parse the camelCase answer, tolerating missing optional fields (older servers)."""
        eta = data.get("eta") or {}
        return cls(
            state=str(data.get("state") or "unknown"),
            pool=data.get("pool"),
            position=_int_or_none(data.get("position")),
            queue_length=int(data.get("queueLength") or 0),
            capacity=int(data.get("capacity") or 0),
            in_use=int(data.get("inUse") or 0),
            eta_known=bool(eta.get("known", False)),
            eta_min_seconds=_float_or_none(eta.get("minSeconds")),
            eta_max_seconds=_float_or_none(eta.get("maxSeconds")),
            eta_method=str(eta.get("method") or ""),
            refresh_seconds=float(data.get("refreshSeconds") or 10.0),
            granted_at=_time_or_none(data.get("grantedAt")),
            held_back=_held_back(data.get("heldBack")),
            priority_ahead=_ahead(data.get("priority")),
            stop_at=_time_or_none((data.get("holdLimit") or {}).get("stopAt")),
        )

    @property
    def not_indexed_yet(self) -> bool:
        """The queue has not caught up with this spawn: the pod is new (pending), this replica's
        cache is syncing (unknown), or no replica has seen the pod yet (not-seen)."""
        return self.state in ("pending", "unknown", NOT_SEEN)


def _time_or_none(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _held_back(value: Any) -> tuple[str, int, int] | None:
    if not isinstance(value, Mapping) or not isinstance(value.get("group"), str):
        return None
    return (value["group"], int(value.get("limit") or 0), int(value.get("inUse") or 0))


def _ahead(value: Any) -> dict[str, int] | None:
    if not isinstance(value, Mapping) or not isinstance(value.get("ahead"), Mapping):
        return None
    return {str(k): int(v) for k, v in value["ahead"].items() if isinstance(v, int)}


def priority_text(status: QueueStatus) -> str:
    """``; ahead of you by priority: 2 in instructors`` (the controller's Events say the same)."""
    if not status.priority_ahead:
        return ""
    parts = [f"{count} in {group}" for group, count in status.priority_ahead.items()]
    return f"; ahead of you by priority: {', '.join(parts)} (groupPriority goes first)"


def joined_ahead(before: QueueStatus | None, now: QueueStatus) -> str:
    """Why the place got worse, when it is a better-ranked arrival: ``Someone in instructors
    joined the queue ahead of you (groupPriority). ``; empty otherwise."""
    if before is None or before.position is None or now.position is None or now.position <= before.position:
        return ""
    grew = [g for g, n in (now.priority_ahead or {}).items() if n > (before.priority_ahead or {}).get(g, 0)]
    if not grew:
        return ""
    return f"Someone in {' and '.join(grew)} joined the queue ahead of you (groupPriority). "


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def format_eta(known: bool, min_seconds: float | None, max_seconds: float | None) -> str:
    """A wait range in the words of the controller's Events (``about 5-10 min``, ``about 1-2 h``,
    ``wait time unknown``), so the live line and the Events never disagree in wording."""
    if not known or max_seconds is None:
        return "wait time unknown"
    low = max(min_seconds or 0.0, 0.0)
    high = max(max_seconds, low)
    if high <= 60:
        return "less than a minute"
    if high <= 3600:
        lo_m, hi_m = math.floor(low / 60), math.ceil(high / 60)
        if lo_m == hi_m:
            return f"about {hi_m} min"
        return f"under {hi_m} min" if lo_m == 0 else f"about {lo_m}-{hi_m} min"
    lo_h, hi_h = math.floor(low / 3600 + 0.5), math.ceil(high / 3600)
    if lo_h == hi_h:
        return f"about {hi_h} h"
    return f"under {hi_h} h" if lo_h == 0 else f"about {lo_h}-{hi_h} h"


def queue_message(status: QueueStatus, slice_name: str = "GPU slice") -> str | None:
    """The spawn-page line for a position answer; None when there is nothing to say yet."""
    if status.state == "admitted":
        return f"{slice_name[:1].upper()}{slice_name[1:]} granted: starting your server"
    if status.state != "queued" or status.position is None:
        return None
    length = max(status.queue_length, status.position)
    if status.held_back is not None:
        group, limit, in_use = status.held_back
        return (
            f"Waiting for a {slice_name}: position {status.position} of {length}; your group {group} holds "
            f"{in_use} of its {limit} slices, so you go when one of them is free (others go meanwhile)"
            f"{priority_text(status)}"
        )
    eta = format_eta(status.eta_known, status.eta_min_seconds, status.eta_max_seconds)
    return f"Waiting for a {slice_name}: position {status.position} of {length}, {eta}{priority_text(status)}"


def hold_message(status: QueueStatus, slice_name: str = "GPU slice") -> str | None:
    """The hold limit's warning for a running server, in the words of its Event; None if none."""
    if status.state != "admitted" or status.stop_at is None:
        return None
    return (
        f"Others are waiting for a {slice_name}: this server will be stopped at {status.stop_at:%H:%M} UTC, as it "
        "has held one longer than the limit while others wait. Save your work."
    )


#: How far back "moved up N places" looks.
MOVED_WINDOW_SECONDS = 600.0


class PlaceHistory:
    """Where one queued spawn stood lately: how many places it moved up in the last
    ``window`` seconds (or since it was first seen, when that is more recent)."""

    def __init__(self, window: float = MOVED_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._seen: list[tuple[float, int]] = []  # (when, position), a new entry per change

    def note(self, position: int) -> None:
        now = self.clock()
        if not self._seen or self._seen[-1][1] != position:
            self._seen.append((now, position))
        cutoff = now - self.window
        # Keep the newest sample at or before the cutoff: it is where the window starts.
        while len(self._seen) > 1 and self._seen[1][0] <= cutoff:
            self._seen.pop(0)

    def moved(self) -> tuple[int, float]:
        """(places moved up, seconds this looks back over); (0, 0.0) before any position."""
        if not self._seen:
            return 0, 0.0
        now = self.clock()
        since, start = self._seen[0]
        return max(0, start - self._seen[-1][1]), min(self.window, now - since)


def queue_fields(status: QueueStatus, history: PlaceHistory | None = None, joined: str = "") -> dict[str, Any]:
    """The figures of a progress event, as data (``event["gpu_queue"]``), from the queue API's
    answer only: a page shows these or says it does not know, it never makes them up."""
    fields: dict[str, Any] = {
        "state": status.state,
        "pool": status.pool,
        "position": status.position,
        "queueLength": max(status.queue_length, status.position or 0),
        "capacity": status.capacity,
        "inUse": status.in_use,
        "eta": {
            "known": status.eta_known,
            "minSeconds": status.eta_min_seconds,
            "maxSeconds": status.eta_max_seconds,
            "text": format_eta(status.eta_known, status.eta_min_seconds, status.eta_max_seconds),
            "why": status.eta_method,
        },
        # The place is kept while the page is closed: the pod waits, not the browser.
        "keepsPlace": status.state == "queued",
        "heldBack": (
            {"group": status.held_back[0], "limit": status.held_back[1], "inUse": status.held_back[2]}
            if status.held_back is not None
            else None
        ),
        "stopAt": status.stop_at.isoformat() if status.stop_at is not None else None,
        "priorityAhead": status.priority_ahead,
        "joinedAhead": joined or None,  # why the place just got worse (``joined_ahead``)
    }
    if history is not None and status.state == "queued":
        places, seconds = history.moved()
        fields["movedUp"] = {"places": places, "seconds": round(seconds)}
    return fields


def unreadable_message(slice_name: str = "GPU slice") -> str:
    """The spawn page's line when the queue API stops answering for a spawn it had queued."""
    return f"Still waiting for a {slice_name}, with your place kept; the queue cannot be read right now"


def unknown_fields(reason: str) -> dict[str, Any]:
    """``gpu_queue`` while the queue API cannot be read: no figure at all, and why."""
    return {"state": "unknown", "reason": reason, "keepsPlace": True}


_NODES_AVAILABLE = re.compile(r"^\s*0/(?P<nodes>\d+) nodes are available: (?P<reasons>.*)$", re.DOTALL)
_INSUFFICIENT = re.compile(r"(?P<count>\d+) Insufficient (?P<resource>[\w./-]*\w)")


def _resource_words(resource: str) -> str:
    return {"cpu": "CPU", "memory": "memory", "ephemeral-storage": "disk space", "pods": "room for more servers"}.get(
        resource, resource
    )


def friendly_scheduler_message(
    text: str, queued_resources: frozenset[str] = frozenset({"nvidia.com/gpu"})
) -> str | None:
    """Rewrite the scheduler's FailedScheduling text into words a user understands.

    Returns None when the text is not a scheduling failure this knows (it is then shown as is).
    """
    match = _NODES_AVAILABLE.match(text)
    if match is None:
        return None
    reasons = match.group("reasons").split(" preemption:", 1)[0]
    short = {m.group("resource") for m in _INSUFFICIENT.finditer(reasons)}
    gpu_short = sorted(short & queued_resources)
    other_short = sorted(short - queued_resources)
    if gpu_short:
        return (
            "All GPU slices are in use right now. Your server starts as soon as one is free: keep this page "
            "open, you do not need to retry."
        )
    if other_short:
        what = " and ".join(_resource_words(r) for r in other_short)
        return (
            f"The cluster has no free {what} for this profile right now. It may be adding a node; if this "
            "lasts more than a few minutes, try a smaller profile or contact your administrator."
        )
    if "unbound immediate PersistentVolumeClaims" in reasons:
        return "Your storage volume is still being prepared. Your server starts when it is ready."
    if "didn't match Pod's node affinity/selector" in reasons or "untolerated taint" in reasons:
        return (
            "No node is set up to run this profile (node selector or taints do not match). Please contact your "
            "administrator."
        )
    return None


def _redact_url(url: str) -> str:
    """The URL without any user:password part, for logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _policy_error(message: str) -> Exception:
    """A 409 that the spawn page shows verbatim and the hub does not count as a spawn error."""
    if _SpawnException is not None:
        return cast(Exception, _SpawnException(message, reason="gpu-queue-one-per-user", status_code=409))
    # JupyterHub 5.x's API answers only the log message (its reason becomes "error"): carry the words there too.
    error = web.HTTPError(409, "%s", message, reason="One GPU server per user")
    error.jupyterhub_message = message  # type: ignore[attr-defined]  # read by jupyterhub's format_exception
    return error


class QueueAwareKubeSpawner(KubeSpawner):  # type: ignore[misc]  # KubeSpawner ships no type hints
    """KubeSpawner with the live queue position, queue-sized start timeouts and friendlier messages."""

    queue_api_url = Unicode(
        config=True,
        help="Base URL of the gpu-queue service, e.g. https://gpu-queue.gpu-queue.svc (env GPU_QUEUE_API_URL). "
        "Empty: no live position (the controller's pod Events still show it).",
    )

    @default("queue_api_url")
    def _default_api_url(self) -> str:
        return os.environ.get("GPU_QUEUE_API_URL", "")

    queue_api_token = Unicode(
        config=True,
        help="A read token of the gpu-queue API (env GPU_QUEUE_TOKEN); with z2jh, the hub.services.gpu-queue token.",
    )

    @default("queue_api_token")
    def _default_api_token(self) -> str:
        return os.environ.get("GPU_QUEUE_TOKEN", "")

    queue_ca_file = Unicode(
        config=True,
        help="CA bundle that signed the gpu-queue serving certificate (env GPU_QUEUE_CA); empty: system CAs.",
    )

    @default("queue_ca_file")
    def _default_ca_file(self) -> str:
        return os.environ.get("GPU_QUEUE_CA", "")

    queue_request_timeout = Float(
        5.0, config=True, help="Seconds one queue API request may take before the live position is skipped."
    )
    queue_min_refresh_seconds = Float(
        2.0, config=True, help="Never poll the queue API more often than this, whatever it suggests."
    )
    queue_max_refresh_seconds = Float(
        60.0, config=True, help="Poll at least this often (also the retry interval while the API is down)."
    )

    queued_profiles = List(
        Unicode(),
        config=True,
        help="Profiles whose users wait in the queue: KubeSpawner profile slugs or gpu-queue profile names (the "
        "profile label in the profile's kubespawner_override.extra_labels). Empty: a profile queues when it "
        "requests one of queued_resources.",
    )
    queued_resources = List(
        Unicode(),
        default_value=["nvidia.com/gpu"],
        config=True,
        help="Extended resources that gpu-queue queues (its pools' resources).",
    )
    queue_profile_label = Unicode(
        "gpu-queue.io/profile", config=True, help="The pod label that names the gpu-queue profile."
    )
    queued_start_timeout = Integer(
        3 * 3600,
        config=True,
        help="start_timeout for queued profiles: how long a user may wait for a slice before the hub gives up. "
        "Other profiles keep start_timeout.",
    )
    queue_slice_name = Unicode("GPU slice", config=True, help="What a user waits for, in the spawn page's words.")
    queue_annotation_prefix = Unicode(
        "gpu-queue.io/", config=True, help="The prefix of gpu-queue's pod annotations (its config's annotationPrefix)."
    )
    queue_not_indexed_grace_seconds = Float(
        30.0,
        config=True,
        help="How long the spawn page waits for the queue to learn of a new pod (the API answers pending or "
        "404 until it has) before it shows the stock progress instead.",
    )
    rewrite_scheduler_messages = Bool(
        True, config=True, help="Replace raw FailedScheduling text on the spawn page with plain words."
    )
    one_gpu_server_per_user = Bool(
        True,
        config=True,
        help="Refuse a second queued server to a user who already holds or waits for a slice (named servers).",
    )

    queue_groups_annotation = Bool(
        True,
        config=True,
        help="Put the user's JupyterHub groups on the pod (the <queue_annotation_prefix>groups annotation, a JSON "
        "list), which gpu-queue's group limits count. gpu-queue accepts it only from the hub's service account. "
        "A user in no group gets no annotation.",
    )

    queue_fallback_profile = Unicode(
        "",
        config=True,
        help='The profile (KubeSpawner slug) the waiting room offers instead of waiting: its "Start ... instead" '
        "button gives up the queued spawn and starts this one. Empty: no such button.",
    )
    queue_fallback_label = Unicode(
        "",
        config=True,
        help='The fallback profile\'s name on that button ("Start CPU Only instead"); empty: its display_name.',
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The configured timeout, restored for non-queued spawns: a Spawner object lives across spawns.
        self._configured_start_timeout: int = int(self.start_timeout)
        # Profile overrides merge into these dicts in place and stay after a failed spawn (the hub
        # keeps that Spawner object): decide from the configured values, not the current ones.
        self._configured_limits: dict[str, Any] = dict(self.extra_resource_limits)
        self._configured_guarantees: dict[str, Any] = dict(self.extra_resource_guarantees)
        self._queued_spawn = False
        self._queue_api_warned = False
        self._granted_at: float | None = None  # monotonic: when this spawn's slice was granted
        self._places = PlaceHistory()  # this spawn's positions, for "moved up N places"
        self._last_pod: Mapping[str, Any] | None = None  # this spawn's pod as last seen while starting

    # ------------------------------------------------------------------ which spawns queue

    async def _selected_profile(self, options: Mapping[str, Any] | None = None) -> tuple[str, list[dict[str, Any]]]:
        """The selected profile's slug and the kubespawner_override dicts it (and its chosen options)
        will apply, for ``options`` (default: this spawn's user_options). Mirrors KubeSpawner's own
        profile resolution, which runs too late (in start())."""
        chosen: Mapping[str, Any] = self.user_options if options is None else options
        profile_list: Any = self._sorted_dict_values(self.profile_list)
        if callable(profile_list):
            profile_list = await maybe_future(profile_list(self))
        if not profile_list:
            return "", []
        profiles = self._get_initialized_profile_list(profile_list)
        try:
            profile: dict[str, Any] = self._get_profile(chosen.get("profile"), profiles)
        except (ValueError, StopIteration):
            return "", []  # KubeSpawner reports the bad choice itself, in start()
        overrides: list[dict[str, Any]] = [profile.get("kubespawner_override", {})]
        for name, option in profile.get("profile_options", {}).items():
            choice = chosen.get(name)
            choices = option.get("choices", {})
            if chosen.get(f"{name}--unlisted-choice"):
                overrides.append(option.get("unlisted_choice", {}).get("kubespawner_override", {}))
            elif choice in choices:
                overrides.append(choices[choice].get("kubespawner_override", {}))
            else:
                overrides.extend(c.get("kubespawner_override", {}) for c in choices.values() if c.get("default"))
        return str(profile.get("slug", "")), overrides

    def _override_value(self, override: Mapping[str, Any], key: str) -> Any:
        value = override.get(key)
        return value(self) if callable(value) else value

    async def is_queued_spawn(self, options: Mapping[str, Any] | None = None) -> bool:
        """Does this spawn (its user_options, or ``options``) wait in gpu-queue's FIFO?"""
        slug, overrides = await self._selected_profile(options)
        names = {slug} if slug else set()
        resources: dict[str, Any] = {**self._configured_limits, **self._configured_guarantees}
        for override in overrides:
            labels = self._override_value(override, "extra_labels") or {}
            if self.queue_profile_label in labels:
                names.add(str(labels[self.queue_profile_label]))
            for key in ("extra_resource_limits", "extra_resource_guarantees"):
                resources.update(self._override_value(override, key) or {})
        if self.queued_profiles:
            return bool(names & set(self.queued_profiles))
        return any(_nonzero(resources.get(r)) for r in self.queued_resources)

    # ------------------------------------------------------------------ timeouts and policy

    async def run_options_from_form(self, form_data: Mapping[str, Any]) -> Any:
        """The spawn form's options, refused here (before any spawn) when the one-server policy says
        no: the hub shows the form again with the message, and no spawn has started, so no hub
        version counts it towards ``consecutive_failure_limit``."""
        return await self._checked_options(super().run_options_from_form(form_data))

    def options_from_query(self, query_data: Mapping[str, Any]) -> Any:
        """``/hub/spawn?profile=...`` links: the same early refusal as the form's."""
        return self._checked_options(super().options_from_query(query_data))

    async def _checked_options(self, options: Any) -> Any:
        options = await maybe_future(options)
        await self._refuse_before_spawn(options)
        return options

    async def _refuse_before_spawn(self, options: Any) -> None:
        if self.one_gpu_server_per_user and isinstance(options, Mapping) and await self.is_queued_spawn(options):
            await self._check_one_gpu_server()

    async def run_pre_spawn_hook(self) -> Any:
        """Set start_timeout for this spawn, apply the one-server policy, then the configured hook.

        The hub calls this after applying user_options and *before* ``start()``; right after
        ``start()`` returns it reads ``start_timeout`` for its ``wait_for``. Profile overrides run
        inside ``start()`` (KubeSpawner's ``load_user_options``), which is too late for that read.
        """
        # Start from the configured resources: KubeSpawner merges a profile's dict overrides into
        # the Spawner in place, and the hub keeps the Spawner after a failed spawn, so a GPU
        # profile's nvidia.com/gpu would otherwise ride along on the next, CPU-only spawn.
        self.extra_resource_limits = dict(self._configured_limits)
        self.extra_resource_guarantees = dict(self._configured_guarantees)
        self._granted_at = None
        self._last_pod = None
        self._queued_spawn = await self.is_queued_spawn()
        if self._queued_spawn:
            self._set_start_timeout(max(self._configured_start_timeout, self.queued_start_timeout))
            if self.one_gpu_server_per_user:
                try:  # the REST API's spawns reach the policy only here, inside the spawn
                    await self._check_one_gpu_server()
                except web.HTTPError:
                    self._not_a_failure_on_jupyterhub_5()
                    raise
        else:
            self._set_start_timeout(self._configured_start_timeout)
        return await maybe_future(super().run_pre_spawn_hook())

    def user_groups(self) -> list[str]:
        """The user's JupyterHub groups, sorted (the hub's ORM objects have a ``name``)."""
        return sorted({str(g.name) for g in getattr(self.user, "groups", None) or []})

    async def get_pod_manifest(self) -> Any:
        """KubeSpawner's pod, with the user's groups for gpu-queue's group limits."""
        pod = await super().get_pod_manifest()
        groups = self.user_groups() if self.queue_groups_annotation else []
        if groups:
            annotations = dict(pod.metadata.annotations or {})
            annotations[f"{self.queue_annotation_prefix}groups"] = json.dumps(groups, separators=(",", ":"))
            pod.metadata.annotations = annotations
        return pod

    async def load_user_options(self) -> None:
        """Apply the profile, then keep the queued timeout (a profile's own start_timeout may be shorter,
        and KubeSpawner's inner wait for the pod uses this value)."""
        await super().load_user_options()
        if self._queued_spawn:
            self._set_start_timeout(max(int(self.start_timeout), self.queued_start_timeout))

    def _not_a_failure_on_jupyterhub_5(self) -> None:
        """JupyterHub 5.x adds every failed spawn to ``settings['failure_count']`` and exits at
        ``consecutive_failure_limit`` (z2jh: 5), so five refusals of a second GPU server through the
        REST API would end the hub. Take one off the count for this refusal, which the hub is about
        to add (its own handler's settings, reachable as ``self.handler`` during the spawn).
        JupyterHub 6 counts no 4xx refusal: nothing to do there."""
        if _SpawnException is not None:
            return
        settings = getattr(getattr(self, "handler", None), "settings", None)
        if isinstance(settings, dict):
            settings["failure_count"] = settings.get("failure_count", 0) - 1

    def _set_start_timeout(self, seconds: int) -> None:
        setattr(self, "start_timeout", seconds)  # noqa: B010 - the traitlet, typed Any through KubeSpawner

    async def _check_one_gpu_server(self) -> None:
        """Refuse this spawn when another server of the same user holds or waits for a slice."""
        spawners: Mapping[str, Any] = getattr(self.user, "spawners", None) or {}
        for name, other in spawners.items():
            if other is self or name == self.name:
                continue
            if isinstance(other, QueueAwareKubeSpawner) and other.active and await other.is_queued_spawn():
                starting = other.pending == "spawn" or getattr(other, "_start_pending", False)
                what = "is waiting for a GPU slice" if starting else "is running"
                raise _policy_error(self._one_server_message(name, what))
        if not self.queue_api_url:
            return
        # Every server the hub knows of, loaded or not: after a hub restart a server whose pod still
        # waits in the queue is not active in the hub, but the queue knows it.
        names = set(spawners) | set(getattr(self.user, "orm_spawners", None) or {})
        for name in sorted(names - {self.name}):
            try:
                status = await self.fetch_queue_status(name)
            except QueueApiError:
                return  # the hub's own state above already had its say; do not block on an outage
            if status.state in ("queued", "pending"):  # pending: its pod is new, the queue is indexing it
                where = f" (position {status.position} of {status.queue_length})" if status.position else ""
                raise _policy_error(self._one_server_message(name, f"is waiting for a GPU slice{where}"))
            if status.state == "admitted":
                raise _policy_error(self._one_server_message(name, "holds a GPU slice"))

    def _one_server_message(self, other_name: str, what: str) -> str:
        server = f"server '{other_name}'" if other_name else "default server"
        return (
            f"Your {server} {what}. Each user can have one GPU server at a time: stop it from the Hub Control "
            "Panel first, or start this server with a CPU-only profile."
        )

    # ------------------------------------------------------------------ a start that cannot finish

    def is_pod_running(self, pod: Any) -> bool:
        """KubeSpawner's check, polled until the pod runs or ``start_timeout`` (hours for a queued
        spawn) ends. A queued spawn whose pod went away meanwhile will never run: gpu-queue released
        a stuck start, or an admin took the request out of the queue. End the spawn at once with
        why, instead of leaving the user on the page until the timeout."""
        running = bool(super().is_pod_running(pod))
        if not self._queued_spawn:
            return running
        if isinstance(pod, Mapping):
            self._last_pod = pod
        elif self._last_pod is not None:
            raise RuntimeError(self._gone_message(self._last_pod))
        return running

    def _gone_message(self, pod: Mapping[str, Any]) -> str:
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        prefix = self.queue_annotation_prefix
        if f"{prefix}removed" in annotations:
            return "An administrator removed your request from the GPU queue. You can start your server again."
        if f"{prefix}released" in annotations:
            why = next(
                (
                    str(e.get("message") or "")
                    for e in reversed(list(self.events or []))
                    if isinstance(e, Mapping) and e.get("reason") == "StuckAdmission"
                ),
                "",
            )
            detail = f" ({why})" if why else ""
            return (
                f"Your server could not start, so its {self.queue_slice_name} went to the next user{detail}. "
                "Start it again to rejoin the queue; if it fails the same way, contact your administrator."
            )
        return "Your server's pod was deleted before it started. You can start your server again."

    # ------------------------------------------------------------------ the queue API

    async def fetch_queue_status(self, server_name: str | None = None) -> QueueStatus:
        """GET /api/v1/users/{user}?server= for one of this user's servers (default: this one)."""
        if not self.queue_api_url:
            raise QueueApiError("queue_api_url is not set", permanent=True)
        server = self.name if server_name is None else server_name
        url = (
            f"{self.queue_api_url.rstrip('/')}/api/v1/users/{quote(self.user.name, safe='')}"
            f"?server={quote(server, safe='')}"
        )
        headers = {"Accept": "application/json"}
        if self.queue_api_token:
            headers["Authorization"] = f"Bearer {self.queue_api_token}"
        request = HTTPRequest(
            url,
            headers=headers,
            request_timeout=self.queue_request_timeout,
            connect_timeout=self.queue_request_timeout,
            ca_certs=self.queue_ca_file or None,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except Exception as exc:  # connection refused, DNS, TLS, timeout: all mean "not now"
            raise QueueApiError(f"{type(exc).__name__}: {exc}") from None
        if response.code == 404:
            return QueueStatus(state=NOT_SEEN, refresh_seconds=self.queue_min_refresh_seconds)
        if response.code in (401, 403):
            raise QueueApiError(f"HTTP {response.code}: the queue API rejected the token", permanent=True)
        if response.code != 200:
            error = response.error
            detail = f"HTTP {response.code}" if error is None or isinstance(error, HTTPClientError) else str(error)
            raise QueueApiError(detail)
        try:
            return QueueStatus.from_json(json.loads(response.body))
        except (ValueError, TypeError, AttributeError) as exc:
            raise QueueApiError(f"unexpected answer: {exc}") from None

    def _warn_api_once(self, error: QueueApiError) -> None:
        """One warning per outage (reset when the API answers), never the token."""
        if not self._queue_api_warned:
            self._queue_api_warned = True
            self.log.warning(
                "gpu-queue API at %s unavailable for %s (%s); showing the stock spawn progress",
                _redact_url(self.queue_api_url),
                self._log_name,
                error,
            )

    async def _poll_queue(self) -> AsyncGenerator[QueueStatus | None, None]:
        """Position answers at the API's refresh interval; None while the API is unavailable.

        Ends once the slice is granted (the pod's own Events tell the rest) or the token is refused.
        """
        while True:
            try:
                status = await self.fetch_queue_status()
            except QueueApiError as error:
                self._warn_api_once(error)
                yield None
                if error.permanent:
                    return
                await asyncio.sleep(self.queue_max_refresh_seconds)
                continue
            self._queue_api_warned = False
            yield status
            if status.state == "admitted":
                return
            refresh = min(max(status.refresh_seconds, self.queue_min_refresh_seconds), self.queue_max_refresh_seconds)
            await asyncio.sleep(refresh)

    # ------------------------------------------------------------------ the spawn page

    async def queue_line(self) -> str:
        """The queue line for a page rendered on the server (the waiting room's text without
        JavaScript): the same words as the live line, or what cannot be known."""
        if not (self._queued_spawn and self.queue_api_url and self.pending == "spawn"):
            return ""
        try:
            status = await self.fetch_queue_status()
        except QueueApiError:
            return unreadable_message(self.queue_slice_name)
        return queue_message(status, self.queue_slice_name) or f"Joining the queue for a {self.queue_slice_name}..."

    async def hold_line(self) -> str:
        """For a server holding a slice that the hold limit warned: when it will be stopped (the
        home page shows it next to the Stop button). Empty otherwise, and when the API cannot say."""
        if not (self.queue_api_url and (self.ready or self.pending == "spawn")):
            return ""
        try:
            status = await self.fetch_queue_status()
        except QueueApiError:
            return ""
        return hold_message(status, self.queue_slice_name) or ""

    async def queue_fallback(self) -> dict[str, str] | None:
        """The waiting room's other choice while queued: ``{"slug", "label"}`` of
        ``queue_fallback_profile`` when it is one of this user's profiles and does not queue itself;
        None otherwise (no button is shown)."""
        if not self.queue_fallback_profile:
            return None
        profile_list: Any = self._sorted_dict_values(self.profile_list)
        if callable(profile_list):
            profile_list = await maybe_future(profile_list(self))
        for profile in self._get_initialized_profile_list(profile_list or []):
            if profile.get("slug") != self.queue_fallback_profile:
                continue
            if await self.is_queued_spawn({"profile": self.queue_fallback_profile}):
                self.log.warning("queue_fallback_profile %r queues itself: no fallback offered", profile["slug"])
                return None
            return {"slug": str(profile["slug"]), "label": self.queue_fallback_label or str(profile["display_name"])}
        return None

    def _rewrite_event(self, event: ProgressEvent) -> ProgressEvent:
        """Stock event with FailedScheduling text put into plain words (raw_event kept for admins)."""
        raw = event.get("raw_event")
        if not self.rewrite_scheduler_messages or not isinstance(raw, Mapping):
            return event
        friendly = friendly_scheduler_message(str(raw.get("message") or ""), frozenset(self.queued_resources))
        if friendly is None:
            return event
        when = raw.get("lastTimestamp") or raw.get("eventTime") or ""
        return {**event, "message": f"{when} [{raw.get('type', 'Warning')}] {friendly}".strip()}

    @staticmethod
    def _is_controller_event(event: ProgressEvent, reason: str) -> bool:
        """One of gpu-queue's own pod Events: ``Queued`` ("Waiting for a GPU slice: position ...")
        or ``SliceGranted`` ("GPU slice granted after ...")."""
        raw = event.get("raw_event")
        if not isinstance(raw, Mapping) or raw.get("reason") != reason:
            return False
        source = raw.get("source") or {}
        return QUEUE_COMPONENT in (raw.get("reportingComponent"), source.get("component"))

    async def progress(self) -> AsyncGenerator[ProgressEvent, None]:
        """Stock pod-event progress merged with live queue messages.

        While the pod waits for a slice: only changed queue messages are yielded, without a
        ``progress`` value (the bar stays still), and the stock "taking longer than expected"
        and position Events are hidden behind the fresher live line. Closing the generator (a
        browser tab went away) cancels the poll and the stock generator.
        """
        stock: AsyncGenerator[ProgressEvent, None] = super().progress()
        if not (self._queued_spawn and self.queue_api_url):
            async with contextlib.aclosing(stock):
                async for event in stock:
                    yield self._rewrite_event(event)
            return

        inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        async def pump(kind: str, source: AsyncGenerator[Any, None]) -> None:
            try:
                async with contextlib.aclosing(source):
                    async for item in source:
                        inbox.put_nowait((kind, item))
            finally:
                inbox.put_nowait((f"{kind}-done", None))

        tasks = [
            asyncio.create_task(pump("event", stock), name=f"gpu-queue-progress:{self._log_name}"),
            asyncio.create_task(pump("queue", self._poll_queue()), name=f"gpu-queue-poll:{self._log_name}"),
        ]
        last_message: str | None = None
        waiting = False  # True while the API says this pod is queued
        answered = False  # stock events wait for the first queue answer, so the bar never runs ahead of it
        held: list[ProgressEvent] = []
        last_status: QueueStatus | None = None
        opened = time.monotonic()
        try:
            while True:
                kind, item = await inbox.get()
                if kind == "queue":
                    status = cast(QueueStatus | None, item)
                    if (
                        status is not None
                        and status.not_indexed_yet
                        and not answered
                        and time.monotonic() - opened < self.queue_not_indexed_grace_seconds
                    ):
                        # The pod is newer than the queue's index: hold the bar and the stock
                        # events (they would run to 30 % and back) until the position is known.
                        joining = f"Joining the queue for a {self.queue_slice_name}..."
                        if joining != last_message:
                            last_message = joining
                            yield {"message": joining}
                        continue
                    if status is None:
                        unreadable = unreadable_message(self.queue_slice_name)
                        if waiting and last_message != unreadable:
                            # It was queued and the API stopped answering: the pod still waits
                            # with its place; say so with no figure (nothing is made up). The
                            # controller's own position Events show again meanwhile.
                            last_message = unreadable
                            yield {"message": unreadable, "gpu_queue": unknown_fields("the queue API does not answer")}
                        waiting = False
                    else:
                        before, last_status = last_status, status
                        waiting = status.state == "queued"
                        if waiting and status.position is not None:
                            self._places.note(status.position)
                        self._note_grant(status)
                        message = queue_message(status, self.queue_slice_name)
                        joined = joined_ahead(before, status) if waiting else ""
                        if message is not None and message != last_message:
                            last_message = message
                            fields = queue_fields(status, self._places, joined.strip())
                            yield {"message": joined + message, "gpu_queue": fields}
                if kind in ("queue", "queue-done") and not answered:
                    answered = True
                    for event in held:
                        shown = self._present(event, waiting)
                        if shown is not None:
                            yield shown
                    held.clear()
                if kind == "event":
                    if waiting and self._is_controller_event(cast(ProgressEvent, item), GRANT_EVENT_REASON):
                        # The controller's "GPU slice granted" Event: the page hears of the grant
                        # now, not at the next poll (which may never come: on a fast start the
                        # stream ends when start() returns).
                        waiting = False
                        granted = QueueStatus(
                            state="admitted", pool=last_status.pool, capacity=last_status.capacity,
                            in_use=last_status.in_use,
                        ) if last_status is not None else QueueStatus(state="admitted")  # fmt: skip
                        self._note_grant(granted)  # slowness counts from now (the Event is prompt)
                        message = queue_message(granted, self.queue_slice_name)
                        if message is not None and message != last_message:
                            last_message = message
                            yield {"message": message, "gpu_queue": queue_fields(granted)}
                    if not answered:
                        held.append(cast(ProgressEvent, item))
                        continue
                    shown = self._present(cast(ProgressEvent, item), waiting)
                    if shown is not None:
                        yield shown
                elif kind == "event-done":
                    for event in held:
                        yield self._rewrite_event(event)
                    held.clear()
                    start = self._start_future
                    if start is None or start.done() or self.events_enabled:
                        break  # start() finished: the hub takes over from here
                    # events disabled: the stock generator ends at once; keep the queue line until start() ends
                    tasks.append(asyncio.create_task(self._signal_when_done(start, inbox)))
                elif kind == "start-done":
                    break
                # "queue-done": granted or token refused; the stock events carry on alone
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _note_grant(self, status: QueueStatus | None) -> None:
        """Remember when the slice was granted: the slow-spawn message counts from then."""
        if status is None or status.state != "admitted" or self._granted_at is not None:
            return
        if status.granted_at is not None:
            ago = (datetime.now(UTC) - status.granted_at).total_seconds()
            self._granted_at = time.monotonic() - max(0.0, ago)
        else:
            self._granted_at = time.monotonic()

    def _present(self, event: ProgressEvent, waiting: bool) -> ProgressEvent | None:
        """A stock event as the spawn page should show it; None to hide it behind the live line."""
        if waiting and ("raw_event" not in event or self._is_controller_event(event, QUEUE_EVENT_REASON)):
            return None  # "taking longer than expected" and the controller's position Events
        if "raw_event" not in event and self._granted_at is not None:
            return self._slow_spawn_since_grant(event)
        event = self._rewrite_event(event)
        if waiting:
            event = {k: v for k, v in event.items() if k != "progress"}  # the bar stays still while queued
        return event

    def _slow_spawn_since_grant(self, event: ProgressEvent) -> ProgressEvent | None:
        """KubeSpawner's "taking longer than expected ... N seconds" counts from the spawn's start,
        queue included: right after a grant it said 80 seconds. Count from the grant instead, and say
        nothing until the server is slow by the spawner's own threshold."""
        since = time.monotonic() - (self._granted_at or time.monotonic())
        threshold = int(getattr(self, "slow_spawn_message_threshold", 60) or 0)
        if threshold <= 0 or since < threshold:
            return None
        template = str(getattr(self, "slow_spawn_message", "") or "")
        if "{seconds}" not in template:
            return event
        return {**event, "message": template.format(seconds=int(since)).strip()}

    @staticmethod
    async def _signal_when_done(future: asyncio.Future[Any], inbox: asyncio.Queue[tuple[str, Any]]) -> None:
        await asyncio.wait([future])
        inbox.put_nowait(("start-done", None))


def _nonzero(value: Any) -> bool:
    """A resource quantity that asks for something (``1``, ``"1"``); ``0``/``None``/``""`` do not."""
    if value is None:
        return False
    try:
        return float(str(value)) > 0
    except ValueError:
        return bool(str(value).strip())


__all__: list[str] = [
    "PlaceHistory",
    "QueueApiError",
    "QueueAwareKubeSpawner",
    "QueueStatus",
    "format_eta",
    "friendly_scheduler_message",
    "queue_fields",
    "queue_message",
    "unknown_fields",
    "unreadable_message",
]
