"""The watch cache takes the leader's own writes at once, but never over what the watch said since."""

from __future__ import annotations

from typing import Any

from webhook.cluster_view import pod_view
from webhook.config import load_config
from webhook.controller.cache import WatchCache

CONFIG = load_config(env={})


def pod(name: str, rv: int, *, gated: bool, uid: str = "uid-1") -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "jhub",
            "name": name,
            "uid": uid,
            "resourceVersion": str(rv),
            "labels": {"component": "singleuser-server"},
            "annotations": {CONFIG.pool_annotation: "gpu", CONFIG.requested_at_annotation: "2026-12-01T12:00:00Z"},
        },
        "spec": {"schedulingGates": [{"name": CONFIG.gate_name}] if gated else [], "containers": []},
    }


def granted(name: str, rv: int, uid: str = "uid-1") -> Any:
    view = pod_view(pod(name, rv, gated=False, uid=uid), CONFIG)
    assert view is not None and view.holding
    return view


def test_a_grant_answered_after_the_pods_deletion_was_watched_does_not_bring_it_back() -> None:
    """The pod is deleted while the gate-removal patch is answered; the watch's DELETED arrives
    first. Recording the answer then would leave a holder of a pod that does not exist."""
    cache = WatchCache(CONFIG)
    cache.pod_changed("ADDED", pod("jupyter-a", 10, gated=True))
    cache.pod_changed("DELETED", pod("jupyter-a", 12, gated=True))
    cache.record(granted("jupyter-a", 11))
    assert "jhub/jupyter-a" not in cache.pods
    assert cache.pool_usage("gpu")[1] == 0
    assert [v.key for v in cache.take_gone()] == ["jhub/jupyter-a"]


def test_a_grant_is_counted_before_the_watch_shows_it_but_not_over_a_later_state() -> None:
    cache = WatchCache(CONFIG)
    cache.pod_changed("ADDED", pod("jupyter-a", 10, gated=True))
    cache.record(granted("jupyter-a", 11))  # the watch has not caught up: our answer counts now
    assert cache.pods["jhub/jupyter-a"].holding and cache.pool_usage("gpu")[1] == 1
    later = pod("jupyter-a", 13, gated=False)
    later["spec"]["nodeName"] = "gpu-1"
    cache.pod_changed("MODIFIED", later)
    cache.record(granted("jupyter-a", 11))  # a stale answer does not undo what the watch said
    assert cache.pods["jhub/jupyter-a"].node == "gpu-1"


def test_an_answer_about_an_earlier_pod_of_the_same_name_is_not_recorded() -> None:
    cache = WatchCache(CONFIG)
    cache.pod_changed("ADDED", pod("jupyter-a", 20, gated=True, uid="uid-2"))  # the user came back
    cache.record(granted("jupyter-a", 21, uid="uid-1"))
    assert cache.pods["jhub/jupyter-a"].gated
    assert cache.pool_usage("gpu")[1] == 0
