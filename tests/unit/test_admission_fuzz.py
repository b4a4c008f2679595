"""Fuzzing ``/mutate`` and ``/validate`` where ``test_http_fuzz`` does not reach: deep nesting, bodies
near and over ``server.maxBodyBytes``, a wrong type at every single place of a real KubeSpawner pod,
and unicode in names, labels and annotations.

Two properties hold for every case:

- **no 5xx, no internal error**: the answer is an AdmissionReview for the request's uid (or a 400 or
  413 JSON error for a body that is not one), never the "internal error" denial;
- **zero unvalidated writes**: a mutation is either a denial with a message, or allowed with a patch
  that applies to the pod, and the patched pod then passes ``/validate`` (so what mutation lets
  through is what validation accepts: the API server never stores a pod that only one of the two
  webhooks saw). For a user's UPDATE that ``/validate`` allows, the gate and the queue annotations
  are unchanged.

Each test prints ``[fuzz] <what>: N cases`` (run with ``-s``) and asserts a minimum count, so a
generator that silently produced nothing fails.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import jsonpatch
import pytest
import requests
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.reviews import request_review
from tests.helpers.spawner_pods import spawner_pod
from webhook import server
from webhook.admission import mutate
from webhook.config import Config, load_config
from webhook.pods import annotations_of, has_gate

LIMIT = 256 * 1024  # server.maxBodyBytes for these tests: big enough for real pods, cheap to exceed
SERVICE_ACCOUNT = "system:serviceaccount:gpu-queue:gpu-queue"
HUB = "system:serviceaccount:jhub:hub"
# One of every JSON type, and the empty and "truthy" variants of each that parsers trip on.
WRONG: list[Any] = [None, 0, -1, 1.5, True, "", "x", [], {}, [None], {"": None}]
WEBHOOK_TIMEOUT_SECONDS = 2.0  # the chart's timeoutSeconds: an answer later than this is a failure


class Admission:
    """The server app on 127.0.0.1 (aiohttp's TestServer) in its own thread, with a keep-alive client."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.base = ""
        self.session = requests.Session()
        self.session.trust_env = False  # 127.0.0.1 only: never a proxy from the environment
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),), daemon=True)
        self.requests = 0

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        test_server = TestServer(server.create_app(self.config), host="127.0.0.1")
        await test_server.start_server()
        self.base = str(test_server.make_url("")).rstrip("/")
        self._ready.set()
        await self._stop.wait()
        await test_server.close()

    def __enter__(self) -> Admission:
        self.thread.start()
        assert self._ready.wait(10), "the admission server did not start"
        return self

    def __exit__(self, *_: object) -> None:
        self.session.close()
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)
        self.loop.close()

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """POST a raw body; (status, decoded JSON answer)."""
        self.requests += 1
        response = self.session.post(
            self.base + path, data=body, headers={"Content-Type": "application/json", **(headers or {})}, timeout=30
        )
        assert response.headers.get("Content-Type", "").startswith("application/json"), response.text[:300]
        return response.status_code, response.json()

    def review(self, path: str, review: dict[str, Any]) -> dict[str, Any]:
        """POST an AdmissionReview; the response part, checked to be a real answer for its uid."""
        status, answer = self.post(path, json.dumps(review).encode())
        assert status == 200, (status, answer)
        response: dict[str, Any] = answer["response"]
        assert response["uid"] == review["request"]["uid"]
        code = (response.get("status") or {}).get("code")
        assert code != 500, f"{path} raised on this input: {response['status'].get('message')}"
        if not response["allowed"]:
            assert response["status"]["message"].startswith("gpu-queue: "), response
        return response


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(None, env={"GPU_QUEUE_SERVER__MAXBODYBYTES": str(LIMIT)})


@pytest.fixture(scope="module")
def admission(config: Config) -> Iterator[Admission]:
    with Admission(config) as served:
        yield served


@pytest.fixture(scope="module")
def gpu_pod() -> dict[str, Any]:
    return asyncio.run(spawner_pod("alice", "gpu-enabled"))


@pytest.fixture(scope="module")
def cpu_pod() -> dict[str, Any]:
    return asyncio.run(spawner_pod("bob", "cpu-only"))


def review_of(
    pod: Any, operation: str = "CREATE", old: Any = None, username: str = HUB, uid: str | None = None
) -> dict[str, Any]:
    return request_review(pod, operation=operation, old=old, username=username, uid=uid)


