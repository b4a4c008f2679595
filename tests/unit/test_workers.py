"""``server.workers`` > 1: worker processes share the HTTPS port with the main process, answer
admission themselves, relay the API to the main process, and never outlive it.

The service runs as ``python -m webhook.cli serve`` in its own process (a real SIGTERM or SIGKILL
must not hit the test runner), on 127.0.0.1 with its own CA, Redis and the API server unreachable.
Every response names the process that answered (``X-Gpu-Queue-Worker``), so the tests open fresh
connections until the kernel has handed some to each process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers.redis_server import free_port
from tests.helpers.reviews import request_review
from tests.unit.conftest import minimal_pod
from webhook.certs import make_ca, make_serving_cert, write_pair
from webhook.server import WORKER_HEADER

TOKEN = "workers-read-token-3e1f"
ADMIN = "workers-admin-token-7c2d"
LIMIT = 64 * 1024
STARTUP_SECONDS = 30.0


def review() -> dict[str, Any]:
    """A GPU pod's AdmissionReview, as the API server sends it."""
    return request_review(minimal_pod())


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def gone(pid: int) -> bool:
    """Exited (a zombie left for an init that does not reap counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)  # poll interval, bounded by the deadline above


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    base: str
    side: str
    ctx: ssl.SSLContext
    log: Path

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, int, Any]:
        """One request on a fresh connection (so the kernel picks a process anew): (pid, status, body)."""
        connector = aiohttp.TCPConnector(ssl=self.ctx, force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.request(method, self.base + path, **kwargs) as response,
        ):
            return int(response.headers[WORKER_HEADER]), response.status, await response.json()

    async def from_each(self, method: str, path: str, pids: int, **kwargs: Any) -> dict[int, tuple[int, Any]]:
        """The answer of ``pids`` distinct processes to the same request."""
        answers: dict[int, tuple[int, Any]] = {}
        deadline = time.monotonic() + STARTUP_SECONDS
        while len(answers) < pids:
            assert time.monotonic() < deadline, f"only {sorted(answers)} answered {method} {path}"
            try:
                pid, status, body = await self.call(method, path, **kwargs)
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)  # a worker starting or stopping: try again, within the deadline
                continue
            answers.setdefault(pid, (status, body))
        return answers

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    ca = make_ca()
    write_pair(tmp_path, ca, make_serving_cert(ca, ["localhost"], ["127.0.0.1"]))
    port, side = free_port(), free_port()
    env = {
        **os.environ,
        "GPU_QUEUE_TLS__CERTFILE": str(tmp_path / "tls.crt"),
        "GPU_QUEUE_TLS__KEYFILE": str(tmp_path / "tls.key"),
        "GPU_QUEUE_SERVER__HOST": "127.0.0.1",
        "GPU_QUEUE_SERVER__PORT": str(port),
        "GPU_QUEUE_SERVER__METRICSPORT": str(side),
        "GPU_QUEUE_SERVER__WORKERS": "2",
        "GPU_QUEUE_REDIS__URL": "redis://127.0.0.1:1/0",
        "GPU_QUEUE_REDIS__TIMEOUTSECONDS": "0.2",
        "GPU_QUEUE_KUBECONFIG": str(tmp_path / "missing-kubeconfig"),
        "GPU_QUEUE_API__READTOKENS": TOKEN,
        "GPU_QUEUE_API__ADMINTOKENS": ADMIN,
        "GPU_QUEUE_SERVER__MAXBODYBYTES": str(LIMIT),
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "webhook.cli", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    svc = Service(process, f"https://127.0.0.1:{port}", f"http://127.0.0.1:{side}", ctx, log)
    try:
        yield svc
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


async def two_processes_answer_mutate(svc: Service) -> tuple[int, int]:
    answers = await svc.from_each("POST", "/mutate", 2, json=review())
    for status, body in answers.values():
        assert status == 200 and body["response"]["allowed"] is True
        assert body["response"]["patchType"] == "JSONPatch"
    main = svc.process.pid
    assert main in answers, (answers.keys(), svc.output())
    (worker,) = set(answers) - {main}
    assert parent_of(worker) == main
    return main, worker


async def test_two_workers_share_the_port_answer_admission_and_stop_together_on_sigterm(service: Service) -> None:
    main, worker = await two_processes_answer_mutate(service)

    # The API on either process is the main process's API: same auth, same answer, bodies included.
    move = "/api/v1/pools/gpu/queue/jhub/jupyter-alice/move"
    admin = {"Authorization": f"Bearer {ADMIN}"}
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", "/api/v1/openapi.json", {}, 200),
        ("GET", "/api/v1/pools", {}, 401),
        ("GET", "/api/v1/pools", {"headers": {"Authorization": f"Bearer {TOKEN}"}}, 503),  # Redis is down
        ("GET", "/api/v1/users/a%2Fb%40c?server=x", {"headers": {"Authorization": f"Bearer {TOKEN}"}}, 503),
        ("POST", move, {"headers": {"Authorization": f"Bearer {TOKEN}"}, "json": {"position": 1}}, 403),
        ("POST", move, {"headers": admin, "json": {"position": 0}}, 400),  # the body reached the main
        ("POST", move, {"headers": admin, "data": b"x" * (LIMIT + 1)}, 413),
    ]
    for method, path, kwargs, expected in cases:
        answers = await service.from_each(method, path, 2, **kwargs)
        assert {status for status, _ in answers.values()} == {expected}, (path, answers)
        assert answers[main][1] == answers[worker][1], (path, answers)

    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(30) == 0, service.output()
    until(lambda: gone(worker), f"worker {worker} exits with the main process")


async def test_a_crashed_worker_is_replaced_and_workers_never_outlive_a_killed_main_process(service: Service) -> None:
    main, worker = await two_processes_answer_mutate(service)

    os.kill(worker, signal.SIGKILL)
    answers = await service.from_each("POST", "/mutate", 2, json=review())
    (replacement,) = set(answers) - {main}
    assert replacement != worker and parent_of(replacement) == main

    service.process.send_signal(signal.SIGKILL)  # no chance to stop anyone: the lifeline pipe breaks
    service.process.wait(10)
    until(lambda: gone(replacement), f"worker {replacement} exits when the main process is killed")
