"""Single-user pods built by a real KubeSpawner, the way a zero-to-jupyterhub hub builds them.

The demo, the benchmarks and the tests create their pods here rather than by hand, so what the
webhook sees is what a hub really sends (numbers as quantities, the hub's env vars, its labels).
Needs the ``dev`` extra (jupyterhub-kubespawner). The product's unit tests do not import this
package: they read pods recorded here (``python -m gpu_queue_dev.spawnerpods record FILE``), and a
test of the dev tier fails when the installed KubeSpawner would build them differently.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import zlib
from pathlib import Path
from typing import Any

import yaml

_DOCS_VALUES = Path(__file__).resolve().parents[1] / "docs" / "z2jh-values.yaml"


def _seed_profile_list() -> list[dict[str, Any]]:
    """The seed's profileList exactly as the docs give it to admins (z2jh ``singleuser.profileList``):
    one source, so the pods here and the docs cannot drift apart."""
    values = yaml.safe_load(_DOCS_VALUES.read_text())
    profiles: list[dict[str, Any]] = values["singleuser"]["profileList"]
    return profiles


PROFILE_LIST: list[dict[str, Any]] = _seed_profile_list()

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
        self.id = zlib.crc32(name.encode()) % 100000  # stable across runs: recorded pods compare equal
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


def case_key(case: dict[str, Any]) -> str:
    """One case's identity: user, profile (null for none), server and extra traits, as JSON."""
    extra = case.get("extra") or {}
    return json.dumps([case["user"], case["profile"], case.get("server", ""), extra], sort_keys=True)


async def render_cases(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The recording for ``cases`` (each ``user``, ``profile``, ``server``, ``extra``): every case with
    the pod KubeSpawner builds for it now, and the profileList they were built from."""
    rendered = []
    for case in sorted(cases, key=case_key):
        user, profile, server, extra = json.loads(case_key(case))
        pod = await pod_manifest(user, profile, server, extra=extra)
        rendered.append({"user": user, "profile": profile, "server": server, "extra": extra, "pod": pod})
    return {"kubespawner": _kubespawner_version(), "profileList": PROFILE_LIST, "cases": rendered}


def _kubespawner_version() -> str:
    from importlib.metadata import version

    return version("jupyterhub-kubespawner")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpu_queue_dev.spawnerpods",
        description="Re-record the KubeSpawner pods the unit tests read (the cases stay those in FILE).",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    record = sub.add_parser("record", help="rebuild every case of FILE with the installed KubeSpawner")
    record.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    cases = json.loads(args.file.read_text())["cases"]
    recording = asyncio.run(render_cases(cases))
    args.file.write_text(json.dumps(recording, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(recording['cases'])} pods with KubeSpawner {recording['kubespawner']} into {args.file}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
