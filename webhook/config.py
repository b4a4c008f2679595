"""The service configuration: one YAML file, validated by pydantic, with ``GPU_QUEUE_*`` overrides.

The file is mounted from a ConfigMap. An environment variable ``GPU_QUEUE_A__B`` overrides the
field ``a.b`` (``webhook.config_env``). A bad file fails at start with a message that names the
field. The profile and pool models are in ``webhook.config_profiles``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from webhook.config_env import apply_env
from webhook.config_profiles import Pool, Profile, ProfilePolicy, StuckPolicy, _Model
from webhook.node_fit import NodeConstraints, terms_of, tolerations_of

if TYPE_CHECKING:
    from webhook.placement import Placement

__all__ = [
    "Config",
    "ConfigError",
    "Pool",
    "Profile",
    "ProfilePolicy",
    "StuckPolicy",
    "default_config_text",
    "dump_config",
    "load_config",
    "run_check",
]


class ConfigError(Exception):
    """The configuration is invalid; the message names the field and what is wrong."""


class Tls(_Model):
    cert_file: Path = Field(Path("/etc/gpu-queue/tls/tls.crt"), alias="certFile")
    key_file: Path = Field(Path("/etc/gpu-queue/tls/tls.key"), alias="keyFile")
    reload_seconds: float = Field(10.0, gt=0, alias="reloadSeconds")


class Server(_Model):
    host: str = "0.0.0.0"  # noqa: S104 - a pod listens on all its interfaces
    port: int = Field(8443, ge=0, le=65535, description="HTTPS: admission, API, health")
    metrics_port: int = Field(
        8080, ge=0, le=65535, alias="metricsPort", description="Plain HTTP /metrics, /healthz, /readyz; 0 = off"
    )
    max_body_bytes: int = Field(3 * 1024 * 1024, gt=0, alias="maxBodyBytes")


class Redis(_Model):
    url: SecretStr = SecretStr("redis://localhost:6379/0")
    key_prefix: str = Field("gpu-queue", alias="keyPrefix", min_length=1)
    timeout_seconds: float = Field(1.0, gt=0, alias="timeoutSeconds")


class Api(_Model):
    read_tokens: list[SecretStr] = Field(default_factory=list, alias="readTokens")
    admin_tokens: list[SecretStr] = Field(default_factory=list, alias="adminTokens")

    @field_validator("read_tokens", "admin_tokens", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = str(v)  # an all-digit token read from the environment
        if isinstance(v, list):
            return [str(t) if isinstance(t, int | float) else t for t in v]
        if isinstance(v, str):
            return [t.strip() for t in v.split(",") if t.strip()]
        return v


class Controller(_Model):
    enabled: bool = True
    reconcile_seconds: float = Field(30.0, gt=0, alias="reconcileSeconds")
    lease_name: str = Field("gpu-queue-leader", alias="leaseName")
    lease_namespace: str = Field("", alias="leaseNamespace", description="Default: POD_NAMESPACE")
    lease_duration_seconds: float = Field(15.0, gt=0, alias="leaseDurationSeconds")
    event_min_interval_seconds: float = Field(10.0, ge=0, alias="eventMinIntervalSeconds")
    restart_backoff_seconds: float = Field(
        1.0,
        gt=0,
        alias="restartBackoffSeconds",
        description="First wait before a failed controller restarts; doubles up to 60 s while it keeps failing",
    )
    identity: str = Field("", description="Leader identity; default: POD_NAME or the host name")
    order_settle_seconds: float = Field(
        1.0,
        ge=0,
        alias="orderSettleSeconds",
        description=(
            "A pod is granted no sooner than this after its requested-at, so a pod stamped a moment "
            "earlier but persisted a moment later (concurrent spawns) is never overtaken (I2)"
        ),
    )


class History(_Model):
    """The queue's history (``webhook.history``): what admins size pools from."""

    enabled: bool = Field(True, description="The leader records each arrival, grant, release and cancel in Redis")
    retention_days: float = Field(30.0, gt=0, alias="retentionDays", description="Events older than this are trimmed")
    max_events_per_pool: int = Field(
        200_000, ge=1000, alias="maxEventsPerPool", description="A cap per pool (about 49 bytes per event)"
    )
    record_user_names: bool = Field(
        False, alias="recordUserNames", description="Keep the user's name with each event (off: an opaque id only)"
    )


