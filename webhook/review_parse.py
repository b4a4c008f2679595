"""Reading an AdmissionReview request body: one validating pass on the fast path, and the words
for the 400 when the body is not one. Also the metrics label of an answer.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from webhook.review import AdmissionReview


class BadReview(Exception):
    """The body is not an AdmissionReview v1 request: HTTP 400, never a 5xx."""


def parse_review(body: bytes) -> AdmissionReview:
    """Decode and validate an AdmissionReview request body.

    The fast path validates the JSON in one pass (pydantic-core); only a body it refuses takes
    the slow path, which finds the words for the 400.
    """
    try:
        review = AdmissionReview.model_validate_json(body)
    except (ValidationError, ValueError, RecursionError):
        return _parse_review_slowly(body)
    if review.request is None:
        raise BadReview("the AdmissionReview has no request")
    return review


def _parse_review_slowly(body: bytes) -> AdmissionReview:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadReview(f"the body is not JSON: {exc}") from None
    except RecursionError:
        raise BadReview("the body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadReview("the body is not a JSON object (expected an AdmissionReview)")
    if data.get("apiVersion") != "admission.k8s.io/v1" or data.get("kind") != "AdmissionReview":
        raise BadReview("expected apiVersion admission.k8s.io/v1 and kind AdmissionReview")
    try:
        review = AdmissionReview.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadReview(f"invalid AdmissionReview at {where}: {first['msg']}") from None
    except RecursionError:
        raise BadReview("the body is nested too deeply") from None
    if review.request is None:
        raise BadReview("the AdmissionReview has no request")
    return review


def outcome(response: AdmissionReview) -> str:
    """``allowed``, ``patched`` or ``denied``: the metrics label for an answer."""
    r = response.response
    if r is None or not r.allowed:
        return "denied"
    return "patched" if r.patch else "allowed"
