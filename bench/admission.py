"""Admission throughput and latency over TLS, against a bare aiohttp ceiling. Prints one JSON object.

    python bench/admission.py [--connections 64] [--duration 10] [--pod gpu|cpu]

Two servers, each in its own subprocess (so the client never shares their event loop), both on
127.0.0.1 with the same TLS settings and certificate:

- ``ours``: ``gpu-queue serve`` (the real app: routing, middleware, parsing, ``mutate``, metrics,
  JSON logs to /dev/null) answering ``POST /mutate``;
- ``ceiling``: a bare aiohttp handler that reads the body and returns a fixed AdmissionReview (the
  one ``ours`` returns for the same request), i.e. what TLS + HTTP + aiohttp cost by themselves.

The client (a lean HTTP/1.1 client, so that it is not the bottleneck) holds ``--connections``
keep-alive connections and posts an AdmissionReview for a real KubeSpawner GPU pod
(``kubespawner.objects.make_pod`` with the GPU profile's settings) in two phases per server, each
``--duration`` seconds after a warm-up:

- saturated (closed loop, back to back): requests/s, and ``ratio`` = ours/ceiling. Its latency is
  mostly queueing (about connections / throughput), not service time;
- paced (open loop at ``--paced-rps`` over the same connections, latency from the scheduled send
  time): the latency the API server sees under a heavy but real load, the figure for I4.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.helpers

import aiohttp

GOAL_RATIO = 0.5
GOAL_P99_MS = 10.0


# --------------------------------------------------------------------------------- the request


async def kubespawner_pod(profile: str) -> dict[str, Any]:
    """A single-user pod exactly as KubeSpawner builds it for the seed's profiles, with what a
    zero-to-jupyterhub hub adds (home volume, user scheduler, dedicated-node toleration)."""
    from gpu_queue_dev.spawnerpods import pod_manifest

    extra = {
        "volumes": [{"name": "volume-alice", "persistentVolumeClaim": {"claimName": "claim-alice"}}],
        "volume_mounts": [{"name": "volume-alice", "mountPath": "/home/jovyan"}],
        "scheduler_name": "jhub-user-scheduler",
        "tolerations": [
            {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"}
        ],
    }
    return await pod_manifest("alice", "gpu-enabled" if profile == "gpu" else "cpu-only", extra=extra)


def review_body(pod: dict[str, Any]) -> bytes:
    from tests.helpers.reviews import request_review

    return json.dumps(request_review(pod)).encode()


# ------------------------------------------------------------------------------------- servers


def _server_env(certs: Path, port: int) -> dict[str, str]:
    return {
        "GPU_QUEUE_TLS__CERTFILE": str(certs / "tls.crt"),
        "GPU_QUEUE_TLS__KEYFILE": str(certs / "tls.key"),
        "GPU_QUEUE_SERVER__HOST": "127.0.0.1",
        "GPU_QUEUE_SERVER__PORT": str(port),
        "GPU_QUEUE_SERVER__METRICSPORT": "0",
        "GPU_QUEUE_REDIS__URL": "redis://127.0.0.1:1/0",  # unreachable on purpose: admission must not care
    }


def serve_ours(certs: Path, port: int) -> None:
    """The real service, as ``gpu-queue serve`` runs it."""
    from webhook.cli import main

    os.environ.update(_server_env(certs, port))
    sys.exit(main(["serve"]))


def serve_ceiling(certs: Path, port: int, response: Path) -> None:
    """TLS + aiohttp + reading the body + a fixed answer: the most any aiohttp handler can do."""
    from aiohttp import web

    from webhook.server import make_ssl_context

    fixed = response.read_bytes()

    async def mutate(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=fixed, content_type="application/json")

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    async def run() -> None:
        app = web.Application()
        app.router.add_post("/mutate", mutate)
        app.router.add_get("/readyz", readyz)
        ctx = make_ssl_context()
        ctx.load_cert_chain(certs / "tls.crt", certs / "tls.key")
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def subprocess_server(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, __file__, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_ready(base: str, ctx: ssl.SSLContext, proc: subprocess.Popen[bytes], within: float = 60) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
            try:
                async with session.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{base} not ready after {within} s")
            await asyncio.sleep(0.05)


# -------------------------------------------------------------------------------------- client


class Connection:
    """A minimal keep-alive HTTP/1.1 client over TLS: one pre-built request, Content-Length replies.

    A full client library costs more CPU per request than the server under test; on a 2-core
    machine that would measure the client, not the servers.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        self.reader, self.writer, self.request = reader, writer, request

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext, body: bytes) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
        head = (
            f"POST /mutate HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return cls(reader, writer, head.encode() + body)

    async def post(self) -> int:
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


@dataclass
class Samples:
    """Latencies (s) of successful requests, failures by kind, and the measured seconds."""

    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, other: Samples) -> None:
        self.latencies += other.latencies
        for key, count in other.errors.items():
            self.errors[key] = self.errors.get(key, 0) + count
        self.seconds += other.seconds

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "requests": len(ordered),
            "rps": round(len(ordered) / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(_percentile(ordered, 0.50) * 1000, 2),
            "p99_ms": round(_percentile(ordered, 0.99) * 1000, 2),
            "max_ms": round((ordered[-1] if ordered else float("nan")) * 1000, 2),
            "errors": self.errors,
        }


