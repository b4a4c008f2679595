"""Which profile a pod belongs to, and what that profile's notebook container must look like.

Pure functions of the pod JSON and the configuration, shared by mutation, validation and the
controller (which must agree on what a pool's pod is).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from webhook.config import Config, Profile, ProfilePolicy


class Resolution(StrEnum):
    MATCHED = "matched"  # the label names a configured profile
    DEFAULTED = "defaulted"  # missing/unknown label, policy "default"
    ALLOWED = "allowed"  # missing/unknown label, policy "allow": leave the pod alone
    DENIED = "denied"  # missing/unknown label, policy "deny"


@dataclass(frozen=True)
class ProfileChoice:
    resolution: Resolution
    name: str | None
    profile: Profile | None
    label_value: str | None
    message: str = ""


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


def is_singleuser(pod: dict[str, Any], config: Config) -> bool:
    """True when the pod matches ``podSelector`` (by default ``component=singleuser-server``)."""
    labels = labels_of(pod)
    return all(labels.get(k) == v for k, v in config.pod_selector.items())


def choose_profile(pod: dict[str, Any], config: Config) -> ProfileChoice:
    """Resolve the profile label through the missing/unknown policies."""
    value = labels_of(pod).get(config.profile_label)
    if value is not None and value in config.profiles:
        return ProfileChoice(Resolution.MATCHED, value, config.profiles[value], value)
    policy = config.missing_profile if value is None else config.unknown_profile
    known = ", ".join(sorted(config.profiles)) or "none"
    if value is None:
        why = f"the pod has no {config.profile_label} label"
        fix = (
            f"set kubespawner_override.extra_labels {{{config.profile_label}: <profile>}} on every profile "
            f"in the hub's profileList (known profiles: {known})"
        )
    else:
        why = f"the pod's {config.profile_label} label is {value!r}, which gpu-queue does not know"
        fix = f"ask your JupyterHub admin to add profile {value!r} to gpu-queue's profiles (known: {known})"
    if policy is ProfilePolicy.DEFAULT and config.default_profile is not None:
        name = config.default_profile
        return ProfileChoice(Resolution.DEFAULTED, name, config.profiles[name], value, f"{why}; using {name!r}")
    if policy is ProfilePolicy.ALLOW:
        return ProfileChoice(Resolution.ALLOWED, None, None, value, why)
    return ProfileChoice(Resolution.DENIED, None, None, value, f"gpu-queue: {why}. To fix: {fix}.")


def pool_of(pod: dict[str, Any], config: Config) -> str | None:
    """The pool a pod queues in, from its own annotation (what mutation wrote), else its profile."""
    pool = annotations_of(pod).get(config.pool_annotation)
    if pool in config.pools:
        return pool
    choice = choose_profile(pod, config)
    return choice.profile.pool if choice.profile is not None else None


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
