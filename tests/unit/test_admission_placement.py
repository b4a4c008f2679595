"""Admission merges a profile's node placement (nodeSelector, affinity, tolerations) into real
KubeSpawner pods of every shape: each patch applies, the pod still validates, a second pass is a
no-op, and the merged affinity means exactly "what the pod asked AND what the profile asks"."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.conftest import PodFactory, review_of
from webhook.admission import mutate, parse_review, validate
from webhook.config import Config, load_config
from webhook.node_fit import terms_of
from webhook.placement import and_terms

NOW = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)
REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"
PRODUCT = {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["RTX-5090"]}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
PREFER_FAST = {"weight": 10, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}


def placed_config() -> Config:
    """The seed, with a gpu-enabled profile that places its pods (and a pool selector)."""
    data = load_config(env={}).model_dump(by_alias=True, mode="json")
    data["redis"]["url"] = "redis://localhost:6379/0"
    data["pools"]["gpu"]["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
    data["profiles"]["gpu-enabled"].update(
        nodeSelector={"pool": "gpu"},
        affinity={
            "nodeAffinity": {
                REQUIRED: {"nodeSelectorTerms": [{"matchExpressions": [PRODUCT]}]},
                PREFERRED: [PREFER_FAST],
            }
        },
        tolerations=[GPU_TOLERATION],
    )
    return Config.model_validate(data)


CONFIG = placed_config()


def admit(pod: dict[str, Any], config: Config = CONFIG) -> tuple[list[str], dict[str, Any]]:
    """Mutate as the API server would, apply the patch, check validation and a second pass."""
    answer = mutate(parse_review(json.dumps(review_of(pod)).encode()), config, NOW)
    assert answer.response is not None and answer.response.allowed, answer.response
    patched = jsonpatch.apply_patch(copy.deepcopy(pod), answer.response.patch_ops())
    verdict = validate(parse_review(json.dumps(review_of(patched)).encode()), config)
    assert verdict.response is not None and verdict.response.allowed, verdict.response
    again = mutate(parse_review(json.dumps(review_of(patched)).encode()), config, NOW + timedelta(seconds=1))
    assert again.response is not None and again.response.patch is None, again.response.patch_ops()
    kubernetes_validate.validate(patched, "1.35.0", strict=True)
    return list(answer.response.warnings or []), patched


def required_terms(pod: dict[str, Any]) -> list[dict[str, Any]]:
    terms: list[dict[str, Any]] = pod["spec"]["affinity"]["nodeAffinity"][REQUIRED]["nodeSelectorTerms"]
    return terms


async def test_a_pod_without_placement_gets_the_profiles(spawner_pod: PodFactory) -> None:
    pod = await spawner_pod("alice", "gpu-enabled")
    assert not {"nodeSelector", "affinity", "tolerations"} & set(pod["spec"])
    warnings, patched = admit(pod)
    spec = patched["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true", "pool": "gpu"}
    assert required_terms(patched) == [{"matchExpressions": [PRODUCT]}]
    assert spec["affinity"]["nodeAffinity"][PREFERRED] == [PREFER_FAST]
    assert spec["tolerations"] == [GPU_TOLERATION]
    assert not [w for w in warnings if "nodeSelector" in w]


async def test_the_pods_node_selector_keeps_its_keys_and_loses_a_conflicting_value(spawner_pod: PodFactory) -> None:
    pod = await spawner_pod("alice", "gpu-enabled")
    pod["spec"]["nodeSelector"] = {"zone": "a", "pool": "cpu"}
    warnings, patched = admit(pod)
    assert patched["spec"]["nodeSelector"] == {"zone": "a", "pool": "gpu", "nvidia.com/gpu.present": "true"}
    assert any("nodeSelector pool=gpu" in w and "cpu" in w for w in warnings), warnings


async def test_the_pods_affinity_terms_are_each_anded_with_the_profiles(spawner_pod: PodFactory) -> None:
    pod = await spawner_pod("alice", "gpu-enabled")
    purpose = {"key": "hub.jupyter.org/node-purpose", "operator": "In", "values": ["user"]}
    named = {"key": "metadata.name", "operator": "In", "values": ["gpu-1"]}
    pod["spec"]["affinity"] = {
        "nodeAffinity": {
            REQUIRED: {
                "nodeSelectorTerms": [
                    {"matchExpressions": [purpose]},
                    {"matchExpressions": [PRODUCT, purpose]},  # holds the requirement already
                    {"matchFields": [named]},
                ]
            },
            PREFERRED: [PREFER_FAST],
        },
        "podAntiAffinity": {PREFERRED: []},
    }
    _, patched = admit(pod)
    assert required_terms(patched) == [
        {"matchExpressions": [purpose, PRODUCT]},
        {"matchExpressions": [PRODUCT, purpose]},
        {"matchFields": [named], "matchExpressions": [PRODUCT]},
    ]
    assert patched["spec"]["affinity"]["nodeAffinity"][PREFERRED] == [PREFER_FAST]  # not twice
    assert patched["spec"]["affinity"]["podAntiAffinity"] == {PREFERRED: []}


async def test_tolerations_are_appended_once(spawner_pod: PodFactory) -> None:
    pod = await spawner_pod("alice", "gpu-enabled")
    z2jh = {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"}
    pod["spec"]["tolerations"] = [z2jh]
    _, patched = admit(pod)
    assert patched["spec"]["tolerations"] == [z2jh, GPU_TOLERATION]
    # The same toleration written another way (operator defaulted) is already there.
    pod["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    _, patched = admit(pod)
    assert patched["spec"]["tolerations"] == [GPU_TOLERATION]


@pytest.mark.parametrize("user", ["alice", "Bob.Smith", "DAVE"])
async def test_the_seed_keeps_cpu_pods_off_gpu_nodes_and_adds_nothing_z2jh_gave_gpu_pods(
    spawner_pod: PodFactory, user: str
) -> None:
    seed = load_config(env={})
    server = "ml-run" if user == "DAVE" else ""
    _, cpu = admit(await spawner_pod(user, "cpu-only", server), seed)
    assert required_terms(cpu) == [
        {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "DoesNotExist"}]}
    ]
    gpu_pod = await spawner_pod(user, "gpu-enabled", server)
    z2jh = [
        {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
        {"key": "hub.jupyter.org_dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
    ]
    _, gpu = admit(gpu_pod, seed)
    assert gpu["spec"]["tolerations"] == z2jh and "affinity" not in gpu["spec"]
    gpu_pod["spec"]["tolerations"] = copy.deepcopy(z2jh)  # what z2jh's scheduling.userPods adds
    answer = mutate(parse_review(json.dumps(review_of(gpu_pod)).encode()), seed, NOW)
    assert answer.response is not None
    assert not [op for op in answer.response.patch_ops() if op["path"].startswith("/spec/tolerations")]


async def test_the_default_profile_places_a_pod_without_a_label(spawner_pod: PodFactory) -> None:
    _, patched = admit(await spawner_pod("alice", None), load_config(env={}))
    assert required_terms(patched)[0]["matchExpressions"][0]["operator"] == "DoesNotExist"


@pytest.mark.parametrize(
    ("where", "value"),
    [("nodeSelector", ["a"]), ("affinity", "x"), ("tolerations", {"a": 1}), ("affinity", {"nodeAffinity": 3})],
)
async def test_placement_fields_of_the_wrong_shape_are_denied_with_a_message(
    spawner_pod: PodFactory, where: str, value: Any
) -> None:
    pod = await spawner_pod("alice", "gpu-enabled")
    pod["spec"][where] = value
    answer = mutate(parse_review(json.dumps(review_of(pod)).encode()), CONFIG, NOW)
    assert answer.response is not None and not answer.response.allowed
    assert answer.response.status is not None and answer.response.status.message.startswith("gpu-queue: ")
    assert where in answer.response.status.message


async def test_null_placement_fields_are_absent_ones(spawner_pod: PodFactory) -> None:
    pod = await spawner_pod("alice", "gpu-enabled")
    pod["spec"].update(nodeSelector=None, affinity={"nodeAffinity": None}, tolerations=None)
    _, patched = admit(pod)
    assert patched["spec"]["tolerations"] == [GPU_TOLERATION]
    assert required_terms(patched) == [{"matchExpressions": [PRODUCT]}]


# ------------------------------------------------------------------ the AND, semantically

LABELS = ["a", "b", "c"]
requirement = st.builds(
    lambda key, op, values: {"key": key, "operator": op, **({"values": values} if op in ("In", "NotIn") else {})},
    st.sampled_from(LABELS),
    st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]),
    st.lists(st.sampled_from(["1", "2"]), min_size=1, max_size=2, unique=True),
)
term = st.fixed_dictionaries({"matchExpressions": st.lists(requirement, max_size=3)})
nodes = st.lists(st.dictionaries(st.sampled_from(LABELS), st.sampled_from(["1", "2"])), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    existing=st.lists(term, max_size=3),
    profile=st.lists(term.filter(lambda t: bool(t["matchExpressions"])), min_size=1, max_size=2),
    labels=nodes,
)
def test_merged_terms_match_a_node_exactly_when_both_the_pods_and_the_profiles_do(
    existing: list[dict[str, Any]], profile: list[dict[str, Any]], labels: list[dict[str, str]]
) -> None:
    merged = and_terms(copy.deepcopy(existing), profile, "terms")

    def matches(terms: list[dict[str, Any]], node: dict[str, str]) -> bool:
        if not terms:
            return True  # no required affinity: any node
        parsed = terms_of({"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": terms}}})
        return any(t.matches("n", node) for t in parsed)

    for node in labels:
        assert matches(merged, node) == (matches(existing, node) and matches(profile, node)), (merged, node)
    assert and_terms(copy.deepcopy(merged), profile, "terms") == merged  # idempotent
