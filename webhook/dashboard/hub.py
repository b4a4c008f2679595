"""The two calls of the hub's OAuth the dashboard makes: code -> access token -> who that is.

Plain aiohttp, because the service image has no jupyterhub library. Neither the code, the
client secret nor the access token is ever logged or put into an error message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp

from webhook.dashboard.settings import DashboardSettings

HUB_TIMEOUT: Final = aiohttp.ClientTimeout(total=10.0)


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
