"""Single-user pods built by a real KubeSpawner, the way a zero-to-jupyterhub hub builds them.

The demo, the benchmarks and the tests create their pods here rather than by hand, so what the
webhook sees is what a hub really sends (numbers as quantities, the hub's env vars, its labels).
Needs the ``hub`` extra (jupyterhub-kubespawner).
"""

from __future__ import annotations

from typing import Any

PROFILE_LABEL = "gpu-queue.io/profile"

# The seed's profileList, as an admin writes it in z2jh's singleuser.profileList.
PROFILE_LIST: list[dict[str, Any]] = [
    {
        "display_name": "CPU Only - Data Exploration",
        "slug": "cpu-only",
        "default": True,
        "kubespawner_override": {
            "cpu_limit": 2,
            "cpu_guarantee": 0.5,
            "mem_limit": "4G",
            "mem_guarantee": "1G",
            "extra_labels": {PROFILE_LABEL: "cpu-only"},
        },
    },
    {
        "display_name": "GPU Enabled - ML/AI Training",
        "slug": "gpu-enabled",
        "kubespawner_override": {
            "cpu_limit": 4,
            "cpu_guarantee": 1,
            "mem_limit": "8G",
            "mem_guarantee": "2G",
            "extra_resource_limits": {"nvidia.com/gpu": "1"},
            "extra_labels": {PROFILE_LABEL: "gpu-enabled"},
        },
    },
]

# What the z2jh chart adds to every single-user pod.
CHART_LABELS = {
    "app": "jupyterhub",
    "release": "jhub",
    "app.kubernetes.io/managed-by": "kubespawner",
    "hub.jupyter.org/network-access-hub": "true",
}


class _User:
    """The slice of jupyterhub.user.User that KubeSpawner reads while building a pod."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.id = abs(hash(name)) % 100000
        self.url = f"/user/{name}/"
        self.escaped_name = name


class _OrmSpawner:
    """The ORM row behind ``Spawner.name`` (the server name; "" for the default server)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state: dict[str, Any] = {}
        self.server = None


class _Hub:
    public_host = "hub"
    url = "http://hub:8081/hub/"
    base_url = "/"
    api_url = "http://hub:8081/hub/api"


async def pod_manifest(
    user: str,
    profile: str | None = "gpu-enabled",
    server: str = "",
    namespace: str = "jhub",
    *,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The pod JSON KubeSpawner would POST for ``user``'s ``server`` with ``profile`` chosen.

    ``profile=None`` builds a pod from a hub that sets no profile label. ``extra`` sets more
    KubeSpawner traits (e.g. ``{"extra_containers": [...]}``).
    """
    from unittest import mock

    from kubernetes_asyncio.client import ApiClient
    from kubespawner import KubeSpawner

    # Building a manifest talks to no API server; skip KubeSpawner's kubeconfig loading.
    with mock.patch("kubespawner.spawner.load_config"), mock.patch("kubespawner.spawner.shared_client"):
        spawner = await new_spawner(KubeSpawner, user, profile, server, namespace)
    for key, value in (extra or {}).items():
        setattr(spawner, key, value)
    pod = await spawner.get_pod_manifest()
    async with ApiClient() as client:
        data: dict[str, Any] = client.sanitize_for_serialization(pod)
    data.setdefault("apiVersion", "v1")
    data.setdefault("kind", "Pod")
    data["metadata"].setdefault("namespace", namespace)
    return data


async def new_spawner(
    cls: Any, user: str, profile: str | None, server: str = "", namespace: str = "jhub", **traits: Any
) -> Any:
    """A KubeSpawner (or subclass) for ``user``'s ``server`` with ``profile`` loaded, as the hub
    makes one: the seed profileList, the chart's labels. It talks to whatever API server the
    kubeconfig (``KUBECONFIG``) names when started."""
    spawner = cls(
        _mock=True,
        user=_User(user),
        hub=_Hub(),
        namespace=namespace,
        profile_list=PROFILE_LIST if profile is not None else [],
        extra_labels=dict(CHART_LABELS),
        image="quay.io/jupyter/scipy-notebook:2025-01-01",
        cmd=["jupyterhub-singleuser"],
        **traits,
    )
    spawner.orm_spawner = _OrmSpawner(server)
    spawner.api_token = "test-token"  # noqa: S105 - a fake token for a pod that never runs
    spawner.pod_name = spawner._expand_user_properties(spawner.pod_name_template)
    if profile is not None:
        spawner.user_options = {"profile": profile}
        await spawner.load_user_options()
    return spawner
