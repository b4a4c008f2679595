"""The dev cluster's API client: the product's ``webhook.kube.Kube`` with a client certificate and
the few calls start-up and the tests make (create, server-side apply, merge patch).

Errors are the product's ``webhook.kube.KubeError`` (``status``, ``reason`` = the API server's
message, ``body`` = its Status object), so the dev tooling and the service fail the same way.

    async with DevKube.connect(server, ca, cert, key) as kube:
        await kube.get("/api/v1/nodes")
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from kubernetes_asyncio import client as k8s

from webhook.kube import Kube, KubeError

JSON = dict[str, Any]
FIELD_MANAGER = "gpu-queue-dev"


class DevKube(Kube):
    """``Kube`` plus ``async with`` and the dev cluster's conveniences."""

    @classmethod
    def connect(cls, server: str, ca_file: Path, cert_file: Path, key_file: Path, timeout: float = 10.0) -> DevKube:
        """A client for one client-certificate identity (no kubeconfig to parse, no token)."""
        configuration = k8s.Configuration()
        configuration.host = server.rstrip("/")
        configuration.ssl_ca_cert = str(ca_file)
        configuration.cert_file = str(cert_file)
        configuration.key_file = str(key_file)
        return cls(k8s.ApiClient(configuration), timeout=timeout)

    async def __aenter__(self) -> DevKube:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def get(self, path: str, query: dict[str, str] | None = None) -> JSON:
        return await self.request("GET", path, query=query)

    async def create(self, path: str, body: JSON, *, exist_ok: bool = True, dry_run: bool = False) -> JSON:
        """POST; an object that already exists is fine when ``exist_ok`` (start-up is re-runnable)."""
        query = {"fieldManager": FIELD_MANAGER}
        if dry_run:
            query["dryRun"] = "All"
        try:
            return await self.request("POST", path, query=query, body=body)
        except KubeError as exc:
            if exist_ok and exc.status == 409:
                return {}
            raise

    async def apply(self, path: str, body: JSON) -> JSON:
        """Server-side apply of the whole object (create or update)."""
        return await self.request(
            "PATCH",
            path,
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=body,
            content_type="application/apply-patch+yaml",
        )

    async def merge_patch(self, path: str, body: JSON) -> JSON:
        return await self.request(
            "PATCH", path, query={"fieldManager": FIELD_MANAGER}, body=body, content_type="application/merge-patch+json"
        )
