"""The service configuration: one YAML file, validated by pydantic, with ``GPU_QUEUE_*`` overrides.

The file is mounted from a ConfigMap. An environment variable ``GPU_QUEUE_A__B`` overrides the
field ``a.b`` (nested by ``__``, names matched case-insensitively against the YAML keys, values read
as YAML scalars so ``8``, ``true`` and ``[a, b]`` work). A bad file fails at start with a message
that names the field.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from webhook.quantity import QuantityError, cpu_env, memory_env, parse_quantity

ENV_PREFIX = "GPU_QUEUE_"


class ConfigError(Exception):
    """The configuration is invalid; the message names the field and what is wrong."""


class _Model(BaseModel):
    """Config models: camelCase keys as in the YAML, unknown keys rejected (typos fail loudly)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


Quantity = Annotated[str, Field(description="A Kubernetes quantity such as 500m, 2, 4Gi")]


def _check_quantities(values: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in values.items():
        try:
            parse_quantity(value)
        except QuantityError as exc:
            raise ValueError(f"{name}: {exc}") from None
        out[name] = str(value)
    return out


class Profile(_Model):
    """What a profile's pods get: requests and limits of the notebook container, and a pool."""

    display_name: str = Field("", alias="displayName")
    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)
    pool: str | None = Field(None, description="The queue pool; None means never gated")

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _quantities(cls, v: Any) -> Any:
        return _check_quantities(v) if isinstance(v, Mapping) else v

    @functools.cached_property
    def env(self) -> dict[str, str]:
        """The env vars JupyterHub writes for these settings, in its format (computed once)."""
        out: dict[str, str] = {}
        if "cpu" in self.limits:
            out["CPU_LIMIT"] = cpu_env(self.limits["cpu"])
        if "cpu" in self.requests:
            out["CPU_GUARANTEE"] = cpu_env(self.requests["cpu"])
        if "memory" in self.limits:
            out["MEM_LIMIT"] = memory_env(self.limits["memory"])
        if "memory" in self.requests:
            out["MEM_GUARANTEE"] = memory_env(self.requests["memory"])
        return out

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Profile:
        for name, request in self.requests.items():
            limit = self.limits.get(name)
            if limit is not None and parse_quantity(request) > parse_quantity(limit):
                raise ValueError(f"requests.{name} ({request}) is larger than limits.{name} ({limit})")
        return self


class StuckPolicy(StrEnum):
    """What to do with a granted pod that is not Ready within ``admitTimeoutSeconds`` (I7)."""

    KEEP = "keep"
    RELEASE = "release"


class Pool(_Model):
    """A set of interchangeable slices (one GPU model, time-sliced) and its FIFO."""

    resource: str = "nvidia.com/gpu"
    capacity: int | Literal["auto"] = Field(
        "auto", description="A fixed slice count, or auto: the resource's allocatable on the pool's nodes"
    )
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    keep_place_seconds: int = Field(300, ge=0, alias="keepPlaceSeconds")
    admit_timeout_seconds: int = Field(600, gt=0, alias="admitTimeoutSeconds")
    stuck_policy: StuckPolicy = Field(StuckPolicy.RELEASE, alias="stuckPolicy")
    cull_timeout_seconds: int = Field(
        3600, gt=0, alias="cullTimeoutSeconds", description="The idle culler's timeout, an ETA hint"
    )

    @field_validator("capacity")
    @classmethod
    def _non_negative(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("capacity must be >= 0 or 'auto'")
        return v


class ProfilePolicy(StrEnum):
    """What admission does with a pod whose profile label is missing or unknown."""

    DEFAULT = "default"  # treat it as ``defaultProfile``
    ALLOW = "allow"  # admit it unchanged
    DENY = "deny"  # deny it with a message


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
    kubeconfig: Path | None = Field(None, description="Default: in-cluster, then ~/.kube/config")
    log_level: str = Field("INFO", alias="logLevel")

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if not self.profile_label:
            object.__setattr__(self, "profile_label", f"{self.prefix}/profile")
        for name, profile in self.profiles.items():
            if profile.pool is not None and profile.pool not in self.pools:
                raise ValueError(
                    f"profiles.{name}.pool: pool {profile.pool!r} is not defined under pools "
                    f"(defined: {', '.join(sorted(self.pools)) or 'none'})"
                )
            if profile.pool is not None:
                resource = self.pools[profile.pool].resource
                if resource not in profile.limits:
                    raise ValueError(f"profiles.{name}.limits: a profile of pool {profile.pool!r} must set {resource}")
        needs_default = ProfilePolicy.DEFAULT in (self.missing_profile, self.unknown_profile)
        if self.default_profile is not None and self.default_profile not in self.profiles:
            raise ValueError(f"defaultProfile: {self.default_profile!r} is not one of the profiles")
        if needs_default and self.default_profile is None:
            raise ValueError("defaultProfile: required when missingProfile or unknownProfile is 'default'")
        return self

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
    def pool_resources(self) -> frozenset[str]:
        """Every resource that some pool queues: only pool profiles may request them."""
        return frozenset(pool.resource for pool in self.pools.values())


def default_config_text() -> str:
    """The shipped default (the seed: cpu-only and gpu-enabled, an 8-slice gpu pool)."""
    return resources.files("webhook").joinpath("default-config.yaml").read_text()


def _top_level_names() -> set[str]:
    return {(f.alias or n).lower().replace("_", "") for n, f in Config.model_fields.items()}


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``GPU_QUEUE_A__B`` for every top-level field ``a``; other ``GPU_QUEUE_*`` variables (the
    CLI's own, like ``GPU_QUEUE_API_URL`` or ``GPU_QUEUE_CONFIG``) are not configuration."""
    out: dict[str, Any] = {}
    fields = _top_level_names()
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p for p in key[len(ENV_PREFIX) :].split("__") if p]
        if not path or path[0].lower().replace("_", "") not in fields:
            continue
        if len(path) == 1 and path[0].lower().replace("_", "") in _SECTIONS:
            continue  # e.g. GPU_QUEUE_API=... names a section, not a value
        try:
            value = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            value = raw
        if isinstance(value, dict):
            value = raw  # a scalar override, never a structure smuggled in
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return out


_SECTIONS = {"redis", "tls", "server", "api", "controller", "admission", "profiles", "pools", "podselector"}


def _merge_env(data: dict[str, Any], overrides: dict[str, Any], fields: type[BaseModel] | None) -> None:
    """Merge env overrides (upper-case names) into data, matching YAML keys case-insensitively."""
    for name, value in overrides.items():
        key = _match_key(name, data, fields)
        if isinstance(value, dict):
            sub = data.get(key)
            if not isinstance(sub, dict):
                sub = {}
                data[key] = sub
            _merge_env(sub, value, _sub_model(fields, key))
        else:
            data[key] = value


def _match_key(name: str, data: Mapping[str, Any], fields: type[BaseModel] | None) -> str:
    wanted = name.lower().replace("_", "")
    for key in data:
        if str(key).lower().replace("_", "") == wanted:
            return str(key)
    if fields is not None:
        for fname, finfo in fields.model_fields.items():
            alias = finfo.alias or fname
            if alias.lower().replace("_", "") == wanted:
                return alias
    return name.lower()


def _sub_model(fields: type[BaseModel] | None, key: str) -> type[BaseModel] | None:
    if fields is None:
        return None
    for fname, finfo in fields.model_fields.items():
        if key in (fname, finfo.alias):
            ann = finfo.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                return ann
    return None


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
    _merge_env(data, _env_overrides(env), Config)
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
