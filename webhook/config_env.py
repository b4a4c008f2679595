"""``GPU_QUEUE_*`` environment overrides of the configuration file (see ``webhook.config``).

``GPU_QUEUE_A__B`` overrides the field ``a.b``: nested by ``__``, names matched case-insensitively
against the YAML keys (or the models' aliases), values read as YAML scalars so ``8``, ``true`` and
``[a, b]`` work. A variable whose first part names no top-level field is not configuration (the
CLI's own ``GPU_QUEUE_API_URL``, ``GPU_QUEUE_TOKEN``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel

ENV_PREFIX = "GPU_QUEUE_"
_SECTIONS = {"redis", "tls", "server", "api", "controller", "admission", "profiles", "pools", "podselector"}


def apply_env(data: dict[str, Any], env: Mapping[str, str], model: type[BaseModel]) -> None:
    """Merge the overrides found in ``env`` into the YAML ``data`` of a ``model``, in place."""
    _merge_env(data, _env_overrides(env, model), model)


def _top_level_names(model: type[BaseModel]) -> set[str]:
    return {(f.alias or n).lower().replace("_", "") for n, f in model.model_fields.items()}


def _env_overrides(env: Mapping[str, str], model: type[BaseModel]) -> dict[str, Any]:
    """``GPU_QUEUE_A__B`` for every top-level field ``a``; other ``GPU_QUEUE_*`` variables (the
    CLI's own, like ``GPU_QUEUE_API_URL`` or ``GPU_QUEUE_CONFIG``) are not configuration."""
    out: dict[str, Any] = {}
    fields = _top_level_names(model)
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
