"""Admission: pure functions from an AdmissionReview and the configuration to the answer.

No Redis, no Kubernetes API, no clock but the one ``now`` the caller passes: admission stays fast
and keeps working when everything else is down (invariant I4). Mutation is idempotent: a second
pass over its own output yields no patch (the API server may reinvoke it).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from webhook.config import Config, Profile
from webhook.grants import slices_in
from webhook.models import Admitted
from webhook.placement import PlacementError, placement_patch
from webhook.pods import (
    annotations_of,
    containers_of,
    format_time,
    groups_of,
    has_gate,
    is_singleuser,
    labels_of,
    parse_time,
    pointer,
    scheduling_gates,
)
from webhook.profiles import Resolution, choose_profile
from webhook.quantity import QuantityError, parse_quantity, same_quantity
from webhook.review import AdmissionRequest, AdmissionReview, answer
from webhook.review_parse import BadReview, outcome, parse_review

__all__ = ["BadReview", "mutate", "notebook_index", "outcome", "parse_review", "queued_create", "validate"]

Patch = list[dict[str, Any]]

# How far in the future a requested-at may be (clock skew between replicas) and still be ours.
_FUTURE_SKEW = timedelta(seconds=5)


def notebook_index(containers: list[dict[str, Any]], config: Config) -> int | None:
    """The container a profile applies to: the one named ``containerName``, else the only one.

    Mutation and validation share this rule, so a pod mutation accepted is never denied later."""
    index = next((i for i, c in enumerate(containers) if c.get("name") == config.container_name), None)
    if index is None and len(containers) == 1:
        return 0
    return index


def _request(review: AdmissionReview) -> AdmissionRequest:
    if review.request is None:  # parse_review guarantees it; keep the type checker honest
        raise BadReview("the AdmissionReview has no request")
    return review.request


# --------------------------------------------------------------------------------------- mutate


def queued_create(review: AdmissionReview, config: Config, now: datetime) -> tuple[str, Admitted] | None:
    """(pool, note) for a create that ``mutate`` would gate and stamp: the note ``/mutate`` stores
    before it takes the stamp, with ``since`` no later than any stamp the pod can get from a
    mutate at ``now`` or after (a recent incoming stamp that mutate keeps is earlier). A
    ``generateName`` pod has no name yet; its note matches no pod."""
    req = review.request
    pod = req.object if req is not None else None
    if req is None or not req.is_pod or req.operation != "CREATE" or not isinstance(pod, dict):
        return None
    if not is_singleuser(pod, config):
        return None
    choice = choose_profile(pod, config)
    if choice.resolution in (Resolution.DENIED, Resolution.ALLOWED) or choice.profile is None:
        return None
    pool_name = choice.profile.pool
    if pool_name is None or pool_name not in config.pools:
        return None
    resource = config.pools[pool_name].resource
    try:
        amount = parse_quantity(choice.profile.limits.get(resource) or choice.profile.requests.get(resource) or 1)
    except QuantityError:
        amount = Decimal(1)
    kept = _trusted_stamp(pod, config, now)
    meta = pod.get("metadata")
    name = req.name or (str(meta.get("name") or "") if isinstance(meta, dict) else "")
    note = Admitted(
        namespace=req.namespace or "",
        name=name,
        since=min(now, kept) if kept is not None else now,
        slices=slices_in(amount),
        rank=config.pools[pool_name].rank_of(groups_of(annotations_of(pod).get(config.groups_annotation))),
    )
    return pool_name, note


def _trusted_stamp(pod: dict[str, Any], config: Config, now: datetime) -> datetime | None:
    """The pod's incoming requested-at if mutate keeps it: recent, not far ahead (else replaced)."""
    stamp = annotations_of(pod).get(config.requested_at_annotation)
    when = parse_time(stamp) if stamp is not None else None
    if when is None:
        return None
    earliest = now - timedelta(seconds=config.admission.requested_at_trust_seconds)
    return when if earliest <= when <= now + _FUTURE_SKEW else None


