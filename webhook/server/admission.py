"""The admission endpoints, ``/mutate`` and ``/validate``: parse, decide, answer, count.

They are answered from the request and the configuration alone (the configuration is on the app
under ``CONFIG``), so admission works while Redis or the Kubernetes API are down (invariant I4).
One write is added for a pod of a pool when ``notes`` are given: before its requested-at is
stamped, ``/mutate`` notes that it is admitting it, so the leader can grant a head at once without
overtaking a pod stamped a moment earlier and not stored yet (I2; ``webhook.grants.unseen_ahead``).
A note that cannot be written (Redis down or slow) costs nothing but time order: the pod is
stamped ``orderSettleSeconds`` later, so no early grant can overtake it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from aiohttp import web

from webhook import metrics
from webhook.admission import BadReview, mutate, outcome, parse_review, queued_create, validate
from webhook.config import Config
from webhook.models import Admitted
from webhook.review import AdmissionReview, answer
from webhook.server.errors import Handler, error_response

log = logging.getLogger("gpu_queue.server")

CONFIG: web.AppKey[Config] = web.AppKey("config", Config)

Decide = Callable[[AdmissionReview, Config], Awaitable[AdmissionReview]]


class AdmissionNotes(Protocol):
    """Where ``/mutate`` notes the pool pods it admits (the Redis store, behind a breaker)."""

    async def note(self, pool: str, admitted: Admitted) -> bool:
        """True once stored; False, quickly, when it cannot be."""


def _pod_name(review: AdmissionReview) -> str:
    """The pod's name for the logs; a CREATE may only carry ``generateName`` so far."""
    req = review.request
    if req is None:
        return ""
    if req.name:
        return req.name
    meta = (req.object or {}).get("metadata")
    if isinstance(meta, dict):
        return str(meta.get("name") or meta.get("generateName") or "")
    return ""


def _admission_handler(name: str, decide: Decide) -> Handler:
    """One admission endpoint: parse, decide, answer; count and time every outcome.

    A bad body is a 400 (413 if too large) with a JSON error. An unexpected exception in ``decide``
    is answered with a *denial* (code 500) for that request's uid: the same as the API server's
    ``failurePolicy: Fail``, but with a message the user sees instead of "failed calling webhook".
    """
    latency = {o: metrics.ADMISSION_LATENCY.labels(name, o) for o in ("allowed", "patched", "denied")}
    counted = {o: metrics.ADMISSION_REQUESTS.labels(name, o) for o in ("allowed", "patched", "denied")}

    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        result = "error"
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                result = "bad_request"
                limit = request.app[CONFIG].server.max_body_bytes
                return error_response(413, f"the body is larger than server.maxBodyBytes ({limit} bytes)")
            try:
                review = parse_review(body)
            except BadReview as exc:
                result = "bad_request"
                log.info("bad AdmissionReview", extra={"ctx": {"handler": name, "error": str(exc)}})
                return error_response(400, str(exc))
            except Exception:
                # A bug in parsing: no uid to answer for, so a 400 rather than a 5xx that the API
                # server would retry; logged so it gets fixed.
                log.exception("AdmissionReview parsing failed", extra={"ctx": {"handler": name}})
                return error_response(400, "the AdmissionReview could not be read (internal error, logged)")
            assert review.request is not None
            req = review.request
            try:
                response = await decide(review, request.app[CONFIG])
                payload = response.to_json()
                verdict = outcome(response)
            except Exception:
                log.exception(
                    "admission failed", extra={"ctx": {"handler": name, "uid": req.uid, "pod": _pod_name(review)}}
                )
                failed = answer(
                    req,
                    allowed=False,
                    code=500,
                    reason="InternalError",
                    message=(
                        f"gpu-queue: internal error in /{name} (request uid {req.uid}); "
                        "try again, and ask your admin to check the gpu-queue logs"
                    ),
                )
                return web.Response(body=failed.to_json(), content_type="application/json")
            result = verdict
            # Denials are logged; admitted pods only at debug: a JSON log line per request costs
            # about as much as the admission itself (the API server's audit log has them all).
            if result == "denied" or log.isEnabledFor(logging.DEBUG):
                status = response.response.status if response.response is not None else None
                log.log(
                    logging.INFO if result == "denied" else logging.DEBUG,
                    f"{name}: {result}",
                    extra={
                        "ctx": {
                            "handler": name,
                            "outcome": result,
                            "uid": req.uid,
                            "namespace": req.namespace,
                            "pod": _pod_name(review),
                            "operation": req.operation,
                            "user": req.user_info.username,
                            "message": status.message if status is not None else "",
                        }
                    },
                )
            return web.Response(body=payload, content_type="application/json")
        finally:
            elapsed = time.perf_counter() - started
            if result in latency:
                latency[result].observe(elapsed)
                counted[result].inc()
            else:
                metrics.ADMISSION_LATENCY.labels(name, result).observe(elapsed)
                metrics.ADMISSION_REQUESTS.labels(name, result).inc()

    return handle


def add_admission_routes(
    app: web.Application,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    notes: AdmissionNotes | None = None,
) -> None:
    """``POST /mutate`` and ``POST /validate``; the app must hold ``CONFIG``. ``clock`` is what
    arrival is stamped on (the API server's clock as this replica estimates it)."""

    async def stamped_mutate(review: AdmissionReview, config: Config) -> AdmissionReview:
        queued = queued_create(review, config, clock()) if notes is not None else None
        if queued is None or notes is None:
            return mutate(review, config, clock())
        pool, note = queued
        if await notes.note(pool, note):
            return mutate(review, config, clock())  # stamped after the note is stored
        late = clock() + timedelta(seconds=config.controller.order_settle_seconds)
        metrics.ADMISSION_NOTES_MISSED.inc()
        return mutate(review, config, late, trust_stamp=False)

    async def validate_review(review: AdmissionReview, config: Config) -> AdmissionReview:
        return validate(review, config)

    app.router.add_post("/mutate", _admission_handler("mutate", stamped_mutate))
    app.router.add_post("/validate", _admission_handler("validate", validate_review))
