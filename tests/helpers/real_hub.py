"""A real JupyterHub process around ``QueueAwareKubeSpawner``, for the cluster tier.

A Spawner object in the test process cannot show what the hub itself does with a refusal: its
handlers, its spawn bookkeeping and its ``consecutive_failure_limit``, which ends the hub. So this
runs ``python -m jupyterhub`` (the JupyterHub of the venv running pytest) against the dev cluster.
No configurable-http-proxy: the config's proxy keeps routes in memory, and the test talks to the
hub's own port.

    async with running_hub(cluster, tmp_path) as hub:
        async with hub.api() as api:
            await api.post(hub.url("/hub/api/users/alice"))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from gpu_queue_dev.cluster import DevCluster
from gpu_queue_dev.cluster.procs import free_ports, tail
from gpu_queue_dev.spawnerpods import PROFILE_LIST
from tests.helpers.waiting import wait_for

#: The role of the test's service: create users, start and stop their servers.
DRIVER_SCOPES = ("admin:users", "admin:servers", "admin:groups", "list:users", "read:users")

# The settings come from settings.json next to this file, so the file itself never changes.
HUB_CONFIG = '''\
"""JupyterHub config of the cluster tier's real hub (written by tests/helpers/real_hub.py)."""
import json
from pathlib import Path

from jupyterhub.proxy import Proxy

settings = json.loads((Path(__file__).parent / "settings.json").read_text())


class MemoryProxy(Proxy):
    """Routes in a dict: no proxy process; clients talk to the hub's port."""

    should_start = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.routes = {}

    async def add_route(self, routespec, target, data):
        self.routes[routespec] = {"routespec": routespec, "target": target, "data": data}

    async def delete_route(self, routespec):
        self.routes.pop(routespec, None)

    async def get_all_routes(self):
        return dict(self.routes)


