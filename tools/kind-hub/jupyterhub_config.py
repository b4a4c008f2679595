"""JupyterHub configuration for the kind hub (scripts/kind-hub.sh): zero-to-jupyterhub's loader, cut
down to the values that docs/z2jh-values.yaml and the kind overlay (tools/kind-hub/values.yaml) use.

z2jh 4.x runs its own ``jupyterhub_config.py`` in the hub pod and feeds it the chart's values; this
file does the same with the same value names, read from the merged values that
tools/kind-hub/merge_values.py wrote (z2jh's chart defaults for these keys, then
docs/z2jh-values.yaml, then the overlay, then the tokens). So the hub in the kind tests is configured
by the very values the docs give admins. What it sets, as z2jh does:

* the hub behind a separate configurable-http-proxy: ``hub_bind_url`` on :8081, ``hub_connect_url``
  the ``hub`` Service, ``ConfigurableHTTPProxy.should_start = False`` with the ``proxy-api`` Service
  and the token from env CONFIGPROXY_AUTH_TOKEN; ``cleanup_servers = False``; sqlite in the working
  directory (/srv/jupyterhub);
* ``hub.concurrentSpawnLimit`` and friends -> ``c.JupyterHub``; ``hub.consecutiveFailureLimit`` ->
  ``c.Spawner.consecutive_failure_limit`` (a Spawner trait in JupyterHub 5, which the app reads
  from its spawners; ``c.JupyterHub`` does not know it);
* KubeSpawner: the namespace (env POD_NAMESPACE), z2jh's common labels, ``singleuser.*`` (image,
  pull policy, start timeout, uid/fsGid, cmd, resources, labels, ``profileList``, dynamic storage);
* ``cull.*`` -> jupyterhub-idle-culler as a hub-managed service with z2jh's role;
* ``hub.services`` -> ``c.JupyterHub.services`` (the token through ``get_secret_value``);
* ``hub.config`` -> each ``Class.trait``; then ``hub.extraConfig`` snippets, sorted by key, run
  here with ``c`` in scope.

One kind-only key, not a z2jh value: ``kind.profileImage``. When set (with ``kind.profilePullPolicy``)
it replaces the ``image`` / ``image_pull_policy`` of every profile's ``kubespawner_override``: the
docs' GPU profile names a quay.io CUDA image, which an offline kind node cannot pull.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

# Modules next to this file (z2jh.py, gpu_queue_hub.py) are importable, as in z2jh's hub.
sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

from jupyterhub.utils import url_path_join
from z2jh import get_config as z2jh_get_config
from z2jh import get_secret_value, set_config_if_not_none

c: Any = get_config()  # type: ignore[name-defined]  # noqa: F821  (traitlets injects get_config)

HUB_PORT = 8081


def camel_caseify(s: str) -> str:
    """some_trait -> someTrait, the chart's spelling of a trait name."""
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), s)


def service_url(name: str, default_port: int) -> str:
    """http://<Service>:<port>, the port from Kubernetes' <NAME>_SERVICE_PORT env if present."""
    port = os.environ.get(name.upper().replace("-", "_") + "_SERVICE_PORT", str(default_port))
    return f"http://{name}:{port}"


# --- the hub and its proxy --------------------------------------------------------------------
try:  # z2jh's hub image has pycurl: the curl client copes better with many proxy API calls
    import pycurl  # type: ignore[import-not-found]  # noqa: F401
except ImportError:
    pass
else:
    from tornado.httpclient import AsyncHTTPClient

    AsyncHTTPClient.configure("tornado.curl_httpclient.CurlAsyncHTTPClient")

c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.ConfigurableHTTPProxy.api_url = service_url("proxy-api", 8001)
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.auth_token = os.environ["CONFIGPROXY_AUTH_TOKEN"]
c.JupyterHub.cleanup_servers = False  # a hub restart leaves the user pods running
c.JupyterHub.last_activity_interval = 60
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}  # straight to the progress page
c.JupyterHub.hub_bind_url = f"http://:{HUB_PORT}"
c.JupyterHub.hub_connect_url = service_url("hub", HUB_PORT)

db_type = z2jh_get_config("hub.db.type")
if db_type == "sqlite-memory":
    c.JupyterHub.db_url = "sqlite://"
elif db_type in (None, "sqlite-pvc"):  # the kind hub's /srv/jupyterhub is an emptyDir
    c.JupyterHub.db_url = "sqlite:///jupyterhub.sqlite"
