"""The AdmissionReview the API server sends for a pod: one shape for the tests and the benchmarks."""

from __future__ import annotations

import uuid
from typing import Any

from webhook.review import API_VERSION


def request_review(
    pod: Any,
    *,
    operation: str = "CREATE",
    old: Any = None,
    username: str = "system:serviceaccount:jhub:hub",
    uid: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """The request review as JSON (the hub's service account by default)."""
    meta = pod.get("metadata") if isinstance(pod, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    return {
        "apiVersion": API_VERSION,
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "name": str(meta.get("name", "")),
            "namespace": str(meta.get("namespace", "jhub")),
            "operation": operation,
            "userInfo": {"username": username, "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod,
            "oldObject": old,
            "dryRun": dry_run,
        },
    }