def mutate(review: AdmissionReview, config: Config, now: datetime, *, trust_stamp: bool = True) -> AdmissionReview:
    """Set the profile's resources and env on the notebook container and its node placement on the
    pod (``webhook.placement``); gate and stamp pool pods. ``trust_stamp=False``: replace even a
    recent incoming requested-at (the caller could not note the pod, see ``webhook.server.admission``)."""
    req = _request(review)
    pod = req.object
    if not req.is_pod or req.operation != "CREATE" or not isinstance(pod, dict) or not is_singleuser(pod, config):
        return answer(req)
    choice = choose_profile(pod, config)
    if choice.resolution is Resolution.DENIED:
        return answer(req, allowed=False, message=choice.message)
    if choice.resolution is Resolution.ALLOWED or choice.profile is None or choice.name is None:
        return answer(req)
    containers = containers_of(pod)
    if not containers:
        return answer(req, allowed=False, message="gpu-queue: the pod has no containers, so no profile can be applied")
    index = notebook_index(containers, config)
    warnings: list[str] = []
    if index is None or containers[index].get("name") != config.container_name:
        if index is None:
            names = ", ".join(str(c.get("name")) for c in containers)
            return answer(
                req,
                allowed=False,
                message=(
                    f"gpu-queue: no container named {config.container_name!r} (containers: {names}); "
                    "set containerName in gpu-queue's configuration to the notebook container's name"
                ),
            )
        warnings.append(f"gpu-queue: no container named {config.container_name!r}; applied the profile to the only one")
    if len(pod.get("spec", {}).get("containers", [])) != len(containers):
        return answer(req, allowed=False, message="gpu-queue: spec.containers holds an entry that is not an object")

    patch: Patch = []
    if choice.resolution is Resolution.DEFAULTED:
        warnings.append(f"gpu-queue: {choice.message}")
        patch += _label_patch(pod, config.profile_label, choice.name)
    try:
        resources = _resources_patch(containers[index], index, choice.name, choice.profile, config, warnings)
    except QuantityError as exc:
        return answer(req, allowed=False, message=f"gpu-queue: the notebook container has a bad resource value: {exc}")
    patch += resources
    patch += _env_patch(containers[index], index, choice.profile)
    try:
        patch += placement_patch(pod["spec"], config.placements[choice.name], choice.name, warnings)
    except PlacementError as exc:
        return answer(req, allowed=False, message=f"gpu-queue: the pod's {exc}, so the profile cannot place it")
    if choice.profile.pool is not None:
        if pod.get("spec", {}).get("nodeName"):
            return answer(
                req,
                allowed=False,
                message=(
                    f"gpu-queue: profile {choice.name!r} is queued for a GPU slice, so the pod must not set "
                    "spec.nodeName; remove node_name from the spawner configuration"
                ),
            )
        patch += _gate_patch(pod, config)
        patch += _annotations_patch(pod, config, choice.profile.pool, now, warnings, trust_stamp)
    else:
        patch += _ungate_patch(pod, config)
    return answer(req, patch=patch, warnings=warnings)


def _label_patch(pod: dict[str, Any], label: str, value: str) -> Patch:
    if labels_of(pod).get(label) == value:
        return []
    meta = pod.get("metadata")
    if not isinstance(meta, dict):
        return [{"op": "add", "path": "/metadata", "value": {"labels": {label: value}}}]
    if not isinstance(meta.get("labels"), dict):
        return [{"op": "add", "path": "/metadata/labels", "value": {label: value}}]
    return [{"op": "add", "path": f"/metadata/labels/{pointer(label)}", "value": value}]


def _resources_patch(
    container: dict[str, Any], index: int, name: str, profile: Profile, config: Config, warnings: list[str]
) -> Patch:
    resources = container.get("resources")
    resources = resources if isinstance(resources, dict) else {}
    current_requests = resources.get("requests") if isinstance(resources.get("requests"), dict) else {}
    current_limits = resources.get("limits") if isinstance(resources.get("limits"), dict) else {}
    assert isinstance(current_requests, dict) and isinstance(current_limits, dict)
    pool_resource = config.pools[profile.pool].resource if profile.pool is not None else None
    forbidden = config.pool_resources - {pool_resource} if pool_resource else config.pool_resources

    requests: dict[str, Any] = {}
    for key, value in current_requests.items():
        if key in forbidden:
            continue
        if key == pool_resource and key not in profile.requests and not same_quantity(value, profile.limits[key]):
            continue  # the API server defaults an extended resource's request to its limit
        requests[key] = value
    limits: dict[str, Any] = {k: v for k, v in current_limits.items() if k not in forbidden}
    for key in sorted(forbidden & (set(current_requests) | set(current_limits))):
        warnings.append(f"gpu-queue: removed {key} from the pod: profile {name!r} has no {key} pool")
    for key, value in profile.requests.items():
        if key in current_requests and not same_quantity(current_requests[key], value):
            warnings.append(
                f"gpu-queue: profile {name!r} sets requests.{key}={value} (the pod asked for {current_requests[key]})"
            )
        requests[key] = value
    for key, value in profile.limits.items():
        if key in current_limits and not same_quantity(current_limits[key], value):
            warnings.append(
                f"gpu-queue: profile {name!r} sets limits.{key}={value} (the pod asked for {current_limits[key]})"
            )
        limits[key] = value
    # A request the profile leaves open must still fit under the limit it sets.
    for key, value in list(requests.items()):
        open_request = key not in profile.requests and key in profile.limits
        if open_request and parse_quantity(value) > parse_quantity(profile.limits[key]):
            requests[key] = profile.limits[key]
    for part in (requests, limits):
        for value in part.values():
            parse_quantity(value)  # a bad value the pod carried in: deny rather than pass it on

    if _same_resources(requests, current_requests) and _same_resources(limits, current_limits):
        return []
    desired = dict(resources)
    desired["requests"] = requests
    desired["limits"] = limits
    if not requests:
        desired.pop("requests")
    return [{"op": "add", "path": f"/spec/containers/{index}/resources", "value": desired}]


