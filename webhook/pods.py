"""Accessors for a pod's JSON and the formats of what gpu-queue writes on pods.

Admission, the cluster view and the controller read the same fields the same way, tolerating any
shape (a malformed pod is never an exception here), as kopf keeps its body accessors in one place.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from webhook.config import Config


def labels_of(pod: dict[str, Any]) -> dict[str, str]:
    meta = pod.get("metadata")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def annotations_of(pod: dict[str, Any]) -> dict[str, str]:
    meta = pod.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    if not isinstance(annotations, dict):
        return {}
    return {str(k): str(v) for k, v in annotations.items()}


def containers_of(pod: dict[str, Any], field: str = "containers") -> list[dict[str, Any]]:
    spec = pod.get("spec")
    items = spec.get(field) if isinstance(spec, dict) else None
    if not isinstance(items, list):
        return []
    return [c for c in items if isinstance(c, dict)]


def scheduling_gates(pod: dict[str, Any]) -> list[str]:
    spec = pod.get("spec")
    gates = spec.get("schedulingGates") if isinstance(spec, dict) else None
    if not isinstance(gates, list):
        return []
    return [str(g.get("name")) for g in gates if isinstance(g, dict)]


def has_gate(pod: dict[str, Any], config: Config) -> bool:
    return config.gate_name in scheduling_gates(pod)


def gate_index(pod: dict[str, Any], config: Config) -> int | None:
    """Where our gate is in ``spec.schedulingGates`` (the JSON pointer index), or None."""
    spec = pod.get("spec")
    gates = spec.get("schedulingGates") if isinstance(spec, dict) else None
    if not isinstance(gates, list):
        return None
    return next((i for i, g in enumerate(gates) if isinstance(g, dict) and g.get("name") == config.gate_name), None)


def is_singleuser(pod: dict[str, Any], config: Config) -> bool:
    """True when the pod matches ``podSelector`` (by default ``component=singleuser-server``)."""
    labels = labels_of(pod)
    return all(labels.get(k) == v for k, v in config.pod_selector.items())


def pointer(key: str) -> str:
    """A JSON pointer token (RFC 6901) for a label or annotation key: ``~`` -> ``~0``, ``/`` -> ``~1``."""
    return key.replace("~", "~0").replace("/", "~1")


def format_time(when: datetime) -> str:
    """RFC 3339 in UTC with microseconds, ``2026-11-28T16:14:06.123456Z``: the stamps gpu-queue
    writes (requested-at, admitted-at, Lease and Event times); Kubernetes parses them all."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: object) -> datetime | None:
    """An RFC 3339 timestamp in UTC; None when it is not one (a bad annotation is not trusted)."""
    if not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        return None
    return value.astimezone(UTC)


def format_groups(groups: Iterable[str]) -> str:
    """The groups annotation's value: a JSON list of the user's JupyterHub groups, sorted."""
    return json.dumps(sorted(set(groups)), separators=(",", ":"))


def groups_of(text: object) -> tuple[str, ...]:
    """The groups from the annotation; () when absent or not a JSON list of strings (validation
    denies a pod with a malformed value, so only a pod older than this rule can show one)."""
    if not isinstance(text, str):
        return ()
    try:
        value = json.loads(text)
    except ValueError:
        return ()
    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
        return ()
    return tuple(sorted(set(value)))
