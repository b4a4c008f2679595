"""Pod views for the pure-decision tests: a queued GPU pod, and a holder, as the watch cache
holds them."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from webhook.cluster_view import PodView


def queued_view(name: str, requested_at: datetime, slices: int = 1, namespace: str = "jhub") -> PodView:
    """A gated pod of pool ``gpu`` asking for ``slices`` of ``nvidia.com/gpu``."""
    return PodView(
        namespace=namespace,
        name=name,
        pool="gpu",
        gated=True,
        requested_at=requested_at,
        resources={"nvidia.com/gpu": Decimal(slices)},
    )


def holder_view(
    name: str, granted_at: datetime, slices: int = 1, *, user: str = "", warned: datetime | None = None
) -> PodView:
    """A pod of pool ``gpu`` holding ``slices`` since ``granted_at``, Running on ``gpu-1``;
    ``warned``: when the hold limit warned it."""
    return PodView(
        namespace="jhub",
        name=name,
        pool="gpu",
        gated=False,
        requested_at=granted_at,
        granted_at=granted_at,
        node="gpu-1",
        phase="Running",
        ready=True,
        user=user,
        resources={"nvidia.com/gpu": Decimal(slices)},
        hold_warned_at=warned,
    )
