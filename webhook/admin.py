"""``gpu-queue status`` and ``gpu-queue queue ls|rm|move``: a small client of the queue API.

The CLI only talks HTTP to ``/api/v1`` (usually through ``kubectl port-forward``), so an admin needs
no Redis or Kubernetes credentials, and every edit goes through the service that logs it. Rendering
is pure (``render_*`` take API models and return text) so it is tested without a server. Every error
is one line that says what to do, and the exit code is non-zero. The text it prints is made in
``webhook.admin_render``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Final, TypeVar
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, ValidationError
from yarl import URL

from webhook.admin_render import render_edit, render_queue, render_status
from webhook.api import API_PREFIX, EditResult, KeptPlaceList, PoolList, QueueListing
from webhook.models import Position, PositionState

TIMEOUT_SECONDS: Final = 10.0
AUTH_ADVICE: Final = "pass --token or set GPU_QUEUE_TOKEN"
_M = TypeVar("_M", bound=BaseModel)


class CliError(Exception):
    """A failure the admin can act on; its message is the one line the CLI prints. ``status`` is
    the API's HTTP status when the API answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------------
# The HTTP client
# --------------------------------------------------------------------------------------------


class _Api:
    """One session against ``--api``; turns every failure into a CliError with advice."""

    def __init__(self, args: argparse.Namespace, session: aiohttp.ClientSession, ssl_arg: ssl.SSLContext | bool):
        self.root = str(args.api).rstrip("/")
        self.token = str(args.token or "")
        self.session = session
        self.ssl = ssl_arg

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> Any:
        url = URL(f"{self.root}{API_PREFIX}{path}", encoded=True)
        headers = {"Accept": "application/json", "X-Gpu-Queue-Actor": _actor()}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with self.session.request(
                method, url, params=params, json=body, headers=headers, ssl=self.ssl
            ) as response:
                text = await response.text()
                status = response.status
                retry_after = response.headers.get("Retry-After", "")
        except aiohttp.ClientConnectorCertificateError as exc:
            raise CliError(
                f"the TLS certificate of {self.root} was not accepted ({exc.certificate_error}): "
                "pass --ca with the service's CA certificate (or --insecure for a quick look)"
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise CliError(
                f"TLS with {self.root} failed ({exc}): does --api use the right scheme (http or https)?"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            errno = exc.os_error.errno
            reason = os.strerror(errno).lower() if errno else (exc.os_error.strerror or str(exc.os_error) or str(exc))
            raise CliError(
                f"cannot reach the gpu-queue API at {self.root}: {reason}; is `kubectl port-forward` running?"
            ) from None
        except TimeoutError:
            raise CliError(f"the gpu-queue API at {self.root} did not answer within {TIMEOUT_SECONDS:g} s") from None
        except aiohttp.ClientError as exc:
            raise CliError(
                f"cannot talk to the gpu-queue API at {self.root}: {exc or type(exc).__name__}; "
                "does --api use the right scheme (http or https)?"
            ) from None
        try:
            data: Any = json.loads(text) if text else None
        except ValueError:
            data = None
        if 200 <= status < 300 and data is not None:
            return data
        raise self._error(status, data, retry_after, text)

    def _error(self, status: int, data: Any, retry_after: str, text: str) -> CliError:
        message = data.get("error") if isinstance(data, dict) else None
        if status == 401:
            if not self.token:
                return CliError(f"the API needs a token: {AUTH_ADVICE}")
            return CliError(
                f"the API refused the token: {AUTH_ADVICE} (a token from api.readTokens or api.adminTokens)"
            )
        if status == 403:
            return CliError(f"this edit needs an admin token: {AUTH_ADVICE} with a token from api.adminTokens")
        if not isinstance(message, str):
            snippet = " ".join(text.split())[:120]
            return CliError(
                f"{self.root} answered HTTP {status} without a gpu-queue error ({snippet or 'empty body'}): "
                "is --api the gpu-queue service?"
            )
        if status == 503:
            wait = f"; retry in {retry_after} s" if retry_after else ""
            return CliError(f"the gpu-queue API is unavailable: {message}{wait}", status)
        return CliError(f"{message} (HTTP {status})")

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return await self.call("GET", path, params=params)


def _actor() -> str:
    """Who runs the CLI, as the OS says (self-reported; the audit log records it beside the token)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""


def _ssl_arg(args: argparse.Namespace) -> ssl.SSLContext | bool:
    if args.insecure:
        return False
    if args.ca:
        try:
            return ssl.create_default_context(cafile=args.ca)
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"cannot use --ca {args.ca}: {getattr(exc, 'strerror', None) or exc}") from None
    return True


@asynccontextmanager
async def _connect(args: argparse.Namespace) -> AsyncIterator[_Api]:
    api = str(args.api)
    parsed = URL(api)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise CliError(f"--api must be an http(s) URL such as https://localhost:8443, got {api!r}")
    ssl_arg = _ssl_arg(args)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield _Api(args, session, ssl_arg)


def _model(model: type[_M], data: Any) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise CliError(
            f"unexpected answer from the API ({exc.error_count()} fields do not match {model.__name__}): "
            "are the CLI and the service the same version?"
        ) from None


def _segment(text: str) -> str:
    return quote(text, safe="")


def _pod_arg(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise CliError(f"pod must be NAMESPACE/NAME (e.g. jhub/jupyter-alice), got {text!r}")
    return namespace, name


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")


def _run(main: Coroutine[Any, Any, None]) -> int:
    try:
        asyncio.run(main)
    except CliError as exc:
        print(f"gpu-queue: {exc}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


async def _queues(api: _Api, names: Sequence[str]) -> dict[str, Any]:
    answers = await asyncio.gather(*(api.get(f"/pools/{_segment(n)}/queue") for n in names))
    return dict(zip(names, answers, strict=True))


async def _status(args: argparse.Namespace) -> None:
    async with _connect(args) as api:
        raw_pools = await api.get("/pools")
        pools = _model(PoolList, raw_pools).root
        if args.pool is not None:
            pools = [p for p in pools if p.name == args.pool]
            if not pools:
                known = ", ".join(p.name for p in _model(PoolList, raw_pools).root) or "none"
                raise CliError(f"no pool named {args.pool!r} (pools: {known})")
        names = [p.name for p in pools]
        raw_queues = await _queues(api, names)
        raw_kept = {name: await _kept(api, name) for name in names}
    if args.output == "json":
        pools_json = [p for p in raw_pools if p.get("name") in names]
        _print_json({"pools": pools_json, "queues": raw_queues, "keptPlaces": raw_kept})
        return
    queues = {name: _model(QueueListing, raw) for name, raw in raw_queues.items()}
    kept = {name: _model(KeptPlaceList, raw) if raw is not None else None for name, raw in raw_kept.items()}
    _print(render_status(pools, queues, datetime.now(UTC), kept))


async def _kept(api: _Api, pool: str) -> Any:
    """A pool's kept places, or None while Redis (where they live) is down."""
    try:
        return await api.get(f"/pools/{_segment(pool)}/kept-places")
    except CliError as exc:
        if exc.status == 503:
            return None
        raise


async def _queue_ls(args: argparse.Namespace) -> None:
    async with _connect(args) as api:
        if args.pool is not None:
            names = [args.pool]
        else:
            names = [p.name for p in _model(PoolList, await api.get("/pools")).root]
        raw_queues = await _queues(api, names)
    if args.output == "json":
        _print_json(raw_queues[args.pool] if args.pool is not None else list(raw_queues.values()))
        return
    blocks = []
    for name, raw in raw_queues.items():
        listing = _model(QueueListing, raw)
        header = f"pool {name}: {listing.queue_length} queued, capacity {listing.capacity}, in use {listing.in_use}"
        blocks.append(header + "\n" + render_queue(listing, with_server=True))
    _print("\n\n".join(blocks) if blocks else "no pools are configured")


async def _queued_pool(api: _Api, namespace: str, name: str) -> str:
    """Edits are addressed by pool: find the pod's, and refuse early when it is not queued."""
    position = _model(Position, await api.get(f"/queue/{_segment(namespace)}/{_segment(name)}"))
    if position.state is not PositionState.QUEUED or position.pool is None:
        what = "holds a slice already" if position.state is PositionState.ADMITTED else "is not in a queue yet"
        raise CliError(f"pod {namespace}/{name} {what}; only queued pods can be moved or removed")
    return position.pool


async def _queue_rm(args: argparse.Namespace) -> None:
    namespace, name = _pod_arg(args.pod)
    async with _connect(args) as api:
        pool = await _queued_pool(api, namespace, name)
        path = f"/pools/{_segment(pool)}/queue/{_segment(namespace)}/{_segment(name)}"
        raw = await api.call("DELETE", path, params={"reason": args.reason})
    if args.output == "json":
        _print_json(raw)
    else:
        _print(render_edit(_model(EditResult, raw)))


async def _queue_move(args: argparse.Namespace) -> None:
    namespace, name = _pod_arg(args.pod)
    if args.position < 1:
        raise CliError(f"position is 1-based (1 = the head of the queue), got {args.position}")
    async with _connect(args) as api:
        pool = await _queued_pool(api, namespace, name)
        path = f"/pools/{_segment(pool)}/queue/{_segment(namespace)}/{_segment(name)}/move"
        raw = await api.call("POST", path, body={"position": args.position, "reason": args.reason})
    if args.output == "json":
        _print_json(raw)
    else:
        _print(render_edit(_model(EditResult, raw)))


def run_status(args: argparse.Namespace) -> int:
    return _run(_status(args))


def run_queue_ls(args: argparse.Namespace) -> int:
    return _run(_queue_ls(args))


def run_queue_rm(args: argparse.Namespace) -> int:
    return _run(_queue_rm(args))


def run_queue_move(args: argparse.Namespace) -> int:
    return _run(_queue_move(args))
