"""The HTTPS server: admission (``/mutate``, ``/validate``), health, metrics, and the queue API.

Admission is answered from the request and the configuration alone, so the server starts, is
ready and admits pods while Redis or the Kubernetes API are down (invariant I4). Everything that
needs them (store, controller, API) is plugged in as ``cleanup_ctx`` components that must not
block startup on an outage.

The serving certificate is hot reloaded: the files (a Secret volume) are polled and a changed pair
is loaded into the same ``SSLContext``, so new handshakes get the new certificate with no restart.

With ``server.workers`` N > 1 the main process (admission, API, controller) starts N-1 worker
processes that share the HTTPS port with it (``SO_REUSEPORT``: the kernel spreads connections).
A worker answers admission itself and forwards ``/api/v1`` to the main process over an abstract
Unix socket (inside the pod; the main process still checks every token), because the API's
answers (capacity, use, admin edits) need the controller's cache and Kubernetes client, which only
the main process has. Prometheus series are per process, so the
metrics port (main process only) shows the main process's admission series.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import pickle
import secrets
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client.exposition import choose_encoder
from yarl import URL

from webhook import metrics
from webhook.admission import BadReview, mutate, outcome, parse_review, validate
from webhook.certs import not_after
from webhook.config import Config, ConfigError, Tls, load_config
from webhook.review import AdmissionReview, answer

log = logging.getLogger("gpu_queue.server")

Component = Callable[[web.Application], AsyncIterator[None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Mozilla "intermediate" TLS 1.2 suites (forward secret AEAD only); TLS 1.3 suites are all strong.
_TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)


class Readiness:
    """Ready when nothing is pending: set up with ``startup`` pending, cleared when the app started.

    ``serve`` adds ``listening`` until the HTTPS site accepts, and ``stopping`` on SIGTERM so the
    endpoint is taken out of the Service while in-flight requests finish.
    """

    def __init__(self, *pending: str) -> None:
        self.pending: set[str] = set(pending)

    @property
    def ready(self) -> bool:
        return not self.pending

    def hold(self, reason: str) -> None:
        self.pending.add(reason)

    def clear(self, reason: str) -> None:
        self.pending.discard(reason)


CONFIG: web.AppKey[Config] = web.AppKey("config", Config)
READINESS: web.AppKey[Readiness] = web.AppKey("readiness", Readiness)


# ------------------------------------------------------------------------------------------- TLS


class TlsError(Exception):
    """The serving certificate cannot be loaded; the message says what to fix."""


def make_ssl_context() -> ssl.SSLContext:
    """A server context: TLS 1.2+, forward-secret AEAD ciphers, no compression or renegotiation."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    return ctx


@contextlib.contextmanager
def _pem_files(cert: bytes, key: bytes) -> Iterator[tuple[str, str]]:
    """Paths holding exactly these bytes (``load_cert_chain`` only reads paths).

    In-memory files on Linux (works on a read-only root filesystem); temp files elsewhere.
    """
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fds = [os.memfd_create("gpu-queue-tls", 0) for _ in range(2)]
        try:
            for fd, data in zip(fds, (cert, key), strict=True):
                os.write(fd, data)
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory() as tmp:  # pragma: no cover - non-Linux development machines
        paths = (Path(tmp) / "tls.crt", Path(tmp) / "tls.key")
        paths[0].write_bytes(cert)
        paths[1].touch(mode=0o600)
        paths[1].write_bytes(key)
        yield str(paths[0]), str(paths[1])


