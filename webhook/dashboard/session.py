"""Signed cookies: the login session (who, admin or not, until when) and the OAuth ``state``.

A cookie is ``<base64url JSON>.<base64url HMAC-SHA256>``, with one key per purpose
(``DashboardSettings.signing_key``). Anything that does not verify, has expired or does not parse
is no cookie at all: the visitor is asked to log in again, never shown an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

SESSION_COOKIE: Final = "gpu-queue-session"
STATE_COOKIE: Final = "gpu-queue-oauth-state"
STATE_SECONDS: Final = 600.0  # a login round trip through the hub takes seconds; 10 min is generous


@dataclass(frozen=True)
class Viewer:
    """The hub user looking at the dashboard."""

    name: str
    admin: bool
    expires: float  # epoch seconds


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: bytes, payload: dict[str, Any]) -> str:
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_b64(hmac.new(key, body.encode(), hashlib.sha256).digest())}"


def unsign(key: bytes, value: str | None) -> dict[str, Any] | None:
    """The payload of a value this key signed, or None (unsigned, tampered, garbled)."""
    if not value or value.count(".") != 1:
        return None
    body, _, mac = value.partition(".")
    expected = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        return None
    try:
        payload = json.loads(_unb64(body))
    except (binascii.Error, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def session_value(key: bytes, viewer: Viewer) -> str:
    return sign(key, {"n": viewer.name, "a": viewer.admin, "e": viewer.expires})


def viewer_of(key: bytes, value: str | None, now: datetime) -> Viewer | None:
    """The session's viewer while it lasts; None for no, a bad or an expired session."""
    payload = unsign(key, value)
    if payload is None:
        return None
    name, admin, expires = payload.get("n"), payload.get("a"), payload.get("e")
    if not isinstance(name, str) or not name or not isinstance(admin, bool):
        return None
    if not isinstance(expires, int | float) or isinstance(expires, bool) or expires <= now.timestamp():
        return None
    return Viewer(name=name, admin=admin, expires=float(expires))


def new_state() -> str:
    return secrets.token_urlsafe(24)


def state_value(key: bytes, state: str, next_path: str, now: datetime) -> str:
    """The state cookie: the state sent to the hub and where to go after the login."""
    return sign(key, {"s": state, "r": next_path, "e": now.timestamp() + STATE_SECONDS})


def check_state(key: bytes, value: str | None, state: str, now: datetime) -> str | None:
    """Where to go after the login if ``state`` is the one this browser sent to the hub, else None
    (CSRF: a callback this browser did not start)."""
    payload = unsign(key, value)
    if payload is None:
        return None
    sent, next_path, expires = payload.get("s"), payload.get("r"), payload.get("e")
    if not isinstance(sent, str) or not isinstance(next_path, str) or not isinstance(expires, int | float):
        return None
    if expires <= now.timestamp() or not hmac.compare_digest(sent.encode(), state.encode()):
        return None
    return next_path
