"""A stand-in for zero-to-jupyterhub's ``z2jh`` module, for the kind hub (tools/kind-hub).

z2jh's hub image ships a ``z2jh`` module next to ``jupyterhub_config.py``: ``get_config`` reads the
chart's values (the hub ConfigMap) and ``get_secret_value`` reads the hub Secret, where the chart
puts the secret values (``hub.services.*.apiToken``, the proxy token, ...). Here both come from one
file, the merged values (docs/z2jh-values.yaml under the kind overlay, with the tokens set), which
scripts/kind-hub.sh puts into the hub Secret and mounts at ``VALUES_PATH``. The functions have
z2jh's names and signatures, so ``hub.extraConfig`` snippets written for z2jh run unchanged.
"""

from __future__ import annotations

import copy
import functools
import os
from typing import Any

import yaml

#: Where the hub Deployment mounts the merged values (env GQ_HUB_VALUES overrides it).
VALUES_PATH = os.environ.get("GQ_HUB_VALUES", "/usr/local/etc/jupyterhub/secret/values.yaml")

_MISSING = object()


@functools.cache
def _load_values() -> dict[str, Any]:
    with open(VALUES_PATH, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{VALUES_PATH}: the values are not a mapping")
    return values


def _lookup(key: str) -> Any:
    node: Any = _load_values()
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def get_config(key: str, default: Any = None) -> Any:
    """The value at the dotted path ``key`` (a deep copy, so callers may change it), or ``default``
    when a part of the path is missing. Keys containing dots cannot be addressed (as in z2jh)."""
    value = _lookup(key)
    return default if value is _MISSING else copy.deepcopy(value)


def get_secret_value(key: str, default: str = "secret-missing") -> str:
    """A secret value by its dotted values path, e.g. ``hub.services.gpu-queue.apiToken``.

    z2jh reads the hub Secret's key of that name and returns ``default`` when it is absent; the
    kind hub keeps secrets in the same merged values, so this reads them there. An empty or null
    value counts as absent, like an unset chart value (z2jh's Secret omits it).
    """
    value = _lookup(key)
    if value is _MISSING or value is None or value == "":
        return default
    return str(value)


def set_config_if_not_none(cparent: Any, name: str, key: str) -> None:
    """Set the trait ``name`` on the config section ``cparent`` from the values key ``key``,
    unless that value is missing or null (z2jh's helper of the same name)."""
    value = get_config(key)
    if value is not None:
        setattr(cparent, name, value)
