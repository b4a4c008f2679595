"""How the dashboard reaches the hub and who may see what: one pydantic model, no globals.

The dashboard is a JupyterHub service (z2jh ``hub.services.gpu-queue`` with a ``url``): the hub's
proxy forwards ``/services/gpu-queue/`` to it with the prefix kept, and the hub's OAuth says who
the browser is. The service image has no jupyterhub library, so everything the OAuth flow needs
is spelled out here.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

NamesFor = Literal["admins", "everyone", "nobody"]


class DashboardSettings(BaseModel):
    """Where the hub is, what the service is registered as, and the privacy policy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hub_api_url: str = Field(description="The hub's API as the service reaches it, e.g. http://hub:8081/hub/api")
    hub_public_url: str = Field(
        "",
        description=(
            "The hub's base as the browser reaches it, without /hub: '' for the same origin, "
            "or e.g. https://hub.example.org"
        ),
    )
    service_prefix: str = Field("/services/gpu-queue/", description="JUPYTERHUB_SERVICE_PREFIX; the proxy keeps it")
    client_id: str = Field("", description="The OAuth client id; default service-<name of the prefix>")
    oauth_redirect_uri: str = Field(
        "", description="As registered with the hub; default <hub public origin><prefix>oauth_callback"
    )
    api_token: SecretStr = Field(description="The service's api_token: the OAuth client secret")
    cookie_secret: SecretStr = Field(
        SecretStr(""), description="Signs the session cookie; default derived from the api token"
    )
    names_for: NamesFor = Field("admins", description="Who sees user names: hub admins, everyone or nobody")
    allow_non_admins: bool = Field(True, description="Hub users who are not admins see the view without names")
    admin_groups: tuple[str, ...] = Field((), description="Members of these hub groups count as admins here")
    session_seconds: float = Field(3600.0, gt=0, description="A login lasts this long, then the hub is asked again")
    refresh_seconds: int = Field(30, ge=0, description="The pages reload themselves this often; 0 = never")
    default_days: int = Field(7, ge=1)
    max_days: int = Field(30, ge=1, description="The history's retention: a longer period shows nothing more")

    @field_validator("hub_api_url", "hub_public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("service_prefix")
    @classmethod
    def _slashes(cls, value: str) -> str:
        """Routes, the cookie path and the redirect URI all assume ``/.../``; the app is mounted
        at the prefix, so it cannot be the root (a hub service's never is)."""
        if not value.strip("/"):
            raise ValueError("service_prefix must name a path, e.g. /services/gpu-queue/")
        return "/" + value.strip("/") + "/"

    @model_validator(mode="after")
    def _usable(self) -> DashboardSettings:
        if not self.api_token.get_secret_value():
            raise ValueError("api_token is required: it is the OAuth client secret and the default cookie secret")
        if self.default_days > self.max_days:
            raise ValueError(f"default_days ({self.default_days}) exceeds max_days ({self.max_days})")
        return self

    @property
    def mount_path(self) -> str:
        """Where the app is mounted (``add_subapp``): the prefix without its trailing slash."""
        return self.service_prefix.rstrip("/")

    @property
    def oauth_client_id(self) -> str:
        """JupyterHub's default for a service is ``service-<name>``."""
        if self.client_id:
            return self.client_id
        name = self.service_prefix.rstrip("/").rpartition("/")[2]
        return f"service-{name}"

    @property
    def redirect_uri(self) -> str:
        """JupyterHub's default: the hub's public host (none: relative) + prefix + oauth_callback."""
        if self.oauth_redirect_uri:
            return self.oauth_redirect_uri
        parts = urlsplit(self.hub_public_url)
        origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
        return f"{origin}{self.service_prefix}oauth_callback"

    @property
    def authorize_url(self) -> str:
        return f"{self.hub_public_url}/hub/api/oauth2/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.hub_api_url}/oauth2/token"

    @property
    def user_url(self) -> str:
        return f"{self.hub_api_url}/user"

    def signing_key(self, purpose: str) -> bytes:
        """One key per purpose (session, state), so a value signed for one is no good for another."""
        secret = self.cookie_secret.get_secret_value() or self.api_token.get_secret_value()
        return hmac.new(secret.encode(), f"gpu-queue dashboard {purpose} v1".encode(), hashlib.sha256).digest()

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: object) -> DashboardSettings:
        """The settings a hub-managed service finds in JupyterHub's environment variables."""
        values: dict[str, object] = {}
        for field, var in (
            ("hub_api_url", "JUPYTERHUB_API_URL"),
            ("api_token", "JUPYTERHUB_API_TOKEN"),
            ("client_id", "JUPYTERHUB_CLIENT_ID"),
            ("service_prefix", "JUPYTERHUB_SERVICE_PREFIX"),
            ("oauth_redirect_uri", "JUPYTERHUB_OAUTH_CALLBACK_URL"),
        ):
            if env.get(var):
                values[field] = env[var]
        values.update(overrides)
        return cls.model_validate(values)