class CertReloader:
    """Keeps one ``SSLContext`` serving the current contents of the cert and key files.

    Contents are compared, not mtimes: a Secret volume changes by an atomic symlink swap, which
    leaves the files' own mtimes meaningless. A new pair is first loaded into a scratch context
    from the very bytes read, and only then into the live one: OpenSSL can leave a context with a
    new certificate and no key when a load fails half-way, and a half-written pair must never
    reach it. Note: a change of key *type* (EC <-> RSA) adds a slot rather than replacing one; that
    needs a restart.
    """

    def __init__(self, tls: Tls, context: ssl.SSLContext | None = None) -> None:
        self.cert_file = tls.cert_file
        self.key_file = tls.key_file
        self.interval = tls.reload_seconds
        self.context = context or make_ssl_context()
        self._current: tuple[bytes, bytes] | None = None

    def _read(self) -> tuple[bytes, bytes]:
        return self.cert_file.read_bytes(), self.key_file.read_bytes()

    def _apply(self, pair: tuple[bytes, bytes]) -> None:
        with _pem_files(*pair) as (cert_path, key_path):
            make_ssl_context().load_cert_chain(cert_path, key_path)  # raises on a bad pair
            self.context.load_cert_chain(cert_path, key_path)
        self._current = pair
        expiry = not_after(pair[0])
        metrics.TLS_CERT_EXPIRY.set(expiry.timestamp())
        log.info(
            "serving certificate loaded",
            extra={"ctx": {"cert_file": str(self.cert_file), "not_after": expiry.isoformat()}},
        )

    def load(self) -> None:
        """The first load, at start: a failure is fatal, with a message that says what to do."""
        try:
            pair = self._read()
        except OSError as exc:
            raise TlsError(
                f"cannot read the serving certificate ({exc.filename}: {exc.strerror}); mount the TLS Secret "
                "made by `gpu-queue certs --secret` or cert-manager, or set tls.certFile/tls.keyFile"
            ) from None
        try:
            self._apply(pair)
        except (ssl.SSLError, ValueError) as exc:
            raise TlsError(
                f"{self.cert_file} and {self.key_file} are not a matching PEM certificate and key ({exc}); "
                "re-create them with `gpu-queue certs`"
            ) from None

    def check(self) -> bool:
        """Reload if the files changed and the new pair loads; True when a new pair is in use."""
        try:
            pair = self._read()
        except OSError as exc:
            log.warning(
                "cannot read the serving certificate; keeping the current one",
                extra={"ctx": {"file": exc.filename, "error": exc.strerror}},
            )
            return False
        if pair == self._current:
            return False
        try:
            self._apply(pair)
        except (ssl.SSLError, ValueError) as exc:
            metrics.TLS_RELOADS.labels("failed").inc()
            log.warning(
                "the changed certificate files do not load (half-written?); keeping the current certificate",
                extra={"ctx": {"cert_file": str(self.cert_file), "error": str(exc)}},
            )
            return False
        metrics.TLS_RELOADS.labels("ok").inc()
        return True

    async def watch(self) -> None:
        """Poll forever (cancel to stop); an unexpected error is logged, never ends the loop."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:
                log.exception("certificate reload check failed")

    def component(self) -> Component:
        """The reload loop as a ``cleanup_ctx`` component."""

        async def tls_reload(app: web.Application) -> AsyncIterator[None]:
            task = asyncio.create_task(self.watch(), name="tls-reload")
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        return tls_reload


# ------------------------------------------------------------------------------------- handlers


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is JSON, and an unexpected exception is a logged 500, never a dropped connection."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or (exc.content_type == "application/json"):
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _error(exc.status, exc.reason, headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error", extra={"ctx": {"method": request.method, "path": request.path}})
        return _error(500, "internal error; see the gpu-queue logs")


def _pod_name(review: AdmissionReview) -> str:
    req = review.request
    if req is None:
        return ""
    if req.name:
        return req.name
    meta = (req.object or {}).get("metadata")
    if isinstance(meta, dict):
        return str(meta.get("name") or meta.get("generateName") or "")
    return ""


def _admission_handler(name: str, decide: Callable[[AdmissionReview, Config], AdmissionReview]) -> Handler:
    """One admission endpoint: parse, decide, answer; count and time every outcome.

    A bad body is a 400 (413 if too large) with a JSON error. An unexpected exception in ``decide``
    is answered with a *denial* (code 500) for that request's uid: the same as the API server's
    ``failurePolicy: Fail``, but with a message the user sees instead of "failed calling webhook".
    """
    latency = {o: metrics.ADMISSION_LATENCY.labels(name, o) for o in ("allowed", "patched", "denied")}
    counted = {o: metrics.ADMISSION_REQUESTS.labels(name, o) for o in ("allowed", "patched", "denied")}

    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        result = "error"
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                result = "bad_request"
                limit = request.app[CONFIG].server.max_body_bytes
                return _error(413, f"the body is larger than server.maxBodyBytes ({limit} bytes)")
            try:
                review = parse_review(body)
            except BadReview as exc:
                result = "bad_request"
                log.info("bad AdmissionReview", extra={"ctx": {"handler": name, "error": str(exc)}})
                return _error(400, str(exc))
            except Exception:
                # A bug in parsing: no uid to answer for, so a 400 rather than a 5xx that the API
                # server would retry; logged so it gets fixed.
                log.exception("AdmissionReview parsing failed", extra={"ctx": {"handler": name}})
                return _error(400, "the AdmissionReview could not be read (internal error, logged)")
            assert review.request is not None
            req = review.request
            try:
                response = decide(review, request.app[CONFIG])
                payload = response.to_json()
                verdict = outcome(response)
            except Exception:
                log.exception(
                    "admission failed", extra={"ctx": {"handler": name, "uid": req.uid, "pod": _pod_name(review)}}
                )
                failed = answer(
                    req,
                    allowed=False,
                    code=500,
                    reason="InternalError",
                    message=(
                        f"gpu-queue: internal error in /{name} (request uid {req.uid}); "
                        "try again, and ask your admin to check the gpu-queue logs"
                    ),
                )
                return web.Response(body=failed.to_json(), content_type="application/json")
            result = verdict
            # Denials are logged; admitted pods only at debug: a JSON log line per request costs
            # about as much as the admission itself (the API server's audit log has them all).
            if result == "denied" or log.isEnabledFor(logging.DEBUG):
                status = response.response.status if response.response is not None else None
                log.log(
                    logging.INFO if result == "denied" else logging.DEBUG,
                    f"{name}: {result}",
                    extra={
                        "ctx": {
                            "handler": name,
                            "outcome": result,
                            "uid": req.uid,
                            "namespace": req.namespace,
                            "pod": _pod_name(review),
                            "operation": req.operation,
                            "user": req.user_info.username,
                            "message": status.message if status is not None else "",
                        }
                    },
                )
            return web.Response(body=payload, content_type="application/json")
        finally:
            elapsed = time.perf_counter() - started
            if result in latency:
                latency[result].observe(elapsed)
                counted[result].inc()
            else:
                metrics.ADMISSION_LATENCY.labels(name, result).observe(elapsed)
                metrics.ADMISSION_REQUESTS.labels(name, result).inc()

    return handle


def _mutate(review: AdmissionReview, config: Config) -> AdmissionReview:
    return mutate(review, config, datetime.now(UTC))


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the event loop answers. Nothing else, so an outage elsewhere never restarts us."""
    return web.json_response({"status": "ok"})


