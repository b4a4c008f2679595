"""Real users in a real browser: headless Chromium (Debian's) driven by Playwright, one browser
context (its own cookies) per user, on the hub's real pages: the login form, KubeSpawner's profile
form, the spawn-pending page, the home page, JupyterLab."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from tests.helpers.waiting import wait_for

CHROMIUM = os.environ.get("GPU_QUEUE_E2E_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
PASSWORD = "gpu-queue-kind"  # tools/kind-hub/values.yaml: DummyAuthenticator.password

# The waiting room's page reports the tab title, the screen-reader announcement and each notification to the test.
WATCH_SCRIPT = """
(() => {
  const Real = window.Notification;
  if (Real) {
    const Watched = function (title, options) {
      window.gpuQueueSaw("notification", title);
      return new Real(title, options);
    };
    Watched.prototype = Real.prototype;
    Object.defineProperty(Watched, "permission", { get: () => Real.permission });
    Watched.requestPermission = (...args) => Real.requestPermission(...args);
    window.Notification = Watched;
  }
  new MutationObserver(() => {
    window.gpuQueueSaw("title", document.title);
    const said = document.getElementById("gpu-queue-announce");
    if (said && said.textContent) window.gpuQueueSaw("announce", said.textContent);
  }).observe(document, { subtree: true, childList: true, characterData: true });
})();
"""


@asynccontextmanager
async def chromium(secure_origins: Sequence[str] = ()) -> AsyncIterator[Browser]:
    """Headless Chromium; Playwright gives every launch a fresh, temporary user-data-dir.
    ``secure_origins``: plain-HTTP origins treated as secure (notifications need a secure origin;
    127.0.0.1 is one already, a kind node's address is not)."""
    flags = list(CHROMIUM_FLAGS)
    if secure_origins:
        flags.append("--unsafely-treat-insecure-origin-as-secure=" + ",".join(secure_origins))
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class User:
    """One person at the hub: a browser context of their own, and its page."""

    name: str
    hub: str
    context: BrowserContext
    page: Page
    shots: Path

    async def shot(self, step: str) -> Path:
        path = self.shots / f"{step}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    async def login(self) -> None:
        await self.page.goto(f"{self.hub}/hub/login")
        await self.page.fill("#username_input", self.name)
        await self.page.fill("#password_input", PASSWORD)
        await self.page.click("#login_submit")
        await self.page.wait_for_url(re.compile(r".*/(hub|user)/.*"))
        await self.page.wait_for_load_state()

    async def open_options(self) -> None:
        """The options page (KubeSpawner's profile form)."""
        await self.page.goto(f"{self.hub}/hub/spawn/{self.name}")
        await self.page.wait_for_selector("#kubespawner-profiles-list")

    async def start(self, profile: str) -> None:
        """Pick ``profile`` on the options page and click Start."""
        await self.page.check(f"#profile-item-{profile}")
        await self.page.click("form button[type=submit]")

    async def wait_for_lab(self, within: float) -> float:
        """Until this user's page is JupyterLab with its launcher or, for a server started again
        (JupyterLab restores the last workspace from the user's volume), a notebook showing;
        seconds waited."""
        started = time.monotonic()
        await self.page.wait_for_url(re.compile(rf".*/user/{self.name}/lab.*"), timeout=within * 1000)
        left = max(1.0, within - (time.monotonic() - started))
        await self.page.wait_for_selector(".jp-LauncherCard, .jp-NotebookPanel", timeout=left * 1000)
        return time.monotonic() - started

    async def run_cell(self, code: str, within: float = 120) -> str:
        """Open a new notebook from the launcher (first time), type ``code`` into the last cell,
        run it with Shift+Enter and return its output's text."""
        page = self.page
        if not await page.locator(".jp-NotebookPanel:visible").count():
            await page.click('.jp-LauncherCard[data-category="Notebook"]')
            await page.wait_for_selector(".jp-NotebookPanel .jp-Cell .cm-content", timeout=within * 1000)
        # Keys typed while the kernel still starts can be lost: wait for the status bar's "Idle".
        await page.locator("text=/Python 3 \\(ipykernel\\) \\| Idle/").first.wait_for(timeout=within * 1000)
        outputs = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output")
        before = await outputs.count()
        editor = page.locator(".jp-NotebookPanel:visible .jp-Cell .cm-content").last
        await editor.click()
        await page.keyboard.type(code)
        typed = (await editor.inner_text()).strip()
        assert typed == code, f"the cell holds {typed!r}, not {code!r}"
        await page.keyboard.press("Shift+Enter")
        await outputs.nth(before).wait_for(timeout=within * 1000)
        return (await outputs.nth(before).inner_text()).strip()

    async def text(self, selector: str) -> str:
        return (await self.page.inner_text(selector)).strip()

    async def shows(self, selector: str, words: str, within: float = 60) -> str:
        """The text of ``selector`` once it holds ``words`` (the page updates it live)."""

        async def found() -> str | None:
            value = await self.text(selector)
            return value if words in value else None

        return await wait_for(found, within, f"{self.name}'s {selector!r} to say {words!r}", interval=0.2)

    async def progress(self) -> tuple[str, str]:
        """The spawn-pending page's message and the progress bar's value."""
        message = await self.page.inner_text("#progress-message")
        value = await self.page.get_attribute("#progress-bar", "aria-valuenow")
        return message, value or ""

    async def api(self, method: str, path: str, data: Any = None) -> Any:
        """The hub's REST API with this user's login cookie (and its XSRF token, as the hub's own
        pages send it)."""
        cookies = {c["name"]: c["value"] for c in await self.context.cookies()}
        headers = {"X-XSRFToken": cookies.get("_xsrf", "")}
        response = await self.context.request.fetch(
            f"{self.hub}/hub/api{path}", method=method, headers=headers, data=data
        )
        text = await response.text()
        if not response.ok:
            raise AssertionError(f"{method} {path}: {response.status} {text}")
        return json.loads(text) if text.strip() else None


async def new_user(browser: Browser, name: str, hub: str, shots: Path) -> User:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    return User(name=name, hub=hub, context=context, page=page, shots=shots)


async def watch_the_waiting_room(user: User) -> list[tuple[str, str]]:
    """Notifications allowed (as if the user had clicked "Allow"), and from now on every tab title,
    screen-reader announcement and notification of the user's pages recorded as (kind, value)."""
    saw: list[tuple[str, str]] = []
    await user.context.grant_permissions(["notifications"], origin=user.hub)
    await user.context.expose_binding("gpuQueueSaw", lambda _source, kind, value: saw.append((kind, value)))
    await user.context.add_init_script(WATCH_SCRIPT)
    return saw


async def without_javascript(browser: Browser, name: str, hub: str) -> Page:
    """A page of ``name`` logged in with JavaScript off (the login form needs none)."""
    context = await browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    await page.goto(f"{hub}/hub/login")
    await page.fill("#username_input", name)
    await page.fill("#password_input", PASSWORD)
    await page.click("#login_submit")
    await page.wait_for_load_state()
    return page