def _same_resources(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return set(a) == set(b) and all(same_quantity(a[k], b[k]) for k in a)


def _env_patch(container: dict[str, Any], index: int, profile: Profile) -> Patch:
    desired = profile.env
    if not desired:
        return []
    base = f"/spec/containers/{index}/env"
    env = container.get("env")
    if not isinstance(env, list):
        return [{"op": "add", "path": base, "value": [{"name": k, "value": v} for k, v in desired.items()]}]
    patch: Patch = []
    positions: dict[str, int] = {}
    for j, item in enumerate(env):
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name in desired:
            positions.setdefault(name, j)
    for name, value in desired.items():
        position = positions.get(name)
        if position is None:
            patch.append({"op": "add", "path": f"{base}/-", "value": {"name": name, "value": value}})
        elif env[position] != {"name": name, "value": value}:
            patch.append({"op": "replace", "path": f"{base}/{position}", "value": {"name": name, "value": value}})
    return patch


def _gate_patch(pod: dict[str, Any], config: Config) -> Patch:
    spec = pod.get("spec")
    gates = spec.get("schedulingGates") if isinstance(spec, dict) else None
    if not isinstance(gates, list):
        return [{"op": "add", "path": "/spec/schedulingGates", "value": [{"name": config.gate_name}]}]
    if has_gate(pod, config):
        return []
    return [{"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": config.gate_name}}]


def _ungate_patch(pod: dict[str, Any], config: Config) -> Patch:
    """A pod of a profile without a pool must not carry our gate or pool (it would wait forever)."""
    patch: Patch = []
    gates = scheduling_gates(pod)
    for position in reversed([j for j, g in enumerate(gates) if g == config.gate_name]):
        patch.append({"op": "remove", "path": f"/spec/schedulingGates/{position}"})
    if config.pool_annotation in annotations_of(pod):
        patch.append({"op": "remove", "path": f"/metadata/annotations/{pointer(config.pool_annotation)}"})
    return patch


def _annotations_patch(
    pod: dict[str, Any], config: Config, pool: str, now: datetime, warnings: list[str], trust_stamp: bool = True
) -> Patch:
    annotations = annotations_of(pod)
    stamp = annotations.get(config.requested_at_annotation)
    trusted = trust_stamp and _trusted_stamp(pod, config, now) is not None
    wanted: dict[str, str] = {}
    if annotations.get(config.pool_annotation) != pool:
        wanted[config.pool_annotation] = pool
    if not trusted:
        if stamp is not None:
            warnings.append(
                f"gpu-queue: replaced {config.requested_at_annotation}={stamp!r}: the queue stamps arrival itself"
            )
        wanted[config.requested_at_annotation] = format_time(now)
    if not wanted:
        return []
    meta = pod.get("metadata")
    if not isinstance(meta, dict):
        return [{"op": "add", "path": "/metadata", "value": {"annotations": wanted}}]
    if not isinstance(meta.get("annotations"), dict):
        return [{"op": "add", "path": "/metadata/annotations", "value": wanted}]
    return [{"op": "add", "path": f"/metadata/annotations/{pointer(k)}", "value": v} for k, v in wanted.items()]


# ------------------------------------------------------------------------------------- validate


def validate(review: AdmissionReview, config: Config) -> AdmissionReview:
    """Policy on the final object: the gate is the service's alone, GPUs only through a pool."""
    req = _request(review)
    pod = req.object
    if not req.is_pod or not isinstance(pod, dict):
        return answer(req)
    if req.operation == "CREATE" and is_singleuser(pod, config):
        message = _check_groups(pod, req.user_info.username, config) or _check_create(pod, config)
    elif req.operation == "UPDATE" and isinstance(req.old_object, dict):
        if not (is_singleuser(pod, config) or is_singleuser(req.old_object, config)):
            return answer(req)
        message = _check_update(req.old_object, pod, req.user_info.username, config)
    else:
        return answer(req)
    if message:
        return answer(req, allowed=False, message=message)
    return answer(req)