def patched(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """The pod as the API server stores it after this mutation (the patch must apply)."""
    if not response.get("patch"):
        return copy.deepcopy(pod)
    ops = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(pod, ops)
    return result


def no_unvalidated_write(admission: Admission, pod: Any) -> str:
    """Mutate then validate ``pod`` as the API server would; the outcome, for counting.

    A mutation denial must carry a message; an allowed mutation's patch must apply, and the pod it
    makes must pass validation.
    """
    response = admission.review("/mutate", review_of(pod))
    if not response["allowed"]:
        return "denied by mutate"
    if not isinstance(pod, dict):
        return "not a pod"
    final = patched(pod, response)
    verdict = admission.review("/validate", review_of(final))
    assert verdict["allowed"], (
        f"mutation let through a pod that validation denies: {verdict['status']['message']}\n"
        f"pod: {json.dumps(final)[:2000]}"
    )
    # Mutation is idempotent on anything it accepted (the API server may reinvoke it).
    again = admission.review("/mutate", review_of(final))
    assert again["allowed"] and not again.get("patch"), again
    return "allowed"


def user_update_keeps_the_queue(admission: Admission, old: dict[str, Any], new: Any) -> str:
    """A hub user's UPDATE: if validation allows it, the gate and the queue annotations stayed."""
    verdict = admission.review("/validate", review_of(new, "UPDATE", old=old, username="alice"))
    if not verdict["allowed"]:
        return "denied"
    if not isinstance(new, dict):
        return "not a pod"
    config = admission.config
    if has_gate(old, config):
        assert has_gate(new, config), f"an UPDATE that removed the gate was allowed: {json.dumps(new)[:2000]}"
    keys = (config.requested_at_annotation, config.pool_annotation, config.admitted_at_annotation)
    before, after = annotations_of(old), annotations_of(new)
    for key in keys:
        assert before.get(key) == after.get(key), f"an UPDATE that changed {key} was allowed"
    return "allowed"


def places(value: Any, at: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every JSON pointer into ``value`` (as a tuple of keys and indexes), the root excluded."""
    if at:
        yield at
    if isinstance(value, dict):
        for key, child in value.items():
            yield from places(child, (*at, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from places(child, (*at, index))


def replaced(value: Any, at: tuple[str | int, ...], new: Any) -> Any:
    out = copy.deepcopy(value)
    parent = out
    for part in at[:-1]:
        parent = parent[part]
    parent[at[-1]] = copy.deepcopy(new)
    return out


def report(what: str, counts: dict[str, int]) -> int:
    total = sum(counts.values())
    print(f"[fuzz] {what}: {total} cases {dict(sorted(counts.items()))}")
    return total


# ------------------------------------------------------------------- wrong types at every level


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_a_wrong_type_anywhere_in_a_kubespawner_pod_is_answered_and_never_writes_unvalidated(
    admission: Admission, gpu_pod: dict[str, Any], cpu_pod: dict[str, Any], profile: str
) -> None:
    pod = gpu_pod if profile == "gpu" else cpu_pod
    counts: dict[str, int] = {}
    where = list(places(pod))
    for at in where:
        for wrong in WRONG:
            outcome = no_unvalidated_write(admission, replaced(pod, at, wrong))
            counts[outcome] = counts.get(outcome, 0) + 1
    total = report(f"wrong types in a KubeSpawner {profile} pod ({len(where)} places x {len(WRONG)})", counts)
    assert total == len(where) * len(WRONG) >= 800
    assert counts.get("allowed", 0) > total // 2  # most damage is to fields admission does not own


def test_a_wrong_type_anywhere_in_a_queued_pod_never_lets_a_user_update_remove_the_gate_or_stamps(
    admission: Admission, gpu_pod: dict[str, Any]
) -> None:
    """The pod as stored (gated, stamped) and a hub user's UPDATE that damages one place of it."""
    response = admission.review("/mutate", review_of(gpu_pod))
    queued = patched(gpu_pod, response)
    assert has_gate(queued, admission.config)
    counts: dict[str, int] = {}
    where = list(places(queued))
    for at in where:
        for wrong in WRONG:
            outcome = user_update_keeps_the_queue(admission, queued, replaced(queued, at, wrong))
            counts[outcome] = counts.get(outcome, 0) + 1
    total = report(f"wrong types in a user's UPDATE of a queued pod ({len(where)} places)", counts)
    assert total >= 800
    assert counts.get("denied", 0) >= 10  # damaging the gate or a stamp is what gets denied


# ------------------------------------------------------------------------------- deep nesting


def nested(depth: int, leaf: Any = "x") -> Any:
    value: Any = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


DEPTHS = [10, 100, 900, 1000, 20_000]
DEEP_PLACES: list[tuple[str | int, ...]] = [
    ("metadata", "labels", "deep"),
    ("metadata", "annotations", "deep"),
    ("metadata", "annotations", "gpu-queue.io/requested-at"),
    ("spec", "containers", 0, "resources", "limits", "cpu"),
    ("spec", "containers", 0, "env"),
    ("spec", "schedulingGates"),
    ("spec", "initContainers"),
]


@pytest.mark.parametrize("path", ["/mutate", "/validate"])
def test_deeply_nested_bodies_are_a_400_or_an_answer_never_a_5xx(admission: Admission, path: str) -> None:
    counts: dict[str, int] = {}
    for depth in DEPTHS:
        inside = review_of(None)
        inside["request"]["extra"] = nested(depth)
        for body in (nested(depth), inside):
            status, answer = admission.post(path, _dumps_deep(body))
            assert status in (200, 400), (depth, status, answer)
            if status == 200:
                assert answer["response"]["uid"] == inside["request"]["uid"]
            counts[str(status)] = counts.get(str(status), 0) + 1
    report(f"deep nesting of whole bodies at {path}", counts)
    assert counts.get("400", 0) >= len(DEPTHS)  # a bare nest is never a review


def test_deep_nesting_inside_a_real_pod_is_answered_and_never_writes_unvalidated(
    admission: Admission, gpu_pod: dict[str, Any]
) -> None:
    counts: dict[str, int] = {}
    for depth in DEPTHS:
        for at in DEEP_PLACES:
            pod = _with(gpu_pod, at, nested(depth))
            for path in ("/mutate", "/validate"):
                status, answer = admission.post(path, _dumps_deep(review_of(pod)))
                assert status in (200, 400), (depth, at, status, answer)
                if status == 400:
                    assert "nested too deeply" in answer["error"], answer
                    counts["400 too deep"] = counts.get("400 too deep", 0) + 1
                    continue
                code = (answer["response"].get("status") or {}).get("code")
                assert code != 500, answer
                # Deeper pods exceed the test's own copy and patch recursion limits.
                replay = path == "/mutate" and depth <= 100
                outcome = no_unvalidated_write(admission, pod) if replay else "answered"
                counts[outcome] = counts.get(outcome, 0) + 1
    total = report("deep nesting inside a KubeSpawner pod", counts)
    assert total == len(DEPTHS) * len(DEEP_PLACES) * 2
    assert counts.get("allowed", 0) >= 5 and counts.get("400 too deep", 0) >= 5


def _with(pod: dict[str, Any], at: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A copy of ``pod`` with ``value`` put (not copied: it may be too deep to copy) at ``at``."""
    out = copy.deepcopy(pod)
    parent: Any = out
    for part in at[:-1]:
        parent = parent[part]
    parent[at[-1]] = value
    return out


def _dumps_deep(value: Any) -> bytes:
    """json.dumps without its recursion limit: a body as deep as a hostile client can make it."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Raw):
            out.append(item.text)
        elif isinstance(item, dict):
            out.append("{")
            parts: list[Any] = []
            for i, (key, child) in enumerate(item.items()):
                parts += [_Raw(("," if i else "") + json.dumps(key) + ":"), child]
            parts.append(_Raw("}"))
            stack.extend(reversed(parts))
        elif isinstance(item, list):
            out.append("[")
            parts = []
            for i, child in enumerate(item):
                parts += [_Raw("," if i else ""), child]
            parts.append(_Raw("]"))
            stack.extend(reversed(parts))
        else:
            out.append(json.dumps(item))
    return "".join(out).encode()


class _Raw:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


# ------------------------------------------------------------------------------- huge bodies


def padded(pod: dict[str, Any], size: int) -> bytes:
    """A review of ``pod`` with one annotation grown so the body is exactly ``size`` bytes."""
    review = review_of(_with(pod, ("metadata", "annotations", "padding"), ""))
    bare = len(json.dumps(review).encode())
    review["request"]["object"]["metadata"]["annotations"]["padding"] = "p" * (size - bare)
    body = json.dumps(review).encode()
    assert len(body) == size
    return body


@pytest.mark.parametrize("path", ["/mutate", "/validate"])
@pytest.mark.parametrize("size", [LIMIT - 1, LIMIT, LIMIT + 1, 4 * LIMIT])
def test_bodies_at_the_limit_are_answered_in_time_and_one_byte_over_is_a_413(
    admission: Admission, gpu_pod: dict[str, Any], path: str, size: int
) -> None:
    body = padded(gpu_pod, size)
    started = time.monotonic()
    status, answer = admission.post(path, body)
    elapsed = time.monotonic() - started
    if size <= LIMIT:
        assert status == 200, answer
        assert answer["response"]["allowed"] is (path == "/mutate")  # validate: the pod has no gate yet
    else:
        assert status == 413 and "maxBodyBytes" in answer["error"], answer
    assert elapsed < WEBHOOK_TIMEOUT_SECONDS, f"{size} bytes took {elapsed:.2f} s"


def test_a_pod_of_many_small_parts_near_the_limit_is_mutated_in_time_and_validates(
    admission: Admission, gpu_pod: dict[str, Any]
) -> None:
    """Thousands of env vars, containers' worth of ports, labels: no quadratic path in mutation."""
    pod = copy.deepcopy(gpu_pod)
    notebook = pod["spec"]["containers"][0]
    notebook["env"] += [{"name": f"VAR_{i}", "value": "v"} for i in range(3000)]
    pod["metadata"]["labels"].update({f"l{i}.example.org/k": "v" for i in range(1500)})
    pod["metadata"]["annotations"].update({f"a{i}.example.org/k": "v" for i in range(1500)})
    size = len(json.dumps(review_of(pod)).encode())
    assert LIMIT // 2 < size <= LIMIT
    started = time.monotonic()
    assert no_unvalidated_write(admission, pod) == "allowed"
    assert time.monotonic() - started < 3 * WEBHOOK_TIMEOUT_SECONDS  # three round trips


# ---------------------------------------------------------------------------------- unicode

# Any code point, surrogates included (JSON can carry a lone one as a \\u escape).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
names = st.one_of(
    any_text, st.sampled_from(["jupyter-ålice", "jupyter-\u0430lice", "ユーザー", "\u202eevil", "a\u0000b"])
)
label_keys = st.one_of(
    any_text,
    st.sampled_from(
        [
            "component",
            "gpu-queue.io/profile",
            "gpu-queue.io/profil\u0435",  # Cyrillic e: a look-alike of the profile label
            "GPU-QUEUE.IO/PROFILE",
            "hub.jupyter.org/username",
        ]
    ),
)
label_values = st.one_of(
    any_text,
    st.sampled_from(
        ["singleuser-server", "gpu-enabled", "cpu-only", "gpu-enabl\u0435d", "GPU-ENABLED", "gpu-enabled\u200b"]
    ),
)
annotation_keys = st.one_of(
    any_text,
    st.sampled_from(
        [
            "gpu-queue.io/requested-at",
            "gpu-queue.io/pool",
            "gpu-queue.io/admitted-at",
            "hub.jupyter.org/username",
            "hub.jupyter.org/servername",
            "a~b/c~1d",
        ]
    ),
)
annotation_values = st.one_of(
    any_text,
    st.sampled_from(
        [
            "2020-01-01T00:00:00Z",
            "\uff12\uff10\uff12\uff16-01-01T00:00:00Z",
            "gpu",
            "\uff47\uff50\uff55",
            "\u0000",
            "9" * 40,
        ]
    ),
)

UNICODE = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def test_unicode_in_names_labels_and_annotations_never_breaks_admission_or_writes_unvalidated(
    admission: Admission, gpu_pod: dict[str, Any]
) -> None:
    queued = patched(gpu_pod, admission.review("/mutate", review_of(gpu_pod)))
    counts: dict[str, int] = {}

    @UNICODE
    @given(
        name=names,
        labels=st.dictionaries(label_keys, label_values, max_size=6),
        annotations=st.dictionaries(annotation_keys, annotation_values, max_size=6),
        user=any_text,
    )
    def run(name: str, labels: dict[str, str], annotations: dict[str, str], user: str) -> None:
        pod = copy.deepcopy(gpu_pod)
        pod["metadata"]["name"] = name
        pod["metadata"]["labels"].update(labels)
        pod["metadata"]["annotations"].update({"hub.jupyter.org/username": user, **annotations})
        outcome = no_unvalidated_write(admission, pod)
        counts[outcome] = counts.get(outcome, 0) + 1
        admission.review("/validate", review_of(pod))
        update = copy.deepcopy(queued)
        update["metadata"]["labels"].update(labels)
        update["metadata"]["annotations"].update(annotations)
        outcome = "update " + user_update_keeps_the_queue(admission, queued, update)
        counts[outcome] = counts.get(outcome, 0) + 1

    run()
    total = report("unicode in names, labels and annotations", counts)
    assert total >= 2 * 75


def test_the_in_process_mutation_agrees_with_the_served_one_on_unicode(
    admission: Admission, gpu_pod: dict[str, Any]
) -> None:
    """The served answer is the pure function's (so the HTTP layer adds no encoding surprise)."""
    from datetime import UTC, datetime

    from webhook.admission import parse_review

    pod = _with(gpu_pod, ("metadata", "labels", "gpu-queue.io/profile"), "gpu-enabl\u0435d")
    body = review_of(pod, uid="u-1")
    local = mutate(parse_review(json.dumps(body).encode()), admission.config, datetime.now(UTC))
    served = admission.review("/mutate", body)
    assert local.response is not None
    assert served["allowed"] is local.response.allowed is False
    assert local.response.status is not None
    assert served["status"]["message"] == local.response.status.message
    assert "gpu-enabl\u0435d" in served["status"]["message"]