class Dashboard(_Model):
    """The admins' dashboard, a JupyterHub service (``webhook.dashboard``) on a plain-HTTP port of
    its own: the hub's proxy reaches it as z2jh reaches the hub, in-cluster over HTTP."""

    enabled: bool = False
    port: int = Field(8090, ge=1, le=65535, description="Plain HTTP; hub.services.gpu-queue.url points here")
    hub_api_url: str = Field(
        "http://hub.jhub.svc:8081/hub/api", alias="hubApiUrl", description="The hub's API as the service reaches it"
    )
    hub_public_url: str = Field(
        "", alias="hubPublicUrl", description="The hub as browsers reach it, without /hub; empty: the same origin"
    )
    service_prefix: str = Field("/services/gpu-queue/", alias="servicePrefix")
    oauth_redirect_uri: str = Field(
        "",
        alias="oauthRedirectUri",
        description="As the hub has it (oauth_redirect_uri); empty: <hubPublicUrl><servicePrefix>oauth_callback",
    )
    api_token: SecretStr = Field(
        SecretStr(""),
        alias="apiToken",
        description="hub.services.gpu-queue.apiToken, the OAuth client secret; default: the first of api.readTokens",
    )
    names_for: str = Field("admins", alias="namesFor", pattern="^(admins|everyone|nobody)$")
    allow_non_admins: bool = Field(True, alias="allowNonAdmins", description="Others see the queue without names")
    admin_groups: list[str] = Field(default_factory=list, alias="adminGroups")


class Policy(_Model):
    """Fair-use policies in hub terms (``groupLimits`` and the hold limit are per pool): who may
    say which groups a user is in, and how the service stops a server through the hub."""

    hub_service_accounts: list[str] = Field(
        default_factory=list,
        alias="hubServiceAccounts",
        description=(
            "Who may set the groups annotation: the hub's service account(s); default: the 'hub' "
            "service account of each of `namespaces` (zero-to-jupyterhub's name)"
        ),
    )
    hub_api_url: str = Field(
        "http://hub.jhub.svc:8081/hub/api",
        alias="hubApiUrl",
        description="The hub's API, where a holder past the hold limit is stopped (so the hub knows)",
    )
    hub_api_token: SecretStr = Field(
        SecretStr(""),
        alias="hubApiToken",
        description=(
            "A hub token with the `admin:servers` scope (stop servers) and `read:users`; default: "
            "the first of api.readTokens, z2jh's hub.services.gpu-queue.apiToken"
        ),
    )

    def trusted_accounts(self, namespaces: list[str]) -> frozenset[str]:
        given = self.hub_service_accounts or [f"system:serviceaccount:{ns}:hub" for ns in namespaces]
        return frozenset(given)


class Admission(_Model):
    requested_at_trust_seconds: float = Field(
        30.0,
        ge=0,
        alias="requestedAtTrustSeconds",
        description="An incoming requested-at older than this is not ours and is replaced (no queue jumping)",
    )