def _readyz(readiness: Readiness) -> Handler:
    async def readyz(request: web.Request) -> web.Response:
        """Readiness: started and serving TLS. Not Redis, not the API: admission works without them."""
        if readiness.ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "waiting_for": sorted(readiness.pending)}, status=503)

    return readyz


async def metrics_handler(request: web.Request) -> web.Response:
    """Prometheus text, or OpenMetrics when the scraper asks for it."""
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encode(metrics.REGISTRY), headers={"Content-Type": content_type})


# ----------------------------------------------------------------------------------------- apps


def create_app(
    config: Config,
    *,
    components: Sequence[Component] = (),
    api_app: web.Application | None = None,
) -> web.Application:
    """The main (HTTPS) application: admission, health, metrics and, when given, the API."""
    app = web.Application(client_max_size=config.server.max_body_bytes, middlewares=[json_errors])
    app[CONFIG] = config
    readiness = Readiness("startup")
    app[READINESS] = readiness
    app.router.add_post("/mutate", _admission_handler("mutate", _mutate))
    app.router.add_post("/validate", _admission_handler("validate", validate))
    _add_health_routes(app, readiness)
    if api_app is not None:
        app.add_subapp("/api/v1", api_app)
    app.cleanup_ctx.extend(components)

    async def started(app: web.Application) -> None:
        # on_startup runs after every cleanup_ctx component has started.
        readiness.clear("startup")

    app.on_startup.append(started)
    return app