async def drive(
    port: int,
    body: bytes,
    ctx: ssl.SSLContext,
    connections: int,
    duration: float,
    warmup: float,
    rate: float | None = None,
) -> Samples:
    """``connections`` keep-alive connections, each sending its next request when the last returns.

    ``rate=None``: closed loop, back to back (saturation: throughput, and queueing latency of about
    connections / throughput). ``rate``: open loop at ``rate`` requests/s spread over the
    connections, latency measured from the *scheduled* send time (no coordinated omission).
    """
    latencies: list[float] = []
    errors: dict[str, int] = {}
    conns = await asyncio.gather(*(Connection.open(port, ctx, body) for _ in range(connections)))
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from, end = start + warmup, start + warmup + duration

    async def worker(conn: Connection, index: int) -> None:
        interval = connections / rate if rate else 0.0
        due = start + (interval * index / connections if rate else 0.0)
        while True:
            if rate:
                due += interval
                if due >= end:
                    return
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent = due
            else:
                sent = loop.time()
                if sent >= end:
                    return
            try:
                status = await conn.post()
                key = f"http_{status}"
                ok = status == 200
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
                ok, key = False, type(exc).__name__
                if sent >= measure_from:
                    errors[key] = errors.get(key, 0) + 1
                return
            if sent >= measure_from:
                if ok:
                    latencies.append(loop.time() - sent)
                else:
                    errors[key] = errors.get(key, 0) + 1

    try:
        await asyncio.gather(*(worker(c, i) for i, c in enumerate(conns)))
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return Samples(latencies, errors, duration)


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from webhook.admission import mutate, parse_review
    from webhook.certs import make_ca, make_serving_cert, write_pair
    from webhook.config import load_config

    body = review_body(await kubespawner_pod(args.pod))
    # The ceiling answers with exactly what ours answers, so both move the same bytes.
    answer = mutate(parse_review(body), load_config(None, env={}), datetime.now(UTC)).to_json()
    results: dict[str, Any] = {
        "bench": "admission",
        "pod": args.pod,
        "connections": args.connections,
        "duration_s": args.duration,
        "request_bytes": len(body),
        "response_bytes": len(answer),
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp)
        ca = make_ca()
        write_pair(certs, ca, make_serving_cert(ca, ["localhost"], ["127.0.0.1"]))
        (certs / "response.json").write_bytes(answer)
        ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        servers: dict[str, Callable[[int], list[str]]] = {
            "ours": lambda port: ["_serve", "ours", str(certs), str(port)],
            "ceiling": lambda port: ["_serve", "ceiling", str(certs), str(port), str(certs / "response.json")],
        }
        # Both servers up at once (an idle one costs nothing); the phases alternate between them
        # in rounds, so a change in background load hits both alike.
        with contextlib.ExitStack() as stack:
            ports: dict[str, int] = {}
            for name, argv in servers.items():
                ports[name] = _free_port()
                proc = stack.enter_context(subprocess_server(argv(ports[name])))
                await wait_ready(f"https://127.0.0.1:{ports[name]}", ctx, proc)
            per_round = args.duration / args.rounds
            saturated = {name: Samples() for name in servers}
            paced = {name: Samples() for name in servers}
            for _ in range(args.rounds):
                for name, port in ports.items():
                    saturated[name].add(
                        await drive(port, body, ctx, args.connections, per_round, args.warmup / args.rounds)
                    )
            rate = args.paced_rps or max(1.0, round(saturated["ours"].summary()["rps"] / 2))
            for _ in range(args.rounds):
                for name, port in ports.items():
                    paced[name].add(
                        await drive(port, body, ctx, args.connections, per_round, args.warmup / args.rounds, rate)
                    )
        for name in servers:
            results[name] = {**saturated[name].summary(), "paced": {"target_rps": rate, **paced[name].summary()}}
    ours, ceiling = results["ours"], results["ceiling"]
    results["ratio"] = round(ours["rps"] / ceiling["rps"], 3) if ceiling["rps"] else None
    results["goal"] = {
        "ratio_min": GOAL_RATIO,
        "p99_max_ms": GOAL_P99_MS,
        "ratio_met": bool(results["ratio"] and results["ratio"] >= GOAL_RATIO),
        "p99_met_saturated": ours["p99_ms"] <= GOAL_P99_MS,
        "p99_met_paced": ours["paced"]["p99_ms"] <= GOAL_P99_MS,
    }
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_serve"]:
        kind, certs, port = argv[1], Path(argv[2]), int(argv[3])
        if kind == "ours":
            serve_ours(certs, port)
        else:
            serve_ceiling(certs, port, Path(argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=64, help="concurrent keep-alive connections")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per server and phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per server and phase")
    parser.add_argument("--rounds", type=int, default=5, help="alternations between the servers per phase")
    parser.add_argument("--pod", choices=["gpu", "cpu"], default="gpu", help="which profile's pod to admit")
    parser.add_argument(
        "--paced-rps",
        type=float,
        default=200.0,
        help="open-loop rate of the paced phase; 200 pod creations/s is far beyond any hub's spawn rate",
    )
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run_bench(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
