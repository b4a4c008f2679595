"""Fixtures for the unit tier: the seed configuration and AdmissionReviews around real
KubeSpawner pod manifests (recorded: the unit tier imports nothing of the development package)."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.helpers.reviews import request_review
from tests.helpers.spawner_pods import spawner_pod as recorded_pod
from webhook.config import Config, load_config


@pytest.fixture
def config() -> Config:
    return load_config(env={})


def review_of(
    pod: dict[str, Any],
    operation: str = "CREATE",
    *,
    old: dict[str, Any] | None = None,
    username: str = "system:serviceaccount:jhub:hub",
    dry_run: bool = False,
) -> dict[str, Any]:
    """An AdmissionReview request as the API server sends it for a pod (copies, never aliases)."""
    return request_review(
        copy.deepcopy(pod),
        operation=operation,
        old=copy.deepcopy(old) if old is not None else None,
        username=username,
        dry_run=dry_run,
    )


PodFactory = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def spawner_pod() -> PodFactory:
    """``await spawner_pod(user, profile, server)``: a pod built by a real KubeSpawner (recorded)."""
    return recorded_pod


def minimal_pod(**spec: Any) -> dict[str, Any]:
    """A valid pod with nothing the patch could lean on: no annotations, env, resources or gates."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "jupyter-x",
            "namespace": "jhub",
            "labels": {"component": "singleuser-server", "gpu-queue.io/profile": "gpu-enabled"},
        },
        "spec": {"containers": [{"name": "notebook", "image": "busybox"}], **spec},
    }
