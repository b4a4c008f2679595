"""Reading single-user pods and their Events as the hub and an admin see them, and the demo's live
pods table (who holds a slice, who waits at which position, who logged out)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gpu_queue_dev.demo.cast import profile_short
from webhook.admin_render import format_duration, render_table
from webhook.api import QueueListing
from webhook.config import Config
from webhook.pods import parse_time


def meta(pod: dict[str, Any], key: str) -> dict[str, str]:
    value = (pod.get("metadata") or {}).get(key) or {}
    return value if isinstance(value, dict) else {}


def name_of(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["name"])


def is_running(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running"


def node_of(pod: dict[str, Any]) -> str:
    return str((pod.get("spec") or {}).get("nodeName") or "")


def stamp(text: str | None) -> datetime | None:
    return parse_time(text) if text else None


def spawn_page_line(event: dict[str, Any]) -> str:
    """One Event as KubeSpawner's ``progress()`` shows it on the spawn page."""
    when = event.get("lastTimestamp") or event.get("eventTime") or ""
    return f"{when} [{event.get('type', '')}] {event.get('message', '')}"


def event_order(event: dict[str, Any]) -> tuple[datetime, int]:
    """When the Event first happened, then the API server's write order for same-second Events
    (``lastTimestamp`` has whole seconds, ``eventTime`` microseconds: compare parsed times)."""
    metadata = event.get("metadata") or {}
    texts = (
        event.get("eventTime"),
        event.get("firstTimestamp"),
        event.get("lastTimestamp"),
        metadata.get("creationTimestamp"),
    )
    when = next((t for t in (stamp(x) for x in texts) if t is not None), datetime.min.replace(tzinfo=UTC))
    version = str(metadata.get("resourceVersion") or "0")
    return when, int(version) if version.isdigit() else 0


class PodView:
    """The queue's marks on a pod (gate, pool, arrival and grant times) by the service's config."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def gated(self, pod: dict[str, Any]) -> bool:
        gates = (pod.get("spec") or {}).get("schedulingGates") or []
        return any(g.get("name") == self.config.gate_name for g in gates)

    def pool_of(self, pod: dict[str, Any]) -> str | None:
        return meta(pod, "annotations").get(self.config.pool_annotation)

    def render(
        self,
        namespace: str,
        pods: dict[str, dict[str, Any]],
        listing: QueueListing | None,
        order: list[str],
        logged_out: dict[str, tuple[str, str]],
        now: datetime,
    ) -> str:
        """The table: pods in spawn ``order``, then any others; logged-out users stay as a row."""
        positions = {e.name: e.position for e in listing.entries} if listing is not None else {}
        names = [nm for nm in order if nm in pods or nm in logged_out]
        names += sorted(nm for nm in pods if nm not in order)
        rows: list[list[str]] = []
        for nm in names:
            pod = pods.get(nm)
            if pod is None:
                who, slug = logged_out[nm]
                rows.append([who, profile_short(slug), "logged out", "-", "-"])
                continue
            shown = meta(pod, "annotations").get("hub.jupyter.org/username") or nm
            profile = meta(pod, "labels").get(self.config.profile_label)
            state = self._state(pod, positions)
            rows.append([shown, profile_short(profile), state, node_of(pod) or "-", self._waited(pod, now)])
        if listing is not None:
            head = (
                f"pods in {namespace}: {listing.in_use} of {listing.capacity} {listing.resource} in use, "
                f"{listing.queue_length} queued"
            )
        else:
            head = f"pods in {namespace}"
        return head + "\n" + render_table(["USER", "PROFILE", "STATE", "NODE", "WAITED"], rows)

    def _state(self, pod: dict[str, Any], positions: dict[str, int]) -> str:
        if self.gated(pod):
            position = positions.get(name_of(pod))
            return f"queued #{position}" if position is not None else "queued"
        if self.pool_of(pod):
            return "holding" if is_running(pod) else "granted, starting"
        return "running" if is_running(pod) else "starting"

    def _waited(self, pod: dict[str, Any], now: datetime) -> str:
        """From the durable arrival time to the grant (or now, while queued); CPU pods never wait."""
        annotations = meta(pod, "annotations")
        since = stamp(annotations.get(self.config.requested_at_annotation))
        if since is None:
            return "-"
        until = stamp(annotations.get(self.config.admitted_at_annotation))
        if until is None and not self.gated(pod):
            return "-"
        return format_duration(((until or now) - since).total_seconds())
