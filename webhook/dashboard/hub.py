"""The dashboard's calls to the hub: the OAuth login (code -> access token -> who that is) and
the holders' last activity (``HubActivity``).

Plain aiohttp, because the service image has no jupyterhub library. Neither the code, the
client secret nor the access token is ever logged or put into an error message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote, urlencode

import aiohttp

from webhook.dashboard.settings import DashboardSettings
from webhook.pods import parse_time

HUB_TIMEOUT: Final = aiohttp.ClientTimeout(total=10.0)
ACTIVITY_CONCURRENCY: Final = 8

log = logging.getLogger("webhook.dashboard")


class HubError(Exception):
    """The hub did not complete the login; the message is safe to show and log."""


@dataclass(frozen=True)
class HubUser:
    name: str
    admin: bool
    groups: tuple[str, ...]

    def is_admin(self, admin_groups: Sequence[str]) -> bool:
        return self.admin or any(g in admin_groups for g in self.groups)


def authorize_url(settings: DashboardSettings, state: str) -> str:
    """Where an unauthenticated browser is sent: the hub asks (or knows) who it is and comes back."""
    query = urlencode(
        {
            "client_id": settings.oauth_client_id,
            "redirect_uri": settings.redirect_uri,
            "response_type": "code",
            "state": state,
        }
    )
    return f"{settings.authorize_url}?{query}"


async def _json(response: aiohttp.ClientResponse, what: str) -> dict[str, Any]:
    if response.status != 200:
        raise HubError(f"the hub answered {what} with HTTP {response.status}")
    try:
        body = await response.json(content_type=None)
    except ValueError as exc:
        raise HubError(f"the hub's answer to {what} is not JSON") from exc
    if not isinstance(body, dict):
        raise HubError(f"the hub's answer to {what} is not an object")
    return body


async def user_for_code(settings: DashboardSettings, code: str) -> HubUser:
    """Trade the callback's code for a token and ask the hub whose it is."""
    form = {
        "client_id": settings.oauth_client_id,
        "client_secret": settings.api_token.get_secret_value(),
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": settings.redirect_uri,
    }
    try:
        async with aiohttp.ClientSession(timeout=HUB_TIMEOUT) as http:
            async with http.post(settings.token_url, data=form, headers={"Accept": "application/json"}) as response:
                token = (await _json(response, "the token request")).get("access_token")
            if not isinstance(token, str) or not token:
                raise HubError("the hub's token answer has no access_token")
            headers = {"Authorization": f"token {token}", "Accept": "application/json"}
            async with http.get(settings.user_url, headers=headers) as response:
                user = await _json(response, "the user request")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise HubError(f"cannot reach the hub's API ({type(exc).__name__})") from exc
    name, groups = user.get("name"), user.get("groups") or []
    if not isinstance(name, str) or not name:
        raise HubError("the hub's user answer has no name")
    return HubUser(
        name=name,
        admin=user.get("admin") is True,
        groups=tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else (),
    )


def servers_activity(user: Mapping[str, Any]) -> dict[str, datetime | None]:
    """Each server's ``last_activity`` from the hub's user model (``GET /users/{name}``, which lists
    ``servers`` with the ``read:servers`` scope): what the idle culler reads too."""
    servers = user.get("servers")
    if not isinstance(servers, Mapping):
        return {}
    return {
        str(name): parse_time(server.get("last_activity"))
        for name, server in servers.items()
        if isinstance(server, Mapping)
    }


class HubActivity:
    """The holders' last activity as the hub reports it, asked with the service's token.

    One request per user, at most ``ACTIVITY_CONCURRENCY`` at a time, each answer (or failure)
    kept ``ttl_seconds``: a page that reloads every 30 s in several tabs asks the hub once. A user
    the hub does not know, or a token without ``read:servers``, is "not reported", never an error
    on the page; the first failure of each kind is logged, without the token.
    """

    def __init__(
        self, settings: DashboardSettings, *, ttl_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._ttl = ttl_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, dict[str, datetime | None]]] = {}
        self._logged: set[str] = set()
        self._limit = asyncio.Semaphore(ACTIVITY_CONCURRENCY)

    async def last_activity(self, users: Iterable[str]) -> dict[tuple[str, str], datetime]:
        """(user, server name) -> the hub's last activity, for those the hub reports."""
        now = self._clock()
        wanted = sorted({u for u in users if u})
        stale = [u for u in wanted if u not in self._cache or now - self._cache[u][0] >= self._ttl]
        if stale:
            async with aiohttp.ClientSession(timeout=HUB_TIMEOUT) as http:
                answers = await asyncio.gather(*(self._ask(http, u) for u in stale))
            for user, answer in zip(stale, answers, strict=True):
                self._cache[user] = (now, answer)
            self._cache = {u: v for u, v in self._cache.items() if now - v[0] < self._ttl or u in wanted}
        return {
            (user, server): when for user in wanted for server, when in self._cache[user][1].items() if when is not None
        }

    async def _ask(self, http: aiohttp.ClientSession, user: str) -> dict[str, datetime | None]:
        headers = {
            "Authorization": f"token {self._settings.api_token.get_secret_value()}",
            "Accept": "application/json",
        }
        url = f"{self._settings.hub_api_url}/users/{quote(user, safe='')}"
        try:
            async with self._limit, http.get(url, headers=headers) as response:
                if response.status == 404:
                    return {}  # not a hub user (or hidden from this token): nothing to report
                return servers_activity(await _json(response, "the activity request"))
        except HubError as exc:
            self._log_once(str(exc))
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._log_once(f"cannot reach the hub's API ({type(exc).__name__})")
        return {}

    def _log_once(self, reason: str) -> None:
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("dashboard: the hub's activity is not available", extra={"ctx": {"reason": reason}})
