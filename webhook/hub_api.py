"""The hub's REST API, for the one thing the service asks of it: stop a user's server.

The hold limit stops servers through the hub, not by deleting pods, so the hub knows the server
stopped (its home page, its culler and its database agree) and KubeSpawner deletes the pod as it
always does. The token (``policy.hubApiToken``) is never logged or put into an error.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

import aiohttp
from pydantic import SecretStr

TIMEOUT: Final = aiohttp.ClientTimeout(total=10.0)


class HubApiError(Exception):
    """The hub did not stop the server; the message is safe to log and to put on an Event."""


def server_path(user: str, server: str) -> str:
    """``/users/NAME/server`` for the default server, ``/users/NAME/servers/SERVER`` for a named one."""
    name = quote(user, safe="")
    return f"/users/{name}/servers/{quote(server, safe='')}" if server else f"/users/{name}/server"


class HubServers:
    """Stops servers with one session kept for the service's life (``aclose`` ends it)."""

    def __init__(self, api_url: str, token: SecretStr) -> None:
        self._api_url = api_url.rstrip("/")
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    async def stop(self, user: str, server: str) -> str:
        """Ask the hub to stop the server: ``stopped`` (204), ``stopping`` (202) or ``not
        running`` (the hub has no such running server: someone stopped it first)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        headers = {"Authorization": f"token {self._token.get_secret_value()}", "Accept": "application/json"}
        url = self._api_url + server_path(user, server)
        try:
            async with self._session.delete(url, headers=headers) as response:
                if response.status == 204:
                    return "stopped"
                if response.status == 202:
                    return "stopping"
                text = (await response.text())[:300]
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HubApiError(f"cannot reach the hub's API ({type(exc).__name__})") from exc
        gone = ("not running", "no such", "no server named")
        if response.status in (400, 404) and any(g in text.lower() for g in gone):
            return "not running"
        if response.status in (401, 403):
            raise HubApiError(
                f"the hub refused the token (HTTP {response.status}): give gpu-queue's hub service a role with "
                "the admin:servers scope"
            )
        raise HubApiError(f"the hub answered HTTP {response.status}: {text}")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
