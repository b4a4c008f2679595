"""Admission on real KubeSpawner manifests: resources, env, the gate, annotations, policy."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest

from tests.unit.conftest import PodFactory, minimal_pod, review_of
from webhook.admission import BadReview, mutate, outcome, parse_review, validate
from webhook.config import Config, load_config
from webhook.pods import parse_time
from webhook.quantity import parse_quantity
from webhook.review import AdmissionReview

NOW = datetime(2026, 11, 28, 16, 0, 0, 123456, tzinfo=UTC)
SA = "system:serviceaccount:gpu-queue:gpu-queue"
AWKWARD_USERS = [("alice", ""), ("Bob.Smith", ""), ("carol@uni.example.org", ""), ("DAVE", "ml-run"), ("e_f", "x.y")]


def run_mutate(
    pod: dict[str, Any], config: Config, now: datetime = NOW, **kw: Any
) -> tuple[AdmissionReview, dict[str, Any]]:
    review = parse_review(json.dumps(review_of(pod, **kw)).encode())
    answer = mutate(review, config, now)
    assert answer.response is not None
    patched = jsonpatch.apply_patch(pod, answer.response.patch_ops()) if answer.response.patch else copy.deepcopy(pod)
    return answer, patched


def run_validate(pod: dict[str, Any], config: Config, **kw: Any) -> AdmissionReview:
    return validate(parse_review(json.dumps(review_of(pod, **kw)).encode()), config)


def notebook(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "notebook")


def env(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in notebook(pod).get("env", [])}


def assert_quantities(actual: dict[str, Any], expected: dict[str, str]) -> None:
    assert set(actual) == set(expected), (actual, expected)
    for key, value in expected.items():
        assert parse_quantity(actual[key]) == parse_quantity(value), (key, actual[key], value)


@pytest.mark.parametrize(("user", "server"), AWKWARD_USERS)
async def test_gpu_pod_gets_gpu_profile_resources_gate_and_annotations(
    spawner_pod: PodFactory, config: Config, user: str, server: str
) -> None:
    pod = await spawner_pod(user, "gpu-enabled", server)
    answer, patched = run_mutate(pod, config)
    assert answer.response is not None and answer.response.allowed
    res = notebook(patched)["resources"]
    assert_quantities(res["requests"], {"cpu": "1", "memory": "2Gi"})
    assert_quantities(res["limits"], {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1"})
    assert {"name": "gpu-queue.io/slice"} in patched["spec"]["schedulingGates"]
    annotations = patched["metadata"]["annotations"]
    assert annotations["gpu-queue.io/pool"] == "gpu"
    assert parse_time(annotations["gpu-queue.io/requested-at"]) == NOW
    assert annotations["gpu-queue.io/requested-at"] == "2026-11-28T16:00:00.123456Z"
    # What the hub wrote stays: identity annotations and the component label KubeSpawner watches by.
    assert annotations["hub.jupyter.org/username"] == user
    assert patched["metadata"]["labels"]["component"] == "singleuser-server"
    kubernetes_validate.validate(patched, "1.35.0", strict=True)


@pytest.mark.parametrize(("user", "server"), AWKWARD_USERS)
async def test_cpu_pod_gets_cpu_profile_resources_and_is_never_gated(
    spawner_pod: PodFactory, config: Config, user: str, server: str
) -> None:
    pod = await spawner_pod(user, "cpu-only", server)
    _, patched = run_mutate(pod, config)
    res = notebook(patched)["resources"]
    assert_quantities(res["requests"], {"cpu": "500m", "memory": "1Gi"})
    assert_quantities(res["limits"], {"cpu": "2", "memory": "4Gi"})
    assert "schedulingGates" not in patched["spec"] or not patched["spec"]["schedulingGates"]
    assert "gpu-queue.io/requested-at" not in patched["metadata"].get("annotations", {})
    kubernetes_validate.validate(patched, "1.35.0", strict=True)


@pytest.mark.parametrize("profile", ["gpu-enabled", "cpu-only"])
async def test_mutating_its_own_output_again_changes_nothing(
    spawner_pod: PodFactory, config: Config, profile: str
) -> None:
    pod = await spawner_pod("Bob.Smith", profile, "")
    _, once = run_mutate(pod, config)
    answer, twice = run_mutate(once, config, now=NOW + timedelta(seconds=2))
    assert answer.response is not None and answer.response.patch is None
    assert twice == once


async def test_second_pass_after_api_server_defaulting_is_still_a_no_op(
    spawner_pod: PodFactory, config: Config
) -> None:
    """The API server defaults an extended resource's request to its limit between passes."""
    pod = await spawner_pod("alice", "gpu-enabled")
    _, once = run_mutate(pod, config)
    notebook(once)["resources"]["requests"]["nvidia.com/gpu"] = "1"
    answer, _ = run_mutate(once, config, now=NOW + timedelta(seconds=1))
    assert answer.response is not None and answer.response.patch is None