else:
    set_config_if_not_none(c.JupyterHub, "db_url", "hub.db.url")

for trait in (
    "concurrent_spawn_limit",
    "active_server_limit",
    "base_url",
    "allow_named_servers",
    "named_server_limit_per_user",
    "authenticate_prometheus",
    "redirect_to_server",
    "shutdown_on_logout",
    "template_paths",
    "template_vars",
):
    set_config_if_not_none(c.JupyterHub, trait, "hub." + camel_caseify(trait))
set_config_if_not_none(c.Spawner, "consecutive_failure_limit", "hub.consecutiveFailureLimit")

# --- KubeSpawner ------------------------------------------------------------------------------
# z2jh's common labels (app/release are the old names it keeps in 4.x; NetworkPolicies select them).
common_labels: dict[str, str] = {}
common_labels["app.kubernetes.io/name"] = common_labels["app"] = z2jh_get_config(
    "nameOverride", default=z2jh_get_config("Chart.Name", "jupyterhub")
)
release = z2jh_get_config("Release.Name")
if release:
    common_labels["app.kubernetes.io/instance"] = common_labels["release"] = release
common_labels["app.kubernetes.io/managed-by"] = "kubespawner"
c.KubeSpawner.common_labels = common_labels
c.KubeSpawner.namespace = os.environ.get("POD_NAMESPACE", "default")

for trait, key in (
    ("pod_name_template", None),
    ("start_timeout", None),
    ("image_pull_policy", "image.pullPolicy"),
    ("events_enabled", "events"),
    ("extra_labels", None),
    ("extra_annotations", None),
    ("uid", None),
    ("fs_gid", None),
    ("service_account", "serviceAccountName"),
    ("storage_extra_labels", "storage.extraLabels"),
    ("node_selector", None),
    ("node_affinity_required", "extraNodeAffinity.required"),
    ("node_affinity_preferred", "extraNodeAffinity.preferred"),
    ("lifecycle_hooks", None),
    ("init_containers", None),
    ("extra_containers", None),
    ("mem_limit", "memory.limit"),
    ("mem_guarantee", "memory.guarantee"),
    ("cpu_limit", "cpu.limit"),
    ("cpu_guarantee", "cpu.guarantee"),
    ("extra_resource_limits", "extraResource.limits"),
    ("extra_resource_guarantees", "extraResource.guarantees"),
    ("environment", "extraEnv"),
    ("profile_list", None),
    ("extra_pod_config", None),
):
    set_config_if_not_none(c.KubeSpawner, trait, "singleuser." + (key or camel_caseify(trait)))

image = z2jh_get_config("singleuser.image.name")
if image:
    tag = z2jh_get_config("singleuser.image.tag")
    c.KubeSpawner.image = f"{image}:{tag}" if tag else image
tolerations = z2jh_get_config("singleuser.extraTolerations", [])
if tolerations:
    c.KubeSpawner.tolerations = tolerations
if "allowPrivilegeEscalation" in z2jh_get_config("singleuser", {}):
    c.KubeSpawner.allow_privilege_escalation = z2jh_get_config("singleuser.allowPrivilegeEscalation")

# The kind overlay's image for every profile (see the module docstring).
profile_image = z2jh_get_config("kind.profileImage")
if profile_image:
    profile_pull_policy = z2jh_get_config("kind.profilePullPolicy")
    profiles: list[dict[str, Any]] = z2jh_get_config("singleuser.profileList", [])
    for profile in profiles:
        override = profile.setdefault("kubespawner_override", {})
        if "image" in override:
            override["image"] = profile_image
            if profile_pull_policy:
                override["image_pull_policy"] = profile_pull_policy
    c.KubeSpawner.profile_list = profiles

