"""The HTTPS server: admission (``/mutate``, ``/validate``), health, metrics, and the queue API.

Admission is answered from the request and the configuration alone, so the server starts, is
ready and admits pods while Redis or the Kubernetes API are down (invariant I4). Everything that
needs them (store, controller, API) is plugged in as ``cleanup_ctx`` components that must not
block startup on an outage.

The serving certificate is hot reloaded: the files (a Secret volume) are polled and a changed pair
is loaded into the same ``SSLContext``, so new handshakes get the new certificate with no restart.

One process per replica: it admits about 2,000 pods a second on two cores, and Deployment
replicas scale admission further. The modules, by job: ``tls`` (context, hot reload), ``admission`` (the two
endpoints), ``health`` (health, readiness, metrics), ``errors`` (JSON error bodies), ``app`` (the
app factory and ``serve``). This module re-exports what the rest of the project uses.
"""

from __future__ import annotations

from webhook.server.admission import CONFIG
from webhook.server.app import build_components, create_app, run_serve, serve
from webhook.server.errors import Handler, json_errors
from webhook.server.health import READINESS, Readiness, create_metrics_app, healthz, metrics_handler
from webhook.server.parts import Component, Parts
from webhook.server.tls import CertReloader, TlsError, make_ssl_context

__all__ = [
    "CONFIG",
    "READINESS",
    "CertReloader",
    "Component",
    "Handler",
    "Parts",
    "Readiness",
    "TlsError",
    "build_components",
    "create_app",
    "create_metrics_app",
    "healthz",
    "json_errors",
    "make_ssl_context",
    "metrics_handler",
    "run_serve",
    "serve",
]
