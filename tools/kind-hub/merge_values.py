"""Values and manifests for the kind hub (scripts/kind-hub.sh), without helm or the z2jh chart.

    python tools/kind-hub/merge_values.py values -f docs/z2jh-values.yaml -f tools/kind-hub/values.yaml \\
        [--set-string KEY=VALUE] [--set-env KEY=ENVVAR] [--set-file KEY=PATH] [--unset KEY] [--release jhub]
    python tools/kind-hub/merge_values.py manifests --values MERGED.yaml --hub-image TAG

``values`` prints the merged values as helm computes them for ``helm -f A -f B --set ...``: z2jh
4.x's chart defaults for the keys tools/kind-hub/jupyterhub_config.py reads (``Z2JH_DEFAULTS``),
then each ``-f`` file in order (mappings merge key by key, anything else, lists too, is
replaced), then the ``--set-*`` options (``--set-file`` puts a file's text at KEY, as helm's does;
``--set-env`` takes the value from an environment variable, so tokens stay off the command line;
``--unset`` deletes KEY, as helm's ``--set KEY=null`` does).

``manifests`` prints every object of the kind hub, to pipe into ``kubectl apply -f -``: the
ConfigMap hub (jupyterhub_config.py, z2jh.py), the Secret hub (values.yaml = the merged values,
the proxy token from env CONFIGPROXY_AUTH_TOKEN, one key per ``hub.extraFiles`` entry) and
tools/kind-hub/hub.yaml with the hub image set, the extraFiles mounted at their ``mountPath`` and
a checksum of the Secret on the hub's pod template.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent

#: The chart's defaults (z2jh 4.x values.yaml) for the keys the kind hub's loader reads.
Z2JH_DEFAULTS: dict[str, Any] = {
    "Chart": {"Name": "jupyterhub"},
    "Release": {"Name": "jhub"},
    "hub": {
        "baseUrl": "/",
        "concurrentSpawnLimit": 64,
        "consecutiveFailureLimit": 5,
        "activeServerLimit": None,
        "db": {"type": "sqlite-pvc"},
        "config": {"JupyterHub": {"admin_access": True, "authenticator_class": "dummy"}},
        "services": {},
        "loadRoles": {},
        "extraConfig": {},
        "extraFiles": {},
    },
    "singleuser": {
        "image": {"name": "quay.io/jupyterhub/k8s-singleuser-sample", "tag": None, "pullPolicy": None},
        "startTimeout": 300,
        "uid": 1000,
        "fsGid": 100,
        "cmd": "jupyterhub-singleuser",
        "defaultUrl": None,
        "events": True,
        "extraLabels": {"hub.jupyter.org/network-access-hub": "true"},
        "allowPrivilegeEscalation": False,
        "memory": {"limit": None, "guarantee": "1G"},
        "cpu": {"limit": None, "guarantee": None},
        "storage": {
            "type": "dynamic",
            "capacity": "10Gi",
            "homeMountPath": "/home/jovyan",
            "dynamic": {
                "storageClass": None,
                "pvcNameTemplate": "claim-{user_server}",
                "volumeNameTemplate": "volume-{user_server}",
                "storageAccessModes": ["ReadWriteOnce"],
            },
            "extraVolumes": [],
            "extraVolumeMounts": [],
        },
    },
    "cull": {
        "enabled": True,
        "users": False,
        "adminUsers": True,
        "removeNamedServers": False,
        "timeout": 3600,
        "every": 600,
        "concurrency": 10,
        "maxAge": 0,
    },
    "debug": {"enabled": False},
}

PROXY_TOKEN_KEY = "hub.config.ConfigurableHTTPProxy.auth_token"  # noqa: S105  (a key name, as in z2jh)


def merge(base: Any, over: Any) -> Any:
    """helm's merge of values files: mappings merge recursively, anything else is replaced; a null
    in ``over`` deletes the key (as ``key: null`` does in helm)."""
    if not isinstance(base, dict) or not isinstance(over, dict):
        return copy.deepcopy(over)
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif key in out:
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_path(values: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` (``a.b.c``; ``\\.`` for a dot inside a name, as in helm)."""
    parts = [p.replace("\0", ".") for p in key.replace("\\.", "\0").split(".")]
    node = values
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def unset_path(values: dict[str, Any], key: str) -> None:
    """Delete the dotted ``key`` (helm's ``--set KEY=null``); a key that is not there is an error,
    so a renamed value cannot be silently left in."""
    parts = [p.replace("\0", ".") for p in key.replace("\\.", "\0").split(".")]
    node: Any = values
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or parts[-1] not in node:
        raise SystemExit(f"error: --unset {key}: no such value")
    del node[parts[-1]]