volumes: list[dict[str, Any]] = []
volume_mounts: list[dict[str, Any]] = []
storage_type = z2jh_get_config("singleuser.storage.type")
if storage_type == "dynamic":
    pvc_name_template = z2jh_get_config("singleuser.storage.dynamic.pvcNameTemplate")
    volume_name_template = z2jh_get_config("singleuser.storage.dynamic.volumeNameTemplate")
    if pvc_name_template:
        c.KubeSpawner.pvc_name_template = pvc_name_template
    c.KubeSpawner.storage_pvc_ensure = True
    set_config_if_not_none(c.KubeSpawner, "storage_class", "singleuser.storage.dynamic.storageClass")
    set_config_if_not_none(c.KubeSpawner, "storage_access_modes", "singleuser.storage.dynamic.storageAccessModes")
    set_config_if_not_none(c.KubeSpawner, "storage_capacity", "singleuser.storage.capacity")
    volumes.append({"name": volume_name_template, "persistentVolumeClaim": {"claimName": "{pvc_name}"}})
    volume_mounts.append(
        {"mountPath": z2jh_get_config("singleuser.storage.homeMountPath"), "name": volume_name_template}
    )
volumes.extend(z2jh_get_config("singleuser.storage.extraVolumes", []))
volume_mounts.extend(z2jh_get_config("singleuser.storage.extraVolumeMounts", []))
if volumes:
    c.KubeSpawner.volumes = volumes
if volume_mounts:
    c.KubeSpawner.volume_mounts = volume_mounts

specified_cmd = z2jh_get_config("singleuser", {}).get("cmd", KeyError)
if specified_cmd is not KeyError:  # an explicit null is kept (the image's own command)
    c.Spawner.cmd = specified_cmd
set_config_if_not_none(c.Spawner, "default_url", "singleuser.defaultUrl")

# --- services: the idle culler, then hub.services ---------------------------------------------
services: list[dict[str, Any]] = []
roles: list[dict[str, Any]] = []
if z2jh_get_config("cull.enabled", False):
    # z2jh's role: what jupyterhub-idle-culler needs; admin:users only when it may delete users.
    culler_role: dict[str, Any] = {
        "name": "jupyterhub-idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["jupyterhub-idle-culler"],
    }
    base_url = z2jh_get_config("hub.baseUrl") or "/"
    cull_cmd = ["python3", "-m", "jupyterhub_idle_culler"]
    cull_cmd.append(f"--url=http://localhost:{HUB_PORT}" + url_path_join(base_url, "hub/api"))
    for flag, key in (
        ("--timeout", "cull.timeout"),
        ("--cull-every", "cull.every"),
        ("--concurrency", "cull.concurrency"),
        ("--max-age", "cull.maxAge"),
    ):
        value = z2jh_get_config(key)
        if value:
            cull_cmd.append(f"{flag}={value}")
    if z2jh_get_config("cull.users"):
        cull_cmd.append("--cull-users")
        culler_role["scopes"].append("admin:users")
    if not z2jh_get_config("cull.adminUsers", True):
        cull_cmd.append("--cull-admin-users=false")
    if z2jh_get_config("cull.removeNamedServers"):
        cull_cmd.append("--remove-named-servers")
    services.append({"name": "jupyterhub-idle-culler", "command": cull_cmd})
    roles.append(culler_role)

hub_services: dict[str, dict[str, Any]] = z2jh_get_config("hub.services", {})
for name, service in hub_services.items():
    # A dict of dicts in the chart (mergeable), a list in JupyterHub.
    service.setdefault("name", name)
    service.pop("apiToken", None)
    service["api_token"] = get_secret_value(f"hub.services.{name}.apiToken")
    services.append(service)
load_roles: dict[str, dict[str, Any]] = z2jh_get_config("hub.loadRoles", {})
for name, role in load_roles.items():
    role.setdefault("name", name)
    roles.append(role)
c.JupyterHub.services = services
c.JupyterHub.load_roles = roles

if z2jh_get_config("debug.enabled", False):
    c.JupyterHub.log_level = "DEBUG"
    c.Spawner.debug = True

# --- hub.config, then hub.extraConfig ---------------------------------------------------------
hub_config: dict[str, dict[str, Any]] = z2jh_get_config("hub.config", {})
for cls, traits in hub_config.items():
    if cls == "JupyterHub":  # z2jh owns these (set above or from its Secret)
        for owned in ("proxy_auth_token", "server_url", "hub_bind_url", "hub_connect_url"):
            traits.pop(owned, None)
    for trait, value in traits.items():
        setattr(c[cls], trait, value)

extra_config: dict[str, str] = z2jh_get_config("hub.extraConfig", {})
for key, snippet in sorted(extra_config.items()):
    print(f"Loading extra config: {key}", flush=True)
    exec(compile(snippet, f"<hub.extraConfig.{key}>", "exec"), globals())  # noqa: S102  (z2jh's way)
