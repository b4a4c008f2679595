"""A minimal Kubernetes REST client over aiohttp with a client certificate.

The dev cluster creates a handful of objects at start-up; plain REST keeps that fast (no
generated-client import, which costs about a second) and shows exactly what is sent.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

JSON = dict[str, Any]
FIELD_MANAGER = "gpu-queue-dev"


class KubeError(Exception):
    """An API call failed: HTTP status and the API server's message."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status
        self.message = message


def client_ssl_context(ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
    """Verify the server against ``ca_file``; present the client certificate if given."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file is not None else None)
    return ctx


class KubeClient:
    """``async with KubeClient(...) as kube: await kube.get("/api/v1/nodes")``."""

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl), timeout=self._timeout)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> JSON:
        if self._session is None:
            raise RuntimeError("KubeClient used outside 'async with'")
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        async with self._session.request(
            method, self.base_url + path, data=data, params=params, headers=headers
        ) as resp:
            text = await resp.text()
            try:
                payload: Any = json.loads(text) if text else {}
            except ValueError:
                payload = {"message": text}
            if resp.status >= 400:
                message = payload.get("message", text) if isinstance(payload, dict) else text
                raise KubeError(method, path, resp.status, str(message))
            return payload if isinstance(payload, dict) else {"items": payload}

    async def get(self, path: str, params: dict[str, str] | None = None) -> JSON:
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: JSON, *, exist_ok: bool = True, dry_run: bool = False) -> JSON:
        """POST; an object that already exists is fine when ``exist_ok`` (start-up is re-runnable)."""
        params = {"fieldManager": FIELD_MANAGER}
        if dry_run:
            params["dryRun"] = "All"
        try:
            return await self.request("POST", path, body, params=params)
        except KubeError as exc:
            if exist_ok and exc.status == 409:
                return {}
            raise

    async def apply(self, path: str, body: JSON) -> JSON:
        """Server-side apply of the whole object (create or update)."""
        return await self.request(
            "PATCH",
            path,
            body,
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
        )

    async def merge_patch(self, path: str, body: JSON) -> JSON:
        return await self.request(
            "PATCH", path, body, params={"fieldManager": FIELD_MANAGER}, content_type="application/merge-patch+json"
        )

    async def delete(self, path: str, params: dict[str, str] | None = None) -> JSON:
        try:
            return await self.request("DELETE", path, params=params)
        except KubeError as exc:
            if exc.status == 404:
                return {}
            raise