c = get_config()  # noqa: F821 - defined by the config loader
c.JupyterHub.proxy_class = MemoryProxy
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = settings["hub_port"]
c.JupyterHub.bind_url = settings["public_url"]
c.JupyterHub.db_url = "sqlite:///" + settings["db_file"]
c.JupyterHub.cookie_secret_file = settings["cookie_secret_file"]
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.allow_named_servers = True
c.JupyterHub.cleanup_servers = False  # as zero-to-jupyterhub: pods outlive a hub restart
c.JupyterHub.services = [{"name": "test-driver", "api_token": settings["driver_token"]}, *settings["services"]]
c.Authenticator.admin_users = set(settings["admin_users"])
c.JupyterHub.load_roles = [
    {"name": "test-driver", "scopes": settings["driver_scopes"], "services": ["test-driver"]},
    {"name": "user", "scopes": ["self", *settings["user_scopes"]]},
    *settings["roles"],
]
c.KubeSpawner.http_timeout = settings["http_timeout"]
c.JupyterHub.spawner_class = "webhook.hub.QueueAwareKubeSpawner"
c.Spawner.consecutive_failure_limit = 5  # zero-to-jupyterhub's default
c.KubeSpawner.namespace = settings["namespace"]
c.KubeSpawner.profile_list = settings["profile_list"]
c.QueueAwareKubeSpawner.queue_api_url = settings["queue_api_url"]
c.QueueAwareKubeSpawner.queue_api_token = settings["queue_api_token"]
c.QueueAwareKubeSpawner.queue_ca_file = settings["queue_ca_file"]
c.QueueAwareKubeSpawner.one_gpu_server_per_user = True
c.QueueAwareKubeSpawner.queue_fallback_profile = "cpu-only"  # the waiting room's other choice
c.QueueAwareKubeSpawner.queue_fallback_label = "CPU Only"
c.JupyterHub.template_paths = settings["template_paths"]
'''

_FAILURES_LOGGED = re.compile(
    r"(?P<n>\d+) consecutive spawns failed|Aborting due to (?P<abort>\d+) consecutive spawn failures"
)


@dataclass
class RealHub:
    """A running hub: its URL, the driver service's token, its process and its log."""

    base_url: str
    token: str = field(repr=False)  # kept out of assertion messages
    process: asyncio.subprocess.Process
    log_file: Path

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        """The end of the hub's log, for assertion messages."""
        return f"hub log ({self.log_file}), last {lines} lines:\n{tail(self.log_file, lines)}"

    def failure_count_logged(self) -> int | None:
        """The highest consecutive-failure count the hub logged; None if it logged none (JupyterHub
        only logs a count from 2 on)."""
        counts = [int(m.group("n") or m.group("abort")) for m in _FAILURES_LOGGED.finditer(self.log())]
        return max(counts) if counts else None

    @asynccontextmanager
    async def api(self) -> AsyncIterator[aiohttp.ClientSession]:
        """A client authenticated as the driver service (token auth: the hub skips XSRF checks)."""
        headers = {"Authorization": f"token {self.token}"}
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as session:
            yield session

    @asynccontextmanager
    async def browser(self, username: str) -> AsyncIterator[aiohttp.ClientSession]:
        """A client logged in as ``username`` with the dummy authenticator, as a browser is.

        The hub's pages (``/hub/spawn/...``) accept no API token, only the login cookie, and then
        check XSRF on every POST: the login form takes the ``_xsrf`` cookie's value as its token.
        """
        jar = aiohttp.CookieJar(unsafe=True)  # the hub is at an IP address, which the default jar refuses
        async with aiohttp.ClientSession(cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=60)) as session:
            async with session.get(self.url("/hub/login")) as page:
                assert page.status == 200, f"GET /hub/login: {page.status}\n{self.log_tail()}"
            form = {"username": username, "password": "any", "_xsrf": self.xsrf_token(session)}
            async with session.post(self.url("/hub/login"), data=form, allow_redirects=False) as login:
                assert login.status == 302, f"login as {username}: {login.status}\n{self.log_tail()}"
            yield session

    def xsrf_token(self, session: aiohttp.ClientSession) -> str:
        """The ``_xsrf`` form field the hub expects: the value of its ``_xsrf`` cookie, which it sets
        again on a page view once the login changed what the token is bound to."""
        cookie = session.cookie_jar.filter_cookies(URL(self.url("/hub/")))
        assert "_xsrf" in cookie, f"the hub set no _xsrf cookie\n{self.log_tail()}"
        return cookie["_xsrf"].value


def hub_settings(
    cluster: DevCluster,
    state_dir: Path,
    hub_port: int,
    public_port: int,
    token: str,
    template_paths: Sequence[Path] = (),
    services: Sequence[dict[str, Any]] = (),
    admin_users: Sequence[str] = (),
    user_scopes: Sequence[str] = (),
    roles: Sequence[dict[str, Any]] = (),
    http_timeout: float = 30.0,
) -> dict[str, Any]:
    """What the config file reads: the dev cluster's queue API and the docs' profileList."""
    return {
        "template_paths": [str(p) for p in template_paths],
        "services": list(services),
        "admin_users": list(admin_users),
        "user_scopes": list(user_scopes),
        "roles": list(roles),
        "http_timeout": http_timeout,
        "hub_port": hub_port,
        "public_url": f"http://127.0.0.1:{public_port}",
        "db_file": str(state_dir / "jupyterhub.sqlite"),
        "cookie_secret_file": str(state_dir / "jupyterhub_cookie_secret"),
        "driver_token": token,
        "driver_scopes": list(DRIVER_SCOPES),
        "namespace": cluster.hub_namespace,
        "profile_list": PROFILE_LIST,
        "queue_api_url": cluster.api_url(0),
        "queue_api_token": cluster.read_token,
        "queue_ca_file": str(cluster.ca_file),
    }


@asynccontextmanager
async def running_hub(
    cluster: DevCluster,
    state_dir: Path,
    *,
    start_within: float = 60.0,
    template_paths: Sequence[Path] = (),
    services: Sequence[dict[str, Any]] = (),
    admin_users: Sequence[str] = (),
    user_scopes: Sequence[str] = (),
    roles: Sequence[dict[str, Any]] = (),
    http_timeout: float = 30.0,
) -> AsyncIterator[RealHub]:
    """Start the hub in ``state_dir`` and wait until its API answers; always stop it afterwards
    (SIGTERM, then SIGKILL), keeping its log in ``state_dir/jupyterhub.log``. ``template_paths``:
    the hub's own page templates (none: the stock pages); ``services``: more JupyterHub services
    (``c.JupyterHub.services`` entries); ``admin_users``: the hub's admins; ``user_scopes``: more
    scopes of every user (the ``user`` role, after ``self``); ``roles``: more ``load_roles``
    entries; ``http_timeout``: how long the hub waits for a started server to answer (the dev
    cluster's pods never do: a longer one keeps a hub-started server alive that long)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    hub_port, public_port = free_ports(2)
    token = secrets.token_hex(32)
    (state_dir / "settings.json").write_text(
        json.dumps(
            hub_settings(
                cluster,
                state_dir,
                hub_port,
                public_port,
                token,
                template_paths,
                services,
                admin_users,
                user_scopes,
                roles,
                http_timeout,
            ),
            indent=2,
        )
    )
    config = state_dir / "jupyterhub_config.py"
    config.write_text(HUB_CONFIG)
    log_file = state_dir / "jupyterhub.log"
    # KubeSpawner's client reads KUBECONFIG once at import: set it for the whole process.
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "PYTHONUNBUFFERED": "1"}
    with log_file.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jupyterhub",
            "-f",
            str(config),
            cwd=state_dir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    hub = RealHub(base_url=f"http://127.0.0.1:{hub_port}", token=token, process=process, log_file=log_file)
    try:
        await _wait_until_up(hub, start_within)
        yield hub
    finally:
        await _stop(process)


async def _wait_until_up(hub: RealHub, within: float) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:

        async def up() -> str | None:
            if not hub.running:
                return "exited"
            async with session.get(hub.url("/hub/api/")) as response:
                return "up" if response.status == 200 else None

        try:
            state = await wait_for(up, within=within, what="the hub's API (GET /hub/api/)", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{hub.log_tail()}") from None
    assert state == "up", f"the hub exited with {hub.process.returncode} while starting\n{hub.log_tail()}"


async def _stop(process: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
