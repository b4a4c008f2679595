"""Removing our scheduling gate from one pod: the write that grants a slice.

The JSON patch is guarded by ``test`` ops on the pod's resourceVersion and on the gate's index, so
it removes our gate and nothing else even when someone edits the gates at the same moment; a lost
race (409/422) reads the pod again and retries (``retry_on_conflict``). The same patch stamps
``admitted-at``, which tells every later leader when the slice was granted.
"""

from __future__ import annotations

import logging
from datetime import datetime

from webhook.cluster_view import PodView, pod_view
from webhook.config import Config
from webhook.kube import Kube, KubeError, Obj, pod_path, retry_on_conflict
from webhook.pods import format_time, pointer

log = logging.getLogger(__package__)  # the controller's one logger, whichever module writes


async def ungate(kube: Kube, config: Config, head: PodView, now: datetime) -> PodView | None:
    """Remove our gate (only ours); the pod's new view, or None when it is gone, being deleted or
    no longer gated by us, or the patch failed (logged: the next pass tries again)."""
    path = pod_path(head.namespace, head.name)
    gate = config.gate_name

    async def attempt() -> Obj | None:
        pod = await kube.request("GET", path)
        gates = (pod.get("spec") or {}).get("schedulingGates") or []
        index = next((i for i, g in enumerate(gates) if g.get("name") == gate), None)
        if index is None or (pod.get("metadata") or {}).get("deletionTimestamp"):
            return None
        admitted = f"/metadata/annotations/{pointer(config.admitted_at_annotation)}"
        ops: list[Obj] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": pod["metadata"]["resourceVersion"]},
            {"op": "test", "path": f"/spec/schedulingGates/{index}/name", "value": gate},
            {"op": "remove", "path": f"/spec/schedulingGates/{index}"},
        ]
        if isinstance((pod.get("metadata") or {}).get("annotations"), dict):
            ops.append({"op": "add", "path": admitted, "value": format_time(now)})
        else:
            ops.append(
                {
                    "op": "add",
                    "path": "/metadata/annotations",
                    "value": {config.admitted_at_annotation: format_time(now)},
                }
            )
        return await kube.patch_json(path, ops)

    try:
        result = await retry_on_conflict(attempt)
    except KubeError as exc:
        if exc.status != 404:
            log.warning("gate removal failed", extra={"ctx": {"pod": head.key, "error": str(exc)}})
        return None
    return None if result is None else pod_view(result, config)