def _pool_resource_users(pod: dict[str, Any], config: Config) -> list[tuple[str, str, str]]:
    """(container, resource, amount) for every pool resource any container asks for."""
    found: list[tuple[str, str, str]] = []
    for field in ("containers", "initContainers", "ephemeralContainers"):
        for container in containers_of(pod, field):
            resources = container.get("resources")
            if not isinstance(resources, dict):
                continue
            for part in ("limits", "requests"):
                values = resources.get(part)
                if not isinstance(values, dict):
                    continue
                for key, value in values.items():
                    if key in config.pool_resources:
                        found.append((str(container.get("name")), key, str(value)))
    return found


def _check_create(pod: dict[str, Any], config: Config) -> str:
    choice = choose_profile(pod, config)
    if choice.resolution is Resolution.DENIED:
        return choice.message
    users = _pool_resource_users(pod, config)
    profile = choice.profile
    if profile is None or profile.pool is None:
        if users:
            container, resource, _ = users[0]
            name = choice.name or "(none)"
            return (
                f"gpu-queue: container {container!r} asks for {resource}, but profile {name!r} has no GPU pool. "
                "Choose a GPU profile on the spawn page; admins: set the profile label on GPU profiles "
                "(kubespawner_override.extra_labels) instead of adding GPUs to other profiles"
            )
        return ""
    pool = config.pools[profile.pool]
    containers = containers_of(pod)
    index = notebook_index(containers, config)
    notebook = str(containers[index].get("name")) if index is not None else config.container_name
    for container, resource, amount in users:
        if container != notebook or resource != pool.resource:
            return (
                f"gpu-queue: only the {notebook!r} container may ask for {pool.resource} "
                f"(container {container!r} asks for {amount} {resource}); remove it from extra_containers "
                "or init_containers"
            )
        if not same_quantity(amount, profile.limits[pool.resource]):
            return (
                f"gpu-queue: profile {choice.name!r} gives {profile.limits[pool.resource]} {resource}, the pod asks "
                f"for {amount}; another mutating webhook changed it — ask your admin to order the webhooks"
            )
    if not has_gate(pod, config):
        return (
            f"gpu-queue: pods of profile {choice.name!r} must wait in the GPU queue, but this pod has no "
            f"{config.gate_name} scheduling gate: the gpu-queue mutating webhook did not run. Admins: check the "
            "MutatingWebhookConfiguration's selectors (`kubectl get mutatingwebhookconfiguration`)"
        )
    return ""


def _check_groups(pod: dict[str, Any], username: str, config: Config) -> str:
    """The groups annotation decides group limits: only the hub may say which groups a user is in."""
    value = annotations_of(pod).get(config.groups_annotation)
    if value is None:
        return ""
    trusted = config.policy.trusted_accounts(config.namespaces)
    if username not in trusted:
        who = ", ".join(sorted(trusted)) or "nobody: set policy.hubServiceAccounts"
        return (
            f"gpu-queue: only the hub ({who}) may set "
            f"the {config.groups_annotation} annotation (it decides group limits); {username or 'an unknown user'} "
            "may not. Start servers from the hub; admins: list the hub's service account in policy.hubServiceAccounts"
        )
    if groups_of(value) == () and value.strip() != "[]":
        return f"gpu-queue: the {config.groups_annotation} annotation must be a JSON list of group names, got {value!r}"
    return ""


def _check_update(old: dict[str, Any], new: dict[str, Any], username: str, config: Config) -> str:
    if username == config.service_account:
        return ""
    if has_gate(old, config) and not has_gate(new, config):
        return (
            f"gpu-queue: only gpu-queue ({config.service_account}) may remove the {config.gate_name} scheduling "
            "gate: pods get their GPU slice in arrival order. Wait for your turn (`gpu-queue status` shows the "
            "queue); admins reorder with `gpu-queue queue move`"
        )
    old_annotations, new_annotations = annotations_of(old), annotations_of(new)
    protected = (
        config.requested_at_annotation,
        config.pool_annotation,
        config.admitted_at_annotation,
        config.released_annotation,
        config.removed_annotation,
        config.groups_annotation,
        config.hold_warned_annotation,
    )
    for key in protected:
        if old_annotations.get(key) != new_annotations.get(key):
            return (
                f"gpu-queue: only gpu-queue may change the {key} annotation (it decides the queue order); "
                "admins reorder with `gpu-queue queue move NAMESPACE/POD POSITION`"
            )
    return ""
