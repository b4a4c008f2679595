"""What the service plugs into the server: a module of its own, so the server's app factory and
the wiring (``webhook.service``) both name it without importing each other."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from aiohttp import web

from webhook.server.admission import AdmissionNotes

Component = Callable[[web.Application], AsyncIterator[None]]


@dataclass(frozen=True)
class Parts:
    """What ``build_components`` wires: cleanup_ctx components, the API sub-app, admission notes
    and the dashboard (served on a port of its own)."""

    components: list[Component] = field(default_factory=list)
    api_app: web.Application | None = None
    notes: AdmissionNotes | None = None
    dashboard_app: web.Application | None = None
