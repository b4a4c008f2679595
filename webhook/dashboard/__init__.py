"""The admin dashboard, served as a JupyterHub service and logged in through the hub's OAuth.

``settings`` (where the hub is, the privacy policy), ``source`` (what the pages show, behind a
Protocol), ``session`` (signed cookies), ``hub`` (the OAuth calls), ``render`` (pure HTML) and
``app`` (handlers and the factory). Imports point down that list, never up.
"""

from webhook.dashboard.app import SECURITY_HEADERS, create_dashboard_app, create_dashboard_site
from webhook.dashboard.render import PageContext, PoolView, render_overview, render_pool_page
from webhook.dashboard.session import Viewer
from webhook.dashboard.settings import DashboardSettings, NamesFor
from webhook.dashboard.source import (
    DashboardSource,
    HistoryReader,
    HistorySource,
    HolderRow,
    PoolSnapshot,
    QueuedRow,
    snapshot_from,
    with_activity,
)

__all__ = [
    "SECURITY_HEADERS",
    "DashboardSettings",
    "DashboardSource",
    "HistoryReader",
    "HistorySource",
    "HolderRow",
    "NamesFor",
    "PageContext",
    "PoolSnapshot",
    "PoolView",
    "QueuedRow",
    "Viewer",
    "create_dashboard_app",
    "create_dashboard_site",
    "render_overview",
    "render_pool_page",
    "snapshot_from",
    "with_activity",
]
