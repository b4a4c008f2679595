"""Property tests: whatever pod arrives (node placement of any shape included), mutation answers,
its patch applies, and a second pass over the result is a no-op."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import jsonpatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.conftest import review_of
from webhook.admission import mutate, parse_review, validate
from webhook.config import load_config

CONFIG = load_config(env={})
NOW = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)

text = st.text(min_size=0, max_size=12)
keys = st.sampled_from(
    ["a", "x/y", "t~ilde", "gpu-queue.io/pool", "gpu-queue.io/requested-at", "hub.jupyter.org/username"]
)
quantity = st.one_of(
    st.integers(min_value=0, max_value=10**12),
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from(["1", "500m", "4Gi", "8G", "0.5", "1e3", "2Ki"]),
)
resource_map = st.dictionaries(
    st.sampled_from(["cpu", "memory", "nvidia.com/gpu", "ephemeral-storage"]), quantity, max_size=4
)
env_list = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["CPU_LIMIT", "MEM_LIMIT", "OTHER", "CPU_GUARANTEE"]), "value": text}
    ),
    max_size=5,
)
container = st.fixed_dictionaries(
    {"name": st.sampled_from(["notebook", "sidecar"]), "image": st.just("busybox")},
    optional={
        "env": env_list,
        "resources": st.fixed_dictionaries({}, optional={"requests": resource_map, "limits": resource_map}),
    },
)


label_key = st.sampled_from(["nvidia.com/gpu.present", "zone", "hub.jupyter.org/node-purpose"])
expression = st.fixed_dictionaries(
    {"key": label_key, "operator": st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"])},
    optional={"values": st.lists(st.sampled_from(["true", "user", "a"]), max_size=2)},
)
node_terms = st.lists(
    st.fixed_dictionaries({}, optional={"matchExpressions": st.lists(expression, max_size=3)}), max_size=3
)
affinity = st.fixed_dictionaries(
    {},
    optional={
        "nodeAffinity": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {},
                optional={
                    "requiredDuringSchedulingIgnoredDuringExecution": st.one_of(
                        st.none(), st.fixed_dictionaries({"nodeSelectorTerms": node_terms})
                    )
                },
            ),
        ),
        "podAntiAffinity": st.just({}),
    },
)
toleration = st.fixed_dictionaries(
    {"key": st.sampled_from(["hub.jupyter.org/dedicated", "nvidia.com/gpu", ""])},
    optional={
        "operator": st.sampled_from(["Equal", "Exists"]),
        "value": st.sampled_from(["user", ""]),
        "effect": st.sampled_from(["NoSchedule", "NoExecute", ""]),
    },
)
placement = st.fixed_dictionaries(
    {},
    optional={
        "nodeSelector": st.one_of(st.none(), st.dictionaries(label_key, st.sampled_from(["true", "a"]), max_size=2)),
        "affinity": st.one_of(st.none(), affinity),
        "tolerations": st.one_of(st.none(), st.lists(toleration, max_size=3)),
    },
)


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    labels = {"component": "singleuser-server"}
    profile = draw(st.sampled_from([None, "cpu-only", "gpu-enabled", "unknown"]))
    if profile is not None:
        labels["gpu-queue.io/profile"] = profile
    metadata: dict[str, Any] = {"name": "jupyter-p", "namespace": "jhub", "labels": labels}
    annotations = draw(st.one_of(st.none(), st.dictionaries(keys, text, max_size=4)))
    if annotations is not None:
        metadata["annotations"] = annotations
    spec: dict[str, Any] = {"containers": draw(st.lists(container, min_size=1, max_size=3)), **draw(placement)}
    gates = draw(
        st.one_of(st.none(), st.lists(st.sampled_from(["gpu-queue.io/slice", "other.io/x"]), max_size=2, unique=True))
    )
    if gates is not None:
        spec["schedulingGates"] = [{"name": g} for g in gates]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pods())
def test_any_pod_gets_an_answer_whose_patch_applies_and_is_stable(pod: dict[str, Any]) -> None:
    answer = mutate(parse_review(json.dumps(review_of(pod)).encode()), CONFIG, NOW)
    assert answer.response is not None
    if not answer.response.allowed:
        assert answer.response.status is not None and answer.response.status.message.startswith("gpu-queue:")
        return
    patched = jsonpatch.apply_patch(copy.deepcopy(pod), answer.response.patch_ops())
    again = mutate(parse_review(json.dumps(review_of(patched)).encode()), CONFIG, NOW)
    assert again.response is not None and again.response.allowed
    assert again.response.patch is None, again.response.patch_ops()
    verdict = validate(parse_review(json.dumps(review_of(patched)).encode()), CONFIG)
    assert verdict.response is not None
    if not verdict.response.allowed:
        assert verdict.response.status is not None and "gpu-queue:" in verdict.response.status.message


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=20,
    )
)
def test_any_object_in_the_request_never_raises(obj: Any) -> None:
    raw = review_of({"metadata": {"labels": {"component": "singleuser-server"}}})
    raw["request"]["object"] = obj if isinstance(obj, dict) else {"spec": obj}
    review = parse_review(json.dumps(raw).encode())
    assert mutate(review, CONFIG, NOW).response is not None
    assert validate(review, CONFIG).response is not None
