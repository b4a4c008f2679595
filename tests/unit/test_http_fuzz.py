"""Fuzzing the admission endpoints: whatever the body, the answer is never a 5xx and never a crash.

The server runs in its own thread and loop (hypothesis drives a synchronous test); one keep-alive
connection carries every example. A 200 must be an AdmissionReview for the request's uid, and not
the internal-error denial: that would mean admission raised on the input.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import jsonpatch
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhook import server
from webhook.config import load_config

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


class Served:
    """The app on 127.0.0.1 in a background thread; ``post`` reuses one keep-alive connection."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),), daemon=True)
        self.conn: http.client.HTTPConnection | None = None

    async def _run(self) -> None:
        config = load_config(None, env={"GPU_QUEUE_SERVER__MAXBODYBYTES": "65536"})
        runner = web.AppRunner(server.create_app(config), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> Served:
        self.thread.start()
        assert self._ready.wait(10), "server did not start"
        return self

    def __exit__(self, *_: object) -> None:
        if self.conn is not None:
            self.conn.close()
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)
        self.loop.close()

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self.conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (ConnectionError, http.client.HTTPException):
                # The server may close a connection after an error answer; reconnect once.
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with Served() as s:
        yield s


def check(status: int, body: bytes, uid: str | None = None) -> None:
    assert status < 500, body
    assert status in (200, 400, 413), (status, body)
    data = json.loads(body)
    if status != 200:
        assert isinstance(data.get("error"), str) and data["error"]
        return
    response = data["response"]
    if uid is not None:
        assert response["uid"] == uid
    status_obj = response.get("status") or {}
    assert status_obj.get("code") != 500, f"admission raised on this input: {status_obj.get('message')}"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)

# Pod-shaped objects whose every part may be the wrong type: what a buggy client could send.
quantities = st.one_of(
    st.sampled_from(["1", "500m", "4Gi", "8G", "2.5", "1e3", "0", "-1", "abc", "", "1Ki", "nan"]),
    st.integers(-10, 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(),
)
resource_maps = st.dictionaries(st.sampled_from(["cpu", "memory", "nvidia.com/gpu", "example.com/x"]), quantities)
containers = st.fixed_dictionaries(
    {"name": st.sampled_from(["notebook", "sidecar", ""]) | st.integers()},
    optional={
        "resources": st.fixed_dictionaries({}, optional={"limits": resource_maps, "requests": resource_maps})
        | json_values,
        "env": st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["CPU_LIMIT", "MEM_LIMIT", "X"]), "value": st.text()})
            | json_values,
            max_size=3,
        )
        | json_values,
    },
)
labels = st.dictionaries(
    st.sampled_from(["component", "gpu-queue.io/profile", "app"]),
    st.sampled_from(["singleuser-server", "gpu-enabled", "cpu-only", "nope", ""]) | json_values,
)
annotations = st.dictionaries(
    st.sampled_from(["gpu-queue.io/requested-at", "gpu-queue.io/pool", "hub.jupyter.org/username"]),
    st.sampled_from(["2020-01-01T00:00:00Z", "gpu", "alice", "not-a-time"]) | st.text(max_size=30) | json_values,
)
gates = (
    st.lists(
        st.fixed_dictionaries({"name": st.sampled_from(["gpu-queue.io/slice", "other"])}) | json_values, max_size=3
    )
    | json_values
)
# Mostly real single-user pods (so admission gets past its selectors), with junk in the details.
singleuser_pods = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries(
            {
                "name": st.text(max_size=20),
                "labels": st.fixed_dictionaries(
                    {"component": st.just("singleuser-server")},
                    optional={"gpu-queue.io/profile": st.sampled_from(["gpu-enabled", "cpu-only", "nope", ""])},
                ),
            },
            optional={"annotations": annotations},
        ),
        "spec": st.fixed_dictionaries(
            {"containers": st.lists(containers, min_size=1, max_size=3)},
            optional={
                "initContainers": st.lists(containers, max_size=2) | json_values,
                "schedulingGates": gates,
                "nodeName": st.text(max_size=10),
            },
        ),
    }
)
any_pods = st.fixed_dictionaries(
    {},
    optional={
        "metadata": st.fixed_dictionaries(
            {}, optional={"name": st.text(max_size=20), "labels": labels, "annotations": annotations}
        )
        | json_values,
        "spec": st.fixed_dictionaries(
            {},
            optional={
                "containers": st.lists(containers | json_values, max_size=3) | json_values,
                "schedulingGates": gates,
            },
        )
        | json_values,
    },
)


def _review(uid: str, operation: str, obj: Any, old: Any, username: str, kind: str) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": kind},
            "operation": operation,
            "namespace": "jhub",
            "userInfo": {"username": username},
            "object": obj,
            "oldObject": old,
        },
    }


@pytest.mark.parametrize("path", ["/mutate", "/validate"])
@FUZZ
@given(body=st.binary(max_size=2048))
def test_garbage_bytes_never_get_a_5xx(served: Served, path: str, body: bytes) -> None:
    check(*served.post(path, body))


@pytest.mark.parametrize("path", ["/mutate", "/validate"])
@FUZZ
@given(value=json_values)
def test_random_json_never_gets_a_5xx(served: Served, path: str, value: Any) -> None:
    check(*served.post(path, json.dumps(value).encode()))


@pytest.mark.parametrize("path", ["/mutate", "/validate"])
@FUZZ
@given(
    uid=st.text(min_size=1, max_size=40),
    operation=st.sampled_from(["CREATE", "CREATE", "CREATE", "UPDATE", "UPDATE", "DELETE", ""]),
    obj=st.one_of(singleuser_pods, singleuser_pods, singleuser_pods, any_pods, json_values),
    old=st.none() | singleuser_pods,
    username=st.sampled_from(["system:serviceaccount:gpu-queue:gpu-queue", "alice", ""]),
    kind=st.sampled_from(["Pod", "Pod", "Pod", "Service"]),
)
def test_review_shaped_bodies_with_broken_pods_get_a_review_for_their_uid(
    served: Served, path: str, uid: str, operation: str, obj: Any, old: Any, username: str, kind: str
) -> None:
    body = _review(uid, operation, obj, old, username, kind)
    status, answer = served.post(path, json.dumps(body).encode())
    check(status, answer, uid)
    if not (isinstance(obj, dict) or obj is None):
        return  # a non-object "object" may be rejected as a bad review
    assert status == 200, answer
    patch = json.loads(answer)["response"].get("patch")
    if patch:
        # The API server applies the patch to the object: it must apply cleanly.
        jsonpatch.apply_patch(obj, json.loads(base64.b64decode(patch)))
