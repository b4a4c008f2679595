"""Removing our scheduling gate from one pod: the write that grants a slice.

The JSON patch is guarded by ``test`` ops on the pod's resourceVersion and on the gate's index, so
it removes our gate and nothing else even when someone edits the gates at the same moment. The first
patch is built from the watch cache's view (one round trip on the grant's path: the test ops make a
stale view fail, not write); a lost race (409/422) reads the pod and retries from what it reads
(``retry_on_conflict``). The same patch stamps ``admitted-at``, which tells every later leader when
the slice was granted.
"""

from __future__ import annotations

import logging
from datetime import datetime

from webhook.cluster_view import PodView, pod_view
from webhook.config import Config
from webhook.kube import Kube, KubeError, Obj, pod_path, retry_on_conflict
from webhook.pods import format_time, gate_index, pointer

log = logging.getLogger(__package__)  # the controller's one logger, whichever module writes


async def ungate(kube: Kube, config: Config, head: PodView, now: datetime) -> PodView | None:
    """Remove our gate (only ours); the pod's new view, or None when it is gone, being deleted or
    no longer gated by us, or the patch failed (logged: the next pass tries again)."""
    path = pod_path(head.namespace, head.name)
    gate = config.gate_name

    def removal(version: str, index: int, has_annotations: bool) -> list[Obj]:
        ops: list[Obj] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": version},
            {"op": "test", "path": f"/spec/schedulingGates/{index}/name", "value": gate},
            {"op": "remove", "path": f"/spec/schedulingGates/{index}"},
        ]
        if has_annotations:
            path_ = f"/metadata/annotations/{pointer(config.admitted_at_annotation)}"
            ops.append({"op": "add", "path": path_, "value": format_time(now)})
        else:
            value = {config.admitted_at_annotation: format_time(now)}
            ops.append({"op": "add", "path": "/metadata/annotations", "value": value})
        return ops

    async def from_view() -> Obj | None:
        """The view is the pod at its resourceVersion, and a pool pod has annotations (its pool's)."""
        return await kube.patch_json(path, removal(head.resource_version, head.gate_index or 0, True))

    async def from_pod() -> Obj | None:
        pod = await kube.request("GET", path)
        meta = pod.get("metadata") or {}
        index = gate_index(pod, config)
        if index is None or meta.get("deletionTimestamp"):
            return None
        annotated = isinstance(meta.get("annotations"), dict)
        return await kube.patch_json(path, removal(meta["resourceVersion"], index, annotated))

    usable = head.gate_index is not None and head.resource_version != "" and head.pool is not None
    first = [from_view] if usable else []

    async def attempt() -> Obj | None:
        return await (first.pop() if first else from_pod)()

    try:
        result = await retry_on_conflict(attempt)
    except KubeError as exc:
        if exc.status != 404:
            log.warning("gate removal failed", extra={"ctx": {"pod": head.key, "error": str(exc)}})
        return None
    return None if result is None else pod_view(result, config)
