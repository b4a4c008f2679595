"""Which profile a pod belongs to: its label resolved through the missing/unknown policies.

Pure, shared by mutation and validation (which must agree on a pod's profile).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from webhook.config import Config, Profile, ProfilePolicy
from webhook.pods import labels_of


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