async def test_env_vars_follow_the_profile_in_the_hubs_format(spawner_pod: PodFactory, config: Config) -> None:
    pod = await spawner_pod("alice", "gpu-enabled")
    for item in notebook(pod)["env"]:
        if item["name"] == "CPU_LIMIT":
            item["value"] = "16.0"  # a hub whose profile disagrees with the admin's policy
    pod_env_before = env(pod)
    _, patched = run_mutate(pod, config)
    values = env(patched)
    assert values["CPU_LIMIT"] == "4.0"
    assert values["CPU_GUARANTEE"] == "1.0"
    assert values["MEM_LIMIT"] == str(8 * 1024**3)
    assert values["MEM_GUARANTEE"] == str(2 * 1024**3)
    # Every other variable is untouched and in place.
    assert {k: v for k, v in values.items() if not k.startswith(("CPU_", "MEM_"))} == {
        k: v for k, v in pod_env_before.items() if not k.startswith(("CPU_", "MEM_"))
    }


async def test_pod_asking_for_more_than_its_profile_gets_the_profile_and_a_warning(
    spawner_pod: PodFactory, config: Config
) -> None:
    pod = await spawner_pod("alice", "gpu-enabled")
    notebook(pod)["resources"]["limits"]["cpu"] = 16
    notebook(pod)["resources"]["limits"]["nvidia.com/gpu"] = "4"
    answer, patched = run_mutate(pod, config)
    assert parse_quantity(notebook(patched)["resources"]["limits"]["cpu"]) == 4
    assert parse_quantity(notebook(patched)["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert answer.response is not None and answer.response.warnings
    assert any("limits.cpu=4" in w and "16" in w for w in answer.response.warnings)


async def test_cpu_profile_pod_loses_gpu_resources_with_a_warning(spawner_pod: PodFactory, config: Config) -> None:
    pod = await spawner_pod("alice", "cpu-only", extra={"extra_resource_limits": {"nvidia.com/gpu": "1"}})
    assert "nvidia.com/gpu" in notebook(pod)["resources"]["limits"]
    answer, patched = run_mutate(pod, config)
    assert "nvidia.com/gpu" not in notebook(patched)["resources"]["limits"]
    assert "nvidia.com/gpu" not in notebook(patched)["resources"].get("requests", {})
    assert answer.response is not None and any("nvidia.com/gpu" in w for w in answer.response.warnings or [])
    assert run_validate(patched, config).response.allowed  # type: ignore[union-attr]


async def test_missing_profile_label_defaults_to_cpu_only_and_labels_the_pod(
    spawner_pod: PodFactory, config: Config
) -> None:
    pod = await spawner_pod("alice", None)
    answer, patched = run_mutate(pod, config)
    assert patched["metadata"]["labels"]["gpu-queue.io/profile"] == "cpu-only"
    assert_quantities(notebook(patched)["resources"]["limits"], {"cpu": "2", "memory": "4Gi"})
    assert answer.response is not None and any("cpu-only" in w for w in answer.response.warnings or [])


async def test_unknown_profile_is_denied_with_what_to_do(spawner_pod: PodFactory, config: Config) -> None:
    pod = await spawner_pod("alice", "gpu-enabled")
    pod["metadata"]["labels"]["gpu-queue.io/profile"] = "a100-large"
    for check in (run_mutate(pod, config)[0], run_validate(pod, config)):
        assert check.response is not None and not check.response.allowed
        assert check.response.status is not None
        message = check.response.status.message
        assert "a100-large" in message and "cpu-only" in message and "gpu-enabled" in message


async def test_unknown_profile_policy_allow_leaves_the_pod_alone(spawner_pod: PodFactory) -> None:
    config = load_config(env={"GPU_QUEUE_UNKNOWN_PROFILE": "allow"})
    pod = await spawner_pod("alice", "cpu-only")
    pod["metadata"]["labels"]["gpu-queue.io/profile"] = "something-else"
    answer, patched = run_mutate(pod, config)
    assert answer.response is not None and answer.response.allowed and answer.response.patch is None
    assert patched == pod


def test_patch_creates_missing_parents() -> None:
    config = load_config(env={})
    _, patched = run_mutate(minimal_pod(), config)
    assert patched["spec"]["schedulingGates"] == [{"name": "gpu-queue.io/slice"}]
    assert patched["metadata"]["annotations"]["gpu-queue.io/pool"] == "gpu"
    assert env(patched)["CPU_LIMIT"] == "4.0"
    kubernetes_validate.validate(patched, "1.35.0", strict=True)


def test_other_scheduling_gates_are_left_alone() -> None:
    config = load_config(env={})
    pod = minimal_pod(schedulingGates=[{"name": "example.com/other"}])
    _, patched = run_mutate(pod, config)
    assert patched["spec"]["schedulingGates"] == [{"name": "example.com/other"}, {"name": "gpu-queue.io/slice"}]


def test_annotation_keys_with_slashes_and_tildes_are_escaped() -> None:
    config = load_config(env={"GPU_QUEUE_PREFIX": "q~x.io"})
    pod = minimal_pod()
    pod["metadata"]["labels"]["q~x.io/profile"] = "gpu-enabled"
    pod["metadata"]["annotations"] = {"keep/me": "1"}
    answer, patched = run_mutate(pod, config)
    assert answer.response is not None
    assert any("q~0x.io~1pool" in op["path"] for op in answer.response.patch_ops())
    assert patched["metadata"]["annotations"]["q~x.io/pool"] == "gpu"
    assert patched["metadata"]["annotations"]["keep/me"] == "1"
    assert {"name": "q~x.io/slice"} in patched["spec"]["schedulingGates"]


def test_forged_old_requested_at_is_replaced_so_nobody_jumps_the_queue() -> None:
    config = load_config(env={})
    pod = minimal_pod()
    pod["metadata"]["annotations"] = {"gpu-queue.io/requested-at": "2001-01-01T00:00:00.000000Z"}
    answer, patched = run_mutate(pod, config)
    assert parse_time(patched["metadata"]["annotations"]["gpu-queue.io/requested-at"]) == NOW
    assert answer.response is not None and any("replaced" in w for w in answer.response.warnings or [])


def test_pod_without_containers_is_denied_with_a_message() -> None:
    config = load_config(env={})
    answer, _ = run_mutate(minimal_pod() | {"spec": {"containers": []}}, config)
    assert answer.response is not None and not answer.response.allowed
    assert answer.response.status is not None and "no containers" in answer.response.status.message


@pytest.mark.parametrize("dry_run", [False, True])
def test_dry_run_answers_exactly_like_a_real_request(dry_run: bool) -> None:
    config = load_config(env={})
    answer, _ = run_mutate(minimal_pod(), config, dry_run=dry_run)
    reference, _ = run_mutate(minimal_pod(), config)
    assert answer.response is not None and reference.response is not None
    assert answer.response.patch == reference.response.patch


def test_pods_that_are_not_single_user_servers_pass_unchanged() -> None:
    config = load_config(env={})
    pod = minimal_pod()
    pod["metadata"]["labels"] = {"app": "something"}
    answer, patched = run_mutate(pod, config)
    assert answer.response is not None and answer.response.allowed and answer.response.patch is None
    assert patched == pod
    assert outcome(answer) == "allowed"
    assert run_validate(pod, config).response.allowed  # type: ignore[union-attr]


def test_other_kinds_and_operations_pass_unchanged() -> None:
    config = load_config(env={})
    raw = review_of(minimal_pod())
    raw["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    answer = mutate(parse_review(json.dumps(raw).encode()), config, NOW)
    assert answer.response is not None and answer.response.allowed and answer.response.patch is None
    delete = review_of(minimal_pod(), operation="DELETE")
    assert mutate(parse_review(json.dumps(delete).encode()), config, NOW).response.patch is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (
            b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "x"}}',
            "admission.k8s.io/v1",
        ),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}', "uid"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "no request"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    ],
)
def test_bad_bodies_raise_bad_review(body: bytes, why: str) -> None:
    with pytest.raises(BadReview, match=why):
        parse_review(body)