def _split(option: str, text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"error: {option} wants KEY=VALUE, got {text!r}")
    return key, value


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"error: {path}: not a mapping")
    return data


def merged_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = copy.deepcopy(Z2JH_DEFAULTS)
    values["Release"]["Name"] = args.release
    for path in args.values_files:
        values = merge(values, load_yaml(Path(path)))
    for text in args.set_string:
        key, value = _split("--set-string", text)
        set_path(values, key, value)
    for text in args.set_env:
        key, var = _split("--set-env", text)
        if var not in os.environ:
            raise SystemExit(f"error: --set-env {key}: environment variable {var} is not set")
        set_path(values, key, os.environ[var])
    for text in args.set_file:
        key, path = _split("--set-file", text)
        set_path(values, key, Path(path).read_text(encoding="utf-8"))
    for key in args.unset:
        unset_path(values, key)
    return values


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (files, extraConfig snippets) as literal blocks, readable in the Secret."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def manifests(values: dict[str, Any], hub_image: str, proxy_token: str) -> list[dict[str, Any]]:
    """The ConfigMap hub, the Secret hub and hub.yaml's objects, ready to apply."""
    labels = {"app": "jupyterhub", "component": "hub", "release": values["Release"]["Name"]}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "hub", "labels": labels},
        "data": {name: (HERE / name).read_text(encoding="utf-8") for name in ("jupyterhub_config.py", "z2jh.py")},
    }
    extra_files: dict[str, dict[str, Any]] = values.get("hub", {}).get("extraFiles") or {}
    string_data = {"values.yaml": _dump(values), PROXY_TOKEN_KEY: proxy_token}
    for name, spec in extra_files.items():
        if not spec.get("mountPath"):
            raise SystemExit(f"error: hub.extraFiles.{name} has no mountPath")
        if "stringData" not in spec:
            raise SystemExit(f"error: hub.extraFiles.{name} has no stringData (pass it with --set-file)")
        string_data[name] = str(spec["stringData"])
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hub", "labels": labels},
        "type": "Opaque",
        "stringData": string_data,
    }
    checksum = hashlib.sha256(json.dumps([config_map["data"], string_data], sort_keys=True).encode()).hexdigest()

    objects = [config_map, secret]
    for obj in yaml.safe_load_all((HERE / "hub.yaml").read_text(encoding="utf-8")):
        if not obj:
            continue
        if obj["kind"] == "Deployment":
            pod = obj["spec"]["template"]
            for container in pod["spec"]["containers"]:
                if container.get("image") == "HUB_IMAGE":
                    container["image"] = hub_image
            if obj["metadata"]["name"] == "hub":
                pod["metadata"].setdefault("annotations", {})["checksum/config"] = checksum
                if extra_files:
                    pod["spec"]["volumes"].append(
                        {
                            "name": "files",
                            "secret": {
                                "secretName": "hub",
                                "items": [{"key": name, "path": name} for name in extra_files],
                            },
                        }
                    )
                    mounts = pod["spec"]["containers"][0]["volumeMounts"]
                    for name, spec in extra_files.items():
                        mounts.append({"name": "files", "mountPath": spec["mountPath"], "subPath": name})
        objects.append(obj)
    return objects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("values", help="print the merged values")
    v.add_argument("-f", "--values", dest="values_files", action="append", default=[], metavar="FILE")
    v.add_argument("--set-string", action="append", default=[], metavar="KEY=VALUE")
    v.add_argument("--set-env", action="append", default=[], metavar="KEY=ENVVAR")
    v.add_argument("--set-file", action="append", default=[], metavar="KEY=PATH")
    v.add_argument("--unset", action="append", default=[], metavar="KEY")
    v.add_argument("--release", default="jhub")
    m = sub.add_parser("manifests", help="print the hub's objects (env CONFIGPROXY_AUTH_TOKEN: the proxy token)")
    m.add_argument("--values", required=True, metavar="MERGED.yaml")
    m.add_argument("--hub-image", required=True)
    args = parser.parse_args(argv)

    if args.command == "values":
        sys.stdout.write(_dump(merged_values(args)))
        return 0
    token = os.environ.get("CONFIGPROXY_AUTH_TOKEN", "")
    if not token:
        raise SystemExit("error: CONFIGPROXY_AUTH_TOKEN is not set")
    objects = manifests(load_yaml(Path(args.values)), args.hub_image, token)
    sys.stdout.write("".join("---\n" + _dump(obj) for obj in objects))
    return 0


if __name__ == "__main__":
    sys.exit(main())