def _add_health_routes(app: web.Application, readiness: Readiness) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", _readyz(readiness))
    app.router.add_get("/metrics", metrics_handler)


def create_metrics_app(readiness: Readiness) -> web.Application:
    """The plain-HTTP side port: /metrics, /healthz and /readyz only (no admission, no API)."""
    app = web.Application(middlewares=[json_errors])
    app[READINESS] = readiness
    _add_health_routes(app, readiness)
    return app


def build_components(config: Config) -> tuple[list[Component], web.Application | None]:
    """The parts that need Redis or the Kubernetes API: (cleanup_ctx components, API sub-app).

    This is the one place where the Redis store, the queue controller (leader election, watches,
    gate removal) and the queue API are wired into the server. Each component opens its resources
    before ``yield`` and closes them after; none may block or fail startup on an outage, because
    admission must stay available without Redis or the API server (see ``webhook.service``).
    """
    from webhook.service import build

    components, api_app = build(config)
    return list(components), api_app


# -------------------------------------------------------------------------------------- workers

WORKER_HEADER = "X-Gpu-Queue-Worker"  # the answering process's pid, set when server.workers > 1
# Hop-by-hop headers, and the ones the client library sets itself: never forwarded as they are.
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
        "date",
        "server",
        WORKER_HEADER.lower(),
    }
)
_WORKER_ENTRY = "from webhook.server import worker_main; worker_main()"
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _identify(app: web.Application) -> None:
    """Name the answering process on every response, so a client (and a test) can tell workers apart."""
    pid = str(os.getpid())

    async def add_header(request: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER_HEADER] = pid

    app.on_response_prepare.append(add_header)


def _abstract(name: str) -> str:
    """A Linux abstract socket address: no file, so it works on a read-only root filesystem."""
    return "\0" + name


def create_api_proxy(socket_name: str) -> web.Application:
    """A worker's ``/api/v1``: every request forwarded to the main process, the answer relayed.

    The main process authenticates and answers exactly as it does on its own connections; a worker
    holds no store, no cache and no Kubernetes client, so it cannot answer differently.
    """
    app = web.Application()
    sessions: list[aiohttp.ClientSession] = []

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.UnixConnector(path=_abstract(socket_name))
        sessions.append(aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)))
        yield
        await sessions.pop().close()

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        headers["X-Forwarded-For"] = request.remote or ""
        body = b""
        if request.method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge as exc:
                return web.json_response(
                    {"error": f"{exc.reason}: {request.method} {request.path}", "detail": None}, status=exc.status
                )
        url = URL("http://gpu-queue" + request.raw_path, encoded=True)
        try:
            async with sessions[0].request(
                request.method, url, headers=headers, data=body or None, allow_redirects=False
            ) as answer:
                payload = await answer.read()
                relayed = {k: v for k, v in answer.headers.items() if k.lower() not in _NOT_FORWARDED}
                return web.Response(status=answer.status, body=payload, headers=relayed)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("worker: the main process did not answer an API request", extra={"ctx": {"error": str(exc)}})
            return web.json_response(
                {"error": "this gpu-queue worker cannot reach its main process; retry", "detail": None},
                status=503,
                headers={"Retry-After": "5"},
            )

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