class Config(_Model):
    """The whole configuration. Field docs are the admin guide's reference."""

    prefix: str = Field("gpu-queue.io", min_length=1)
    profile_label: str = Field("", alias="profileLabel", description="Default: {prefix}/profile")
    pod_selector: dict[str, str] = Field(
        default_factory=lambda: {"component": "singleuser-server"}, alias="podSelector"
    )
    container_name: str = Field("notebook", alias="containerName")
    namespaces: list[str] = Field(default_factory=list, description="Hub namespaces; empty = all")
    service_account: str = Field(
        "system:serviceaccount:gpu-queue:gpu-queue",
        alias="serviceAccount",
        description="The only user allowed to remove the queue gate",
    )
    profiles: dict[str, Profile] = Field(default_factory=dict)
    default_profile: str | None = Field(None, alias="defaultProfile")
    missing_profile: ProfilePolicy = Field(ProfilePolicy.DEFAULT, alias="missingProfile")
    unknown_profile: ProfilePolicy = Field(ProfilePolicy.DENY, alias="unknownProfile")
    pools: dict[str, Pool] = Field(default_factory=dict)
    redis: Redis = Field(default_factory=Redis)
    tls: Tls = Field(default_factory=Tls)
    server: Server = Field(default_factory=Server)
    api: Api = Field(default_factory=Api)
    controller: Controller = Field(default_factory=Controller)
    admission: Admission = Field(default_factory=Admission)
    history: History = Field(default_factory=History)
    dashboard: Dashboard = Field(default_factory=Dashboard)
    policy: Policy = Field(default_factory=Policy)
    kubeconfig: Path | None = Field(None, description="Default: in-cluster, then ~/.kube/config")
    log_level: str = Field("INFO", alias="logLevel")

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.dashboard.enabled and not self.dashboard.api_token.get_secret_value():
            if not self.api.read_tokens:
                raise ValueError(
                    "dashboard.enabled needs the hub service's token: set dashboard.apiToken or api.readTokens "
                    "(z2jh's hub.services.gpu-queue.apiToken)"
                )
            object.__setattr__(self.dashboard, "api_token", self.api.read_tokens[0])
        if not self.policy.hub_api_token.get_secret_value() and self.api.read_tokens:
            object.__setattr__(self.policy, "hub_api_token", self.api.read_tokens[0])
        for name, pool in self.pools.items():
            if pool.max_hold_seconds_when_queued is not None and not self.policy.hub_api_token.get_secret_value():
                raise ValueError(
                    f"pools.{name}.maxHoldSecondsWhenQueued needs a hub token to stop servers with: set "
                    "policy.hubApiToken or api.readTokens (z2jh's hub.services.gpu-queue.apiToken)"
                )
        if not self.profile_label:
            object.__setattr__(self, "profile_label", f"{self.prefix}/profile")
        for name, profile in self.profiles.items():
            if profile.pool is not None and profile.pool not in self.pools:
                raise ValueError(
                    f"profiles.{name}.pool: pool {profile.pool!r} is not defined under pools "
                    f"(defined: {', '.join(sorted(self.pools)) or 'none'})"
                )
            if profile.pool is not None:
                pool = self.pools[profile.pool]
                if pool.resource not in profile.limits:
                    raise ValueError(
                        f"profiles.{name}.limits: a profile of pool {profile.pool!r} must set {pool.resource}"
                    )
                for key, value in profile.node_selector.items():
                    if pool.node_selector.get(key, value) != value:
                        raise ValueError(
                            f"profiles.{name}.nodeSelector.{key}: {value!r} contradicts pools.{profile.pool}"
                            f".nodeSelector ({pool.node_selector[key]!r}): its pods could never use the pool"
                        )
        needs_default = ProfilePolicy.DEFAULT in (self.missing_profile, self.unknown_profile)
        if self.default_profile is not None and self.default_profile not in self.profiles:
            raise ValueError(f"defaultProfile: {self.default_profile!r} is not one of the profiles")
        if needs_default and self.default_profile is None:
            raise ValueError("defaultProfile: required when missingProfile or unknownProfile is 'default'")
        pools: dict[str, Pool] = {}
        for pool_name, given in self.pools.items():
            pool = pools[pool_name] = given.model_copy()  # never change a Pool another Config shares
            pool._constraints = tuple(
                self.node_constraints(name) for name, p in self.profiles.items() if p.pool == pool_name
            )
        object.__setattr__(self, "pools", pools)
        return self

    def node_selector_of(self, profile: str) -> dict[str, str]:
        """The nodeSelector a profile's pods get: its pool's, then its own."""
        chosen = self.profiles[profile]
        pool = self.pools[chosen.pool].node_selector if chosen.pool is not None else {}
        return {**pool, **chosen.node_selector}

    @functools.cached_property
    def placements(self) -> dict[str, Placement]:
        """Each profile's placement, as admission merges it into pods (computed once)."""
        from webhook.placement import placement_of  # it reads the models defined here

        return {
            name: placement_of(self.node_selector_of(name), p.affinity, p.tolerations)
            for name, p in self.profiles.items()
        }

    def node_constraints(self, profile: str) -> NodeConstraints:
        """What admission makes a profile's pods demand of a node (beyond what the hub set)."""
        chosen = self.profiles[profile]
        return NodeConstraints(
            node_selector=self.node_selector_of(profile),
            terms=terms_of(chosen.affinity),
            tolerations=tolerations_of(chosen.tolerations),
        )

    # Names derived from the prefix: one place, so the chart, hub and tests agree.
    @property
    def gate_name(self) -> str:
        return f"{self.prefix}/slice"

    @property
    def pool_annotation(self) -> str:
        return f"{self.prefix}/pool"

    @property
    def requested_at_annotation(self) -> str:
        return f"{self.prefix}/requested-at"

    @property
    def admitted_at_annotation(self) -> str:
        return f"{self.prefix}/admitted-at"

    @property
    def removed_annotation(self) -> str:
        """Set by an admin's ``queue rm`` just before the delete: the place is not kept."""
        return f"{self.prefix}/removed"

    @property
    def released_annotation(self) -> str:
        """Set on a stuck head (I7) whose slice was released: it no longer counts as in use."""
        return f"{self.prefix}/released"

    @property
    def groups_annotation(self) -> str:
        """The user's JupyterHub groups, a JSON list, set by the hub at spawn (``webhook.hub``);
        admission accepts it only from ``policy.hubServiceAccounts`` and never lets it change."""
        return f"{self.prefix}/groups"

    @property
    def hold_warned_annotation(self) -> str:
        """Set by the leader when the hold limit warned a holder: the stop's clock starts there."""
        return f"{self.prefix}/hold-warned-at"

    @property
    def pool_resources(self) -> frozenset[str]:
        """Every resource that some pool queues: only pool profiles may request them."""
        return frozenset(pool.resource for pool in self.pools.values())


def default_config_text() -> str:
    """The shipped default (the seed: cpu-only and gpu-enabled, an 8-slice gpu pool)."""
    return resources.files("webhook").joinpath("default-config.yaml").read_text()


def _format_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_config(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load the YAML file (or the shipped default), apply env overrides, validate.

    Raises ConfigError with every bad field named.
    """
    env = os.environ if env is None else env
    source = str(path) if path is not None else "the built-in default"
    try:
        text = Path(path).read_text() if path is not None else default_config_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    apply_env(data, env, Config)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None


def dump_config(config: Config) -> str:
    """The effective configuration as YAML, secrets masked."""
    data = config.model_dump(mode="json", by_alias=True)
    return yaml.safe_dump(data, sort_keys=False)


def run_check(args: Any) -> int:
    """``gpu-queue config check [FILE]``: print the effective config, or the error, exit 0/1."""
    import sys

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    sys.stdout.write(dump_config(config))
    print(f"# ok: {len(config.profiles)} profiles, {len(config.pools)} pools", file=sys.stderr)
    return 0