# ----------------------------------------------------------------------------------- validation


async def gated_pod(spawner_pod: PodFactory, config: Config) -> dict[str, Any]:
    return run_mutate(await spawner_pod("alice", "gpu-enabled"), config)[1]


async def test_removing_the_gate_is_denied_for_users_and_allowed_for_the_service(
    spawner_pod: PodFactory, config: Config
) -> None:
    old = await gated_pod(spawner_pod, config)
    new = copy.deepcopy(old)
    new["spec"]["schedulingGates"] = []
    denied = run_validate(new, config, operation="UPDATE", old=old, username="alice@example.org")
    assert denied.response is not None and not denied.response.allowed
    assert denied.response.status is not None and "gpu-queue status" in denied.response.status.message
    allowed = run_validate(new, config, operation="UPDATE", old=old, username=SA)
    assert allowed.response is not None and allowed.response.allowed


async def test_changing_requested_at_is_denied_for_users(spawner_pod: PodFactory, config: Config) -> None:
    old = await gated_pod(spawner_pod, config)
    new = copy.deepcopy(old)
    new["metadata"]["annotations"]["gpu-queue.io/requested-at"] = "2000-01-01T00:00:00.000000Z"
    denied = run_validate(new, config, operation="UPDATE", old=old, username="kubernetes-admin")
    assert denied.response is not None and not denied.response.allowed
    assert denied.response.status is not None and "queue move" in denied.response.status.message


