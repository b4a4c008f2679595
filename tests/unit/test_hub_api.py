"""``webhook.hub_api.HubServers`` against a fake hub answering as JupyterHub's ``DELETE
/users/{name}/server`` does: stopped, stopping, already gone, refused; the token never shows."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from webhook.hub_api import HubApiError, HubServers, server_path

TOKEN = "hub-token-0123456789abcdef"


def fake_hub(calls: list[str], status: int, body: dict[str, Any] | None = None) -> web.Application:
    async def stop(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        if request.headers.get("Authorization") != f"token {TOKEN}":
            return web.json_response({"status": 403, "message": "Action is not authorized"}, status=403)
        if status == 204:
            return web.Response(status=204)
        return web.json_response(body or {}, status=status)

    app = web.Application()
    app.router.add_delete("/hub/api/users/{name}/server", stop)
    app.router.add_delete("/hub/api/users/{name}/servers/{server}", stop)
    return app


async def servers(aiohttp_server: Any, calls: list[str], status: int, body: dict[str, Any] | None = None) -> HubServers:
    server: TestServer = await aiohttp_server(fake_hub(calls, status, body))
    return HubServers(str(server.make_url("/hub/api")), SecretStr(TOKEN))


def test_default_and_named_servers_have_the_hubs_paths() -> None:
    assert server_path("ann", "") == "/users/ann/server"
    assert server_path("b@x.org", "gpu run") == "/users/b%40x.org/servers/gpu%20run"


@pytest.mark.parametrize(("status", "outcome"), [(204, "stopped"), (202, "stopping")])
async def test_the_hub_stopping_the_server_is_an_outcome(aiohttp_server: Any, status: int, outcome: str) -> None:
    calls: list[str] = []
    hub = await servers(aiohttp_server, calls, status)
    try:
        assert await hub.stop("ann", "") == outcome
        assert await hub.stop("ann", "ml") == outcome
    finally:
        await hub.aclose()
    assert calls == ["/hub/api/users/ann/server", "/hub/api/users/ann/servers/ml"]


async def test_a_server_that_is_not_running_any_more_is_no_error(aiohttp_server: Any) -> None:
    hub = await servers(aiohttp_server, [], 400, {"status": 400, "message": "ann's server is not running"})
    try:
        assert await hub.stop("ann", "") == "not running"
    finally:
        await hub.aclose()


async def test_a_refused_token_says_which_scope_and_never_shows_the_token(aiohttp_server: Any) -> None:
    server: TestServer = await aiohttp_server(fake_hub([], 204))
    hub = HubServers(str(server.make_url("/hub/api")), SecretStr("wrong-" + TOKEN))
    try:
        with pytest.raises(HubApiError, match="admin:servers") as caught:
            await hub.stop("ann", "")
    finally:
        await hub.aclose()
    assert TOKEN not in str(caught.value)


async def test_an_unreachable_hub_is_an_error_naming_no_url_or_token() -> None:
    hub = HubServers("http://127.0.0.1:9/hub/api", SecretStr(TOKEN))
    try:
        with pytest.raises(HubApiError, match="cannot reach the hub's API") as caught:
            await hub.stop("ann", "")
    finally:
        await hub.aclose()
    assert TOKEN not in str(caught.value)


async def test_any_other_answer_is_an_error_with_the_status(aiohttp_server: Any) -> None:
    hub = await servers(aiohttp_server, [], 500, {"message": "boom"})
    try:
        with pytest.raises(HubApiError, match="HTTP 500"):
            await hub.stop("ann", "")
    finally:
        await hub.aclose()