class WorkerPool:
    """The ``server.workers - 1`` extra processes: started, restarted after a crash, stopped.

    Each is a fresh interpreter (not a fork of a process that runs an event loop and threads), told
    the configuration through its stdin. It learns of the main process's death by end-of-file on
    a pipe whose write end only the main process holds, so no worker outlives it, even on SIGKILL.
    """

    def __init__(self, config: Config, port: int, api_socket: str, count: int) -> None:
        self.config = config
        self.port = port
        self.api_socket = api_socket
        self.count = count
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._lifeline_read, self._lifeline_write = os.pipe()  # both close-on-exec by default

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes.values()]

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._supervise(i), name=f"worker-{i}") for i in range(1, self.count + 1)]

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        # The worker imports this very package, wherever it was imported from here.
        path = os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        argv = [
            "--index",
            str(index),
            "--port",
            str(self.port),
            "--api-socket",
            self.api_socket,
            "--lifeline-fd",
            str(self._lifeline_read),
        ]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER_ENTRY,
            *argv,
            stdin=asyncio.subprocess.PIPE,
            pass_fds=(self._lifeline_read,),
            env=env,
        )
        assert proc.stdin is not None
        proc.stdin.write(pickle.dumps(self.config))
        await proc.stdin.drain()
        proc.stdin.close()
        log.info("worker started", extra={"ctx": {"worker": index, "pid": proc.pid}})
        return proc

    async def _supervise(self, index: int) -> None:
        """Keep worker ``index`` running; back off when it keeps dying (a bad certificate, say)."""
        delay = 1.0
        while not self._stopping:
            started = time.monotonic()
            try:
                proc = await self._spawn(index)
            except OSError as exc:
                log.error("cannot start a worker", extra={"ctx": {"worker": index, "error": str(exc)}})
            else:
                self.processes[index] = proc
                code = await proc.wait()
                if self._stopping:
                    return
                log.warning("worker exited; starting it again", extra={"ctx": {"worker": index, "code": code}})
            if time.monotonic() - started > 60:
                delay = 1.0
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def terminate(self) -> None:
        """SIGTERM every worker: each stops accepting and drains, like the main process."""
        self._stopping = True
        for proc in self.processes.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()

    async def wait(self, grace_seconds: float) -> None:
        """Wait for the workers to exit; SIGKILL the ones still running after ``grace_seconds``."""
        procs = list(self.processes.values())
        try:
            async with asyncio.timeout(grace_seconds):
                await asyncio.gather(*(p.wait() for p in procs))
        except TimeoutError:
            for proc in procs:
                if proc.returncode is None:
                    log.warning("worker did not stop in time; killing it", extra={"ctx": {"pid": proc.pid}})
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*(p.wait() for p in procs))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for fd in (self._lifeline_read, self._lifeline_write):
            with contextlib.suppress(OSError):
                os.close(fd)


def _bound_port(runner: web.AppRunner, fallback: int) -> int:
    """The TCP port actually bound (``server.port: 0`` picks one, which the workers must share)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int):
            return address[1]
    return fallback


async def serve_worker(
    config: Config,
    *,
    port: int,
    api_socket: str,
    lifeline_fd: int | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """One extra worker: admission, health and the forwarded API on the shared port, no controller.

    It loads and reloads the certificate itself, and stops on SIGTERM/SIGINT or when the main
    process dies (end-of-file on ``lifeline_fd``).
    """
    reloader = CertReloader(config.tls)
    reloader.load()
    app = create_app(config, components=[reloader.component()], api_app=create_api_proxy(api_socket))
    _identify(app)
    app[READINESS].hold("listening")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    def orphaned() -> None:
        assert lifeline_fd is not None
        loop.remove_reader(lifeline_fd)
        log.warning("the main gpu-queue process is gone; this worker stops")
        stop.set()

    if lifeline_fd is not None:
        loop.add_reader(lifeline_fd, orphaned)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10.0)
    try:
        await runner.setup()
        site = web.TCPSite(runner, config.server.host, port, ssl_context=reloader.context, reuse_port=True)
        await site.start()
        gc.collect()
        gc.freeze()
        app[READINESS].clear("listening")
        log.info("worker serving", extra={"ctx": {"https": f"{config.server.host}:{port}", "pid": os.getpid()}})
        await stop.wait()
        log.info("worker shutting down: draining in-flight requests")
    finally:
        await runner.cleanup()
        if lifeline_fd is not None:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(lifeline_fd)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def worker_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of a worker process (started by ``WorkerPool``); the configuration is on stdin."""
    parser = argparse.ArgumentParser(prog="gpu-queue-worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-socket", required=True)
    parser.add_argument("--lifeline-fd", type=int, required=True)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    # Our own pickle, from the process that started us, through a pipe only it holds.
    config: Config = pickle.loads(sys.stdin.buffer.read())  # noqa: S301
    from webhook.logs import setup_logging

    setup_logging(config.log_level)
    try:
        asyncio.run(serve_worker(config, port=args.port, api_socket=args.api_socket, lifeline_fd=args.lifeline_fd))
    except (TlsError, OSError) as exc:
        log.error("worker failed", extra={"ctx": {"worker": args.index, "error": str(exc)}})
        sys.exit(1)


