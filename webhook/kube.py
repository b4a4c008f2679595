"""The Kubernetes edge: a thin JSON client over kubernetes_asyncio's transport, and an informer.

Objects stay plain JSON (``dict``), not generated models: the queue reads a handful of fields and
must pass the rest through untouched, and raw JSON is several times cheaper to decode at 5,000
pods. Authentication, TLS and token refresh come from kubernetes_asyncio's configuration, loaded
without its generated models (``webhook.kube_lean``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from webhook.kube_lean import ApiClient, Configuration, k8s_config

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class KubeError(Exception):
    """A non-2xx answer from the API server (``status`` 0: it could not be reached)."""

    def __init__(self, status: int, reason: str, body: Any = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.body = body


async def load_client(kubeconfig: Path | None) -> ApiClient:
    """An ApiClient from the kubeconfig file, else in-cluster, else ``~/.kube/config``."""
    configuration = Configuration()
    if kubeconfig is not None:
        await k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            await k8s_config.load_kube_config(client_configuration=configuration)
    return ApiClient(configuration)


class Kube:
    """JSON requests to the API server. One instance per process; ``aclose`` when done."""

    def __init__(
        self,
        api: ApiClient,
        *,
        timeout: float = 10.0,
        on_date: Callable[[float, float, str], None] | None = None,
    ) -> None:
        self.api = api
        self.timeout = timeout
        # Told (sent, received, Date header) of every answer: how the API server's clock is learnt.
        self.on_date = on_date

    async def aclose(self) -> None:
        await self.api.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        request_timeout: float | aiohttp.ClientTimeout | None = None,
    ) -> Obj:
        """One request; the decoded JSON answer, or KubeError."""
        response = await self._send(
            method, path, query=query, body=body, content_type=content_type, request_timeout=request_timeout
        )
        try:
            data = await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeError(0, f"the API server's answer broke off: {exc.__class__.__name__}: {exc}") from exc
        finally:
            response.release()
        try:
            decoded = json.loads(data) if data else {}
        except json.JSONDecodeError:
            decoded = {"message": data[:200].decode(errors="replace")}
        if not 200 <= response.status < 300:
            message = decoded.get("message", "") if isinstance(decoded, dict) else ""
            raise KubeError(response.status, message or response.reason or "", decoded)
        result: Obj = decoded
        return result

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        request_timeout: float | aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        params = [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (query or {}).items()]
        headers = {"Accept": "application/json", "Content-Type": content_type}
        sent = time.time()
        try:
            response: aiohttp.ClientResponse = await self.api.call_api(
                path,
                method,
                query_params=params,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=request_timeout if request_timeout is not None else self.timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeError(0, f"cannot reach the API server: {exc.__class__.__name__}: {exc}") from exc
        date = response.headers.get("Date")
        if self.on_date is not None and date:
            self.on_date(sent, time.time(), date)
        return response

    async def stream(self, path: str, query: Mapping[str, str | int | bool], read_timeout: float) -> AsyncIterator[Obj]:
        """A watch: one decoded event per line until the server ends it."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=read_timeout)
        response = await self._send("GET", path, query={**query, "watch": True}, request_timeout=timeout)
        try:
            if not 200 <= response.status < 300:
                body = await response.read()
                raise KubeError(response.status, body[:200].decode(errors="replace"))
            while True:
                line = await response.content.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            response.release()

    # ---------------------------------------------------------------------------- pods & events

    async def patch_json(self, path: str, ops: Sequence[Obj]) -> Obj:
        return await self.request("PATCH", path, body=list(ops), content_type="application/json-patch+json")

    async def delete(self, path: str, grace_seconds: int | None = None) -> Obj:
        body = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds  # type: ignore[assignment]
        return await self.request("DELETE", path, body=body)

    async def delete_if_present(self, path: str, grace_seconds: int | None = None) -> bool:
        """Delete; False when it was already gone (404), any other failure raises KubeError."""
        try:
            await self.delete(path, grace_seconds)
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def get_if_present(self, path: str) -> Obj | None:
        """GET; None when the object does not exist (404)."""
        try:
            return await self.request("GET", path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise


def pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{name}"


Handler = Callable[[str, Obj], None]


class Informer:
    """List, then watch from the list's resourceVersion; re-list on 410 Gone; back off on errors.

    Keeps the latest object of each key and calls ``on_change(kind, obj)`` (kind: ADDED, MODIFIED,
    DELETED, or SYNC after each list with the whole set replaced) from the event loop. A list hands
    ``on_sync`` each object through ``keep`` as its page arrives (the pods' informer keeps only the
    queue's view of a pod), so 5,000 pods are never held as raw JSON at once.
    """

    def __init__(
        self,
        kube: Kube,
        path: str,
        *,
        name: str,
        on_change: Handler,
        on_sync: Callable[[dict[str, Any]], None],
        keep: Callable[[Obj], Any] = lambda obj: obj,
        label_selector: str = "",
        field_selector: str = "",
        watch_seconds: int = 240,
    ) -> None:
        self.kube = kube
        self.path = path
        self.name = name
        self.on_change = on_change
        self.on_sync = on_sync
        self.keep = keep
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_seconds = watch_seconds
        self.synced = asyncio.Event()
        self._resync = False
        self._watch_task: asyncio.Task[str] | None = None

    def _query(self) -> dict[str, str | int | bool]:
        query: dict[str, str | int | bool] = {}
        if self.label_selector:
            query["labelSelector"] = self.label_selector
        if self.field_selector:
            query["fieldSelector"] = self.field_selector
        return query

    async def list(self) -> str:
        """List everything (paged) and replace the cache; returns the resourceVersion to watch from."""
        items: dict[str, Any] = {}
        cont = ""
        while True:
            query = {**self._query(), "limit": 500}
            if cont:
                query["continue"] = cont
            page = await self.kube.request("GET", self.path, query=query, request_timeout=60.0)
            for item in page.get("items") or []:
                items[obj_key(item)] = self.keep(item)
            cont = (page.get("metadata") or {}).get("continue") or ""
            del page["items"]  # the raw page goes before the next one arrives
            if not cont:
                version = str((page.get("metadata") or {}).get("resourceVersion", ""))
                break
        self.on_sync(items)
        self.synced.set()
        return version

    async def resync(self) -> None:
        """List again now (in this informer's own task, so no older watch event can follow the
        new list) and return once that list is in the cache."""
        self.synced.clear()
        self._resync = True
        if self._watch_task is not None:
            self._watch_task.cancel()
        await self.synced.wait()

    async def run(self) -> None:
        """Forever: list, watch, re-list when the watch expires or fails or a resync is asked."""
        backoff = 0.5
        while True:
            try:
                self._resync = False
                version = await self.list()
                backoff = 0.5
                while not self._resync:
                    self._watch_task = asyncio.create_task(self._watch(version))
                    try:
                        version = await self._watch_task
                    except asyncio.CancelledError:
                        current = asyncio.current_task()
                        if self._resync and current is not None and not current.cancelling():
                            break  # only the watch was cancelled, by resync(): list again
                        raise
                    finally:
                        self._watch_task = None
            except asyncio.CancelledError:
                raise
            except _Gone:
                log.info("watch expired, re-listing", extra={"ctx": {"informer": self.name}})
            except (KubeError, aiohttp.ClientError, OSError, TimeoutError, json.JSONDecodeError) as exc:
                log.warning(
                    "watch failed, retrying",
                    extra={"ctx": {"informer": self.name, "error": str(exc), "backoff": backoff}},
                )
                await asyncio.sleep(backoff * (1 + random.random() / 2))  # noqa: S311 - jitter, not crypto
                backoff = min(backoff * 2, 30.0)

    async def _watch(self, version: str) -> str:
        query = {
            **self._query(),
            "resourceVersion": version,
            "allowWatchBookmarks": True,
            "timeoutSeconds": self.watch_seconds,
        }
        async for event in self.kube.stream(self.path, query, read_timeout=self.watch_seconds + 30):
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Gone
                raise KubeError(int(obj.get("code") or 500), str(obj.get("message", "watch error")))
            version = str((obj.get("metadata") or {}).get("resourceVersion", version))
            if kind == "BOOKMARK":
                continue
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self.on_change(str(kind), obj)
        return version


class _Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


def obj_key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name')}" if namespace else str(meta.get("name"))


async def retry_on_conflict(attempt: Callable[[], Awaitable[Obj | None]], tries: int = 5) -> Obj | None:
    """Run ``attempt`` again on 409/422 (a ``test`` op or resourceVersion that lost a race)."""
    for n in range(tries):
        try:
            return await attempt()
        except KubeError as exc:
            if exc.status not in (409, 422) or n == tries - 1:
                raise
    return None