async def test_gpu_in_a_sidecar_is_denied(spawner_pod: PodFactory, config: Config) -> None:
    sidecar = {"name": "helper", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
    pod = await spawner_pod("alice", "gpu-enabled", extra={"extra_containers": [sidecar]})
    _, patched = run_mutate(pod, config)
    denied = run_validate(patched, config)
    assert denied.response is not None and not denied.response.allowed
    assert denied.response.status is not None and "helper" in denied.response.status.message


async def test_gpu_on_a_profile_without_a_pool_is_denied(spawner_pod: PodFactory, config: Config) -> None:
    sidecar = {"name": "helper", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
    pod = await spawner_pod("alice", "cpu-only", extra={"extra_containers": [sidecar]})
    denied = run_validate(run_mutate(pod, config)[1], config)
    assert denied.response is not None and not denied.response.allowed
    assert denied.response.status is not None and "has no GPU pool" in denied.response.status.message


async def test_gpu_pod_without_the_gate_is_denied_as_a_missing_mutation(
    spawner_pod: PodFactory, config: Config
) -> None:
    pod = await spawner_pod("alice", "gpu-enabled")
    denied = run_validate(pod, config)
    assert denied.response is not None and not denied.response.allowed
    assert denied.response.status is not None and "MutatingWebhookConfiguration" in denied.response.status.message


async def test_mutated_pods_pass_validation(spawner_pod: PodFactory, config: Config) -> None:
    for profile in ("gpu-enabled", "cpu-only"):
        _, patched = run_mutate(await spawner_pod("Bob.Smith", profile, "ml"), config)
        assert run_validate(patched, config).response.allowed  # type: ignore[union-attr]


def test_a_single_container_with_another_name_is_the_notebook_for_both_webhooks() -> None:
    config = load_config(env={})
    pod = minimal_pod()
    pod["spec"]["containers"][0]["name"] = "lab"
    answer, patched = run_mutate(pod, config)
    assert answer.response is not None and answer.response.allowed
    assert parse_quantity(patched["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) == 1
    verdict = run_validate(patched, config)
    assert verdict.response is not None and verdict.response.allowed, verdict.response


def test_the_note_of_a_queued_create_is_no_later_than_any_stamp_it_can_get(config: Config) -> None:
    """``queued_create``: the pool and the note /mutate stores before stamping (its ``since`` is
    the earlier of now and a recent incoming stamp that mutate keeps; an old one is replaced)."""
    from webhook.admission import queued_create

    def note_of(pod: dict[str, Any]) -> Any:
        return queued_create(parse_review(json.dumps(review_of(pod)).encode()), config, NOW)

    pool, note = note_of(minimal_pod())
    assert (pool, note.namespace, note.name, note.since, note.slices) == ("gpu", "jhub", "jupyter-x", NOW, 1)
    kept = minimal_pod()
    kept["metadata"]["annotations"] = {"gpu-queue.io/requested-at": "2026-11-28T15:59:50.000001Z"}
    assert note_of(kept)[1].since == datetime(2026, 11, 28, 15, 59, 50, 1, tzinfo=UTC)
    assert parse_time(run_mutate(kept, config)[1]["metadata"]["annotations"]["gpu-queue.io/requested-at"]) == (
        note_of(kept)[1].since
    )
    old = minimal_pod()
    old["metadata"]["annotations"] = {"gpu-queue.io/requested-at": "2026-11-28T15:00:00.000000Z"}
    assert note_of(old)[1].since == NOW
    cpu = minimal_pod()
    cpu["metadata"]["labels"]["gpu-queue.io/profile"] = "cpu-only"
    assert note_of(cpu) is None
    assert (
        queued_create(
            parse_review(json.dumps(review_of(minimal_pod(), "UPDATE", old=minimal_pod())).encode()), config, NOW
        )
        is None
    )


# --- the groups annotation: only the hub says which groups a user is in ------------------------


HUB_SA = "system:serviceaccount:jhub:hub"


def hub_namespaced(config: Config) -> Config:
    return config.model_copy(update={"namespaces": ["jhub"]})


async def grouped_pod(spawner_pod: PodFactory, config: Config, value: str = '["course-a"]') -> dict[str, Any]:
    pod = await spawner_pod("alice", "gpu-enabled")
    pod["metadata"].setdefault("annotations", {})[config.groups_annotation] = value
    return run_mutate(pod, config)[1]


def denial(review: AdmissionReview) -> str:
    assert review.response is not None
    if review.response.allowed:
        return ""
    assert review.response.status is not None
    return review.response.status.message


async def test_groups_set_by_the_hubs_service_account_are_accepted(spawner_pod: PodFactory, config: Config) -> None:
    config = hub_namespaced(config)
    pod = await grouped_pod(spawner_pod, config)
    assert denial(run_validate(pod, config, username=HUB_SA)) == ""


async def test_a_forged_groups_annotation_is_denied_with_who_may_set_it(
    spawner_pod: PodFactory, config: Config
) -> None:
    config = hub_namespaced(config)
    pod = await grouped_pod(spawner_pod, config, '["instructors"]')
    message = denial(run_validate(pod, config, username="alice@example.org"))
    assert "only the hub (system:serviceaccount:jhub:hub)" in message and "alice@example.org" in message
    other_hub = denial(run_validate(pod, config, username="system:serviceaccount:elsewhere:hub"))
    assert "only the hub" in other_hub, "a 'hub' account in another namespace is not the hub"


async def test_without_hub_namespaces_nobody_may_set_groups_until_the_admin_names_the_hub(
    spawner_pod: PodFactory, config: Config
) -> None:
    pod = await grouped_pod(spawner_pod, config)
    assert "set policy.hubServiceAccounts" in denial(run_validate(pod, config, username=HUB_SA))
    named = config.model_copy(
        update={"policy": config.policy.model_copy(update={"hub_service_accounts": ["system:serviceaccount:hubs:jh"]})}
    )
    assert denial(run_validate(pod, named, username="system:serviceaccount:hubs:jh")) == ""


async def test_a_groups_annotation_that_is_not_a_json_list_of_names_is_denied(
    spawner_pod: PodFactory, config: Config
) -> None:
    config = hub_namespaced(config)
    for bad in ("course-a", '{"g": 1}', "[1, 2]"):
        pod = await grouped_pod(spawner_pod, config, bad)
        assert "must be a JSON list of group names" in denial(run_validate(pod, config, username=HUB_SA)), bad
    assert denial(run_validate(await grouped_pod(spawner_pod, config, "[]"), config, username=HUB_SA)) == ""


async def test_changing_the_groups_of_a_pod_is_denied_even_to_the_hub(spawner_pod: PodFactory, config: Config) -> None:
    config = hub_namespaced(config)
    old = await grouped_pod(spawner_pod, config)
    for change in ('["instructors"]', None):
        new = copy.deepcopy(old)
        if change is None:
            del new["metadata"]["annotations"][config.groups_annotation]
        else:
            new["metadata"]["annotations"][config.groups_annotation] = change
        message = denial(run_validate(new, config, operation="UPDATE", old=old, username=HUB_SA))
        assert f"only gpu-queue may change the {config.groups_annotation}" in message
    plain = copy.deepcopy(await gated_pod(spawner_pod, config))
    added = copy.deepcopy(plain)
    added["metadata"]["annotations"][config.groups_annotation] = '["staff"]'
    assert denial(run_validate(added, config, operation="UPDATE", old=plain, username="alice")), "nor added later"