# ---------------------------------------------------------------------------------------- serve


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT): then stop accepting, drain, clean up.

    With ``server.workers`` > 1 this is the main process: it also starts the workers once its own
    site is bound, and stops them first (they may still forward API requests to it while draining).
    """
    reloader = CertReloader(config.tls)
    reloader.load()
    extra, api_app = build_components(config)
    app = create_app(config, components=[reloader.component(), *extra], api_app=api_app)
    readiness = app[READINESS]
    readiness.hold("listening")
    workers = config.server.workers
    if workers > 1:
        _identify(app)

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10.0)
    side_runner: web.AppRunner | None = None
    pool: WorkerPool | None = None
    site: web.TCPSite | None = None
    try:
        await runner.setup()
        site = web.TCPSite(
            runner, config.server.host, config.server.port, ssl_context=reloader.context, reuse_port=workers > 1
        )
        await site.start()
        if workers > 1:
            api_socket = f"gpu-queue-api-{os.getpid()}-{secrets.token_hex(8)}"
            await web.UnixSite(runner, _abstract(api_socket)).start()
            pool = WorkerPool(config, _bound_port(runner, config.server.port), api_socket, workers - 1)
            pool.start()
        if config.server.metrics_port:
            side_runner = web.AppRunner(create_metrics_app(readiness), access_log=None)
            await side_runner.setup()
            await web.TCPSite(side_runner, config.server.host, config.server.metrics_port).start()
        # Everything loaded at start (modules, config, pydantic schemas) lives for the whole run:
        # move it out of the collector's reach. Otherwise each (rare) full collection scans it
        # all, about 30 ms on a small node, stalling every in-flight admission: the far tail.
        gc.collect()
        gc.freeze()
        readiness.clear("listening")
        log.info(
            "serving",
            extra={
                "ctx": {
                    "https": f"{config.server.host}:{config.server.port}",
                    "metrics": config.server.metrics_port or None,
                    "workers": workers,
                }
            },
        )
        await stop.wait()
        log.info("shutting down: draining in-flight requests")
        readiness.hold("stopping")
    finally:
        if pool is not None:
            # Workers first: they stop accepting and drain while this process still answers the
            # API requests they forward; then this process stops accepting too.
            pool.terminate()
            if site is not None:
                await site.stop()
            await pool.wait(grace_seconds=15.0)
        # The main site (stop accepting, finish in-flight, run cleanups); metrics last.
        await runner.cleanup()
        if side_runner is not None:
            await side_runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    log.info("stopped")


def run_serve(args: argparse.Namespace) -> int:
    """``gpu-queue serve``: exit 2 on a bad config, 1 when TLS or the port fails, 0 on a clean stop."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    from webhook.logs import setup_logging

    setup_logging(config.log_level)
    try:
        asyncio.run(serve(config))
    except TlsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"error: cannot listen on {config.server.host} (server.port {config.server.port}, "
            f"server.metricsPort {config.server.metrics_port}): {exc.strerror or exc}; "
            "another process may hold the port",
            file=sys.stderr,
        )
        return 1
    return 0
