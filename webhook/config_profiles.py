"""The profiles and pools of the configuration: what a profile's pods get (resources, a pool,
node placement) and what a pool hands out. Re-exported by ``webhook.config``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from webhook.node_fit import NodeConstraints, check_affinity, check_tolerations
from webhook.quantity import QuantityError, cpu_env, memory_env, parse_quantity


class _Model(BaseModel):
    """Config models: camelCase keys as in the YAML, unknown keys rejected (typos fail loudly)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


Quantity = Annotated[str, Field(description="A Kubernetes quantity such as 500m, 2, 4Gi")]


def _check_quantities(values: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in values.items():
        try:
            parse_quantity(value)
        except QuantityError as exc:
            raise ValueError(f"{name}: {exc}") from None
        out[name] = str(value)
    return out


class Profile(_Model):
    """What a profile's pods get: requests and limits of the notebook container, a pool, and where
    they may run (merged into the pod by admission: ``webhook.placement``)."""

    display_name: str = Field("", alias="displayName")
    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)
    pool: str | None = Field(None, description="The queue pool; None means never gated")
    node_selector: dict[str, str] = Field(
        default_factory=dict, alias="nodeSelector", description="Added to the pod's nodeSelector"
    )
    affinity: dict[str, Any] = Field(
        default_factory=dict, description="A Kubernetes affinity, ANDed with the pod's (required node terms)"
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list, description="Appended to the pod's tolerations when not there yet"
    )

    @field_validator("affinity")
    @classmethod
    def _affinity(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_affinity(v)
        return v

    @field_validator("tolerations")
    @classmethod
    def _tolerations(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        check_tolerations(v)
        return v

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _quantities(cls, v: Any) -> Any:
        return _check_quantities(v) if isinstance(v, Mapping) else v

    @functools.cached_property
    def env(self) -> dict[str, str]:
        """The env vars JupyterHub writes for these settings, in its format (computed once)."""
        out: dict[str, str] = {}
        if "cpu" in self.limits:
            out["CPU_LIMIT"] = cpu_env(self.limits["cpu"])
        if "cpu" in self.requests:
            out["CPU_GUARANTEE"] = cpu_env(self.requests["cpu"])
        if "memory" in self.limits:
            out["MEM_LIMIT"] = memory_env(self.limits["memory"])
        if "memory" in self.requests:
            out["MEM_GUARANTEE"] = memory_env(self.requests["memory"])
        return out

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Profile:
        for name, request in self.requests.items():
            limit = self.limits.get(name)
            if limit is not None and parse_quantity(request) > parse_quantity(limit):
                raise ValueError(f"requests.{name} ({request}) is larger than limits.{name} ({limit})")
        return self


class StuckPolicy(StrEnum):
    """What to do with a granted pod that is not Ready within ``admitTimeoutSeconds`` (I7)."""

    KEEP = "keep"
    RELEASE = "release"


class Pool(_Model):
    """A set of interchangeable slices (one GPU model, time-sliced) and its FIFO."""

    resource: str = "nvidia.com/gpu"
    capacity: int | Literal["auto"] = Field(
        "auto", description="A fixed slice count, or auto: the resource's allocatable on the pool's nodes"
    )
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    keep_place_seconds: int = Field(300, ge=0, alias="keepPlaceSeconds")
    admit_timeout_seconds: int = Field(600, gt=0, alias="admitTimeoutSeconds")
    stuck_policy: StuckPolicy = Field(StuckPolicy.RELEASE, alias="stuckPolicy")
    cull_timeout_seconds: int = Field(
        3600, gt=0, alias="cullTimeoutSeconds", description="The idle culler's timeout, an ETA hint"
    )
    group_limits: dict[str, int] = Field(
        default_factory=dict,
        alias="groupLimits",
        description=(
            "Slices the members of a JupyterHub group may hold at once, e.g. {course-a: 4}; a member "
            "waits while the group holds its limit, and others go meanwhile"
        ),
    )
    group_priority: list[str] = Field(
        default_factory=list,
        alias="groupPriority",
        max_length=5,
        description=(
            "JupyterHub groups in the order they go, e.g. [instructors, students]: a member of an earlier "
            "group goes ahead of later ones and of users in none, FIFO within each; never preempts"
        ),
    )
    max_hold_seconds_when_queued: int | None = Field(
        None,
        gt=0,
        alias="maxHoldSecondsWhenQueued",
        description=(
            "While someone waits, a holder past this is warned, then stopped through the hub's API; "
            "nobody is stopped while nobody waits. Off by default"
        ),
    )
    hold_warning_seconds: int = Field(
        600, ge=0, alias="holdWarningSeconds", description="How long before the stop the holder is warned"
    )
    # What every profile of the pool demands of a node (set by Config): a node's slices count only
    # where all of them can run. A pool on its own demands only its nodeSelector.
    _constraints: tuple[NodeConstraints, ...] = PrivateAttr(default=())

    @property
    def constraints(self) -> tuple[NodeConstraints, ...]:
        return self._constraints or (NodeConstraints(node_selector=self.node_selector),)

    @field_validator("capacity")
    @classmethod
    def _non_negative(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("capacity must be >= 0 or 'auto'")
        return v

    def rank_of(self, groups: tuple[str, ...] | list[str]) -> int:
        """The pod's rank in ``groupPriority``: the first listed group it is in; after all of
        them (``len(groupPriority)``) for a user in none. 0 without priorities."""
        for rank, group in enumerate(self.group_priority):
            if group in groups:
                return rank
        return len(self.group_priority)

    def rank_group(self, rank: int) -> str | None:
        """The group a rank stands for (None: the users in none of them)."""
        return self.group_priority[rank] if rank < len(self.group_priority) else None

    @field_validator("group_priority")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or not all(v):
            raise ValueError(f"groupPriority: distinct, non-empty group names, got {v}")
        return v

    @field_validator("group_limits")
    @classmethod
    def _limits(cls, v: dict[str, int]) -> dict[str, int]:
        for group, limit in v.items():
            if not group or limit < 0:
                raise ValueError(f"groupLimits.{group or '(empty)'}: a group name and a limit >= 0, got {limit}")
        return v


class ProfilePolicy(StrEnum):
    """What admission does with a pod whose profile label is missing or unknown."""

    DEFAULT = "default"  # treat it as ``defaultProfile``
    ALLOW = "allow"  # admit it unchanged
    DENY = "deny"  # deny it with a message
