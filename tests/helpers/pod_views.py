"""Pod views for the pure-decision tests: a queued GPU pod as the watch cache holds it."""

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
