"""The Helm chart, rendered by a real ``helm`` over a matrix of values: every object valid against the
Kubernetes schema, the webhook scope, the service's config file (loaded by the service's own loader
with the environment the Deployment gives it), the exact RBAC grants, and the pod's lockdown.

Skipped only when helm is missing (``tools/build.sh`` builds it; CI does)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from gpu_queue_dev.spawnerpods import pod_manifest
from tests.helpers.chart import NAMESPACE, HelmError, find, helm_path, is_hook, lint_chart, one, render_chart
from webhook.cli import build_parser
from webhook.config import Config, load_config

pytestmark = pytest.mark.skipif(
    helm_path() is None, reason="helm not found: tools/build.sh builds it into the tools cache (CI does)"
)

# The chart's minimum Kubernetes and the newest schema kubernetes_validate bundles here.
SCHEMA_VERSIONS = ("1.30.0", "1.35.0")
# Kinds from CRDs (cert-manager, Prometheus Operator): no bundled schema; checked by assertions.
CRD_KINDS = {"Issuer", "Certificate", "ServiceMonitor"}
FULLNAME = "gpu-queue"  # release "gpu-queue" of chart "gpu-queue"
SA = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"

TWO_POOLS: dict[str, Any] = {
    "config": {
        "profiles": {
            "a100-large": {
                "displayName": "A100 - Large Training",
                "requests": {"cpu": "4", "memory": "32Gi"},
                "limits": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"},
                "pool": "a100",
            }
        },
        "pools": {
            "a100": {
                "resource": "nvidia.com/gpu",
                "capacity": 4,
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
            },
            "gpu": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-5090"}},
        },
    }
}

MATRIX: dict[str, dict[str, Any]] = {
    "default": {},
    "cert-manager": {"certs": {"mode": "certManager"}},
    "external-redis": {
        "redis": {
            "mode": "external",
            "external": {
                "url": "rediss://redis.example.org:6380/0",
                "passwordSecret": {"name": "redis-creds", "key": "password"},
                "tls": {"caSecret": "redis-ca"},
            },
        }
    },
    "16-slices": {"config": {"pools": {"gpu": {"capacity": 16}}}},
    "two-pools": TWO_POOLS,
    "existing-secret": {"api": {"existingSecret": "gpu-queue-tokens"}},
    "dashboard-on": {"networkPolicy": {"enabled": True}, "config": {"dashboard": {"enabled": True}}},
    "everything-on": {
        "hubNamespaces": ["jhub", "jhub-staging"],
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "grafanaDashboard": {"enabled": True},
        "networkPolicy": {
            "enabled": True,
            "adminNamespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "platform-admins"}},
        },
        "redis": {"builtin": {"persistence": {"enabled": False}, "auth": {"enabled": False}}},
    },
}

# Expected (profiles, pools) of the rendered config per case.
EXPECTED_CONFIG: dict[str, tuple[dict[str, str | None], dict[str, int | str]]] = {
    "default": ({"cpu-only": None, "gpu-enabled": "gpu"}, {"gpu": "auto"}),
    "cert-manager": ({"cpu-only": None, "gpu-enabled": "gpu"}, {"gpu": "auto"}),
    "external-redis": ({"cpu-only": None, "gpu-enabled": "gpu"}, {"gpu": "auto"}),
    "16-slices": ({"cpu-only": None, "gpu-enabled": "gpu"}, {"gpu": 16}),
    "two-pools": ({"cpu-only": None, "gpu-enabled": "gpu", "a100-large": "a100"}, {"gpu": "auto", "a100": 4}),
    "existing-secret": ({"cpu-only": None, "gpu-enabled": "gpu"}, {"gpu": "auto"}),
    "everything-on": ({"cpu-only": None, "gpu-enabled": "gpu"}, {"gpu": "auto"}),
    "dashboard-on": ({"cpu-only": None, "gpu-enabled": "gpu"}, {"gpu": "auto"}),
}


@cache
def rendered(case: str) -> list[dict[str, Any]]:
    return render_chart(MATRIX[case])


def cases() -> list[str]:
    return list(MATRIX)


# --------------------------------------------------------------------------- helpers


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels AND every matchExpression) against labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def namespace_labels(name: str) -> dict[str, str]:
    """The label every namespace carries since Kubernetes 1.22."""
    return {"kubernetes.io/metadata.name": name}


def webhooks(objects: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    hooks: list[dict[str, Any]] = []
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for config in find(objects, kind):
            hooks.extend(config["webhooks"])
    return hooks


def container(objects: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    deployment = one(objects, "Deployment", FULLNAME)
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def secret_values(objects: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for secret in find(objects, "Secret"):
        for key, value in (secret.get("data") or {}).items():
            out[(secret["metadata"]["name"], key)] = base64.b64decode(value).decode()
        for key, value in (secret.get("stringData") or {}).items():
            out[(secret["metadata"]["name"], key)] = value
    return out


def placeholder(name: str, key: str) -> str:
    """What a Secret the chart does not render (existingSecret, external Redis) holds in a test."""
    return f"pw-{name}-{key}".replace(".", "-")


def deployment_env(objects: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The service container's environment as the kubelet would build it: Secret values resolved,
    field refs filled, ``$(VAR)`` references expanded."""
    secrets = secret_values(objects)
    env: dict[str, str] = {}
    for item in container(objects).get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), item["value"])
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            env[name] = {"metadata.name": f"{FULLNAME}-6d9f7-x2x4q", "metadata.namespace": NAMESPACE}[
                source["fieldRef"]["fieldPath"]
            ]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[name] = secrets.get((ref["name"], ref["key"]), placeholder(ref["name"], ref["key"]))
        else:
            raise AssertionError(f"unexpected env source {source}")
    return env


def service_config(objects: Sequence[Mapping[str, Any]], tmp_path: Path) -> Config:
    """The ConfigMap's file, loaded by the service's own loader with the Deployment's environment,
    from the path the Deployment's command names."""
    cm = one(objects, "ConfigMap", f"{FULLNAME}-config")
    args = build_parser().parse_args(container(objects)["args"])
    mount = next(m for m in container(objects)["volumeMounts"] if m["name"] == "config")
    assert Path(args.config).parent == Path(mount["mountPath"])
    path = tmp_path / Path(args.config).name
    path.write_text(cm["data"][Path(args.config).name])
    return load_config(path, env=deployment_env(objects))


Grant = tuple[str, str, str, str, str | None]  # (namespace or "cluster", apiGroup, resource, verb, resourceName)


def grants_of(objects: Sequence[Mapping[str, Any]], namespace: str, account: str) -> set[Grant]:
    """Every (scope, group, resource, verb, name) the bindings give one ServiceAccount."""
    roles = {(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"]): r for r in objects if "rules" in r}
    out: set[Grant] = set()
    for binding in objects:
        if binding.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(
            s["kind"] == "ServiceAccount" and s["name"] == account and s["namespace"] == namespace
            for s in binding["subjects"]
        ):
            continue
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else "cluster"
        ref = binding["roleRef"]
        role_ns = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], role_ns, ref["name"])]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or [None]:
                            out.add((scope, group, resource, verb, name))
    return out


# --------------------------------------------------------------------------- lint and schema


def test_helm_lint_passes_strict() -> None:
    lint_chart()
    lint_chart(MATRIX["everything-on"])


@pytest.mark.parametrize("case", cases())
def test_every_rendered_object_is_valid_kubernetes(case: str) -> None:
    objects = rendered(case)
    assert objects
    crd_objects = []
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            crd_objects.append(obj)
            continue
        for version in SCHEMA_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    for obj in crd_objects:
        assert obj["apiVersion"] in ("cert-manager.io/v1", "monitoring.coreos.com/v1")
        assert obj["metadata"]["namespace"] == NAMESPACE and obj["spec"]


@pytest.mark.parametrize("case", cases())
def test_every_namespaced_object_lands_in_the_release_or_a_hub_namespace(case: str) -> None:
    hubs = set(MATRIX[case].get("hubNamespaces", ["jhub"]))
    for obj in rendered(case):
        ns = obj["metadata"].get("namespace")
        if obj["kind"] == "RoleBinding" and ns != NAMESPACE:
            assert ns in hubs  # the only objects outside the release namespace: pod grants
        elif obj["kind"] not in ("ClusterRole", "ClusterRoleBinding") and "WebhookConfiguration" not in obj["kind"]:
            assert ns == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']} in {ns}"


# --------------------------------------------------------------------------- webhook registration


@pytest.mark.parametrize("case", cases())
def test_webhook_scope_is_the_hub_namespaces_and_never_ours_or_kube_system(case: str) -> None:
    hubs = MATRIX[case].get("hubNamespaces", ["jhub"])
    hooks = webhooks(rendered(case))
    assert len(hooks) == 2
    for hook in hooks:
        selector = hook["namespaceSelector"]
        assert not selector_matches(selector, namespace_labels(NAMESPACE))
        assert not selector_matches(selector, namespace_labels("kube-system"))
        assert not selector_matches(selector, namespace_labels("default"))
        for hub in hubs:
            assert selector_matches(selector, namespace_labels(hub))


async def test_webhooks_select_kubespawner_pods_but_not_their_own_pods() -> None:
    objects = rendered("default")
    hub_pod = await pod_manifest("alice", "gpu-enabled")
    own_pod_labels = one(objects, "Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    redis_pod_labels = one(objects, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    for hook in webhooks(objects):
        assert selector_matches(hook["objectSelector"], hub_pod["metadata"]["labels"])
        assert not selector_matches(hook["objectSelector"], own_pod_labels)
        assert not selector_matches(hook["objectSelector"], redis_pod_labels)


@pytest.mark.parametrize("case", cases())
def test_webhooks_answer_within_2s_fail_closed_and_have_no_side_effects(case: str) -> None:
    objects = rendered(case)
    mutating = one(objects, "MutatingWebhookConfiguration")["webhooks"]
    validating = one(objects, "ValidatingWebhookConfiguration")["webhooks"]
    for hook in [*mutating, *validating]:
        assert hook["timeoutSeconds"] == 2  # KubeSpawner gives a pod create 3 s
        assert hook["failurePolicy"] == "Fail"
        assert hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["clientConfig"]["service"] == {
            "name": FULLNAME,
            "namespace": NAMESPACE,
            "path": "/mutate" if hook in mutating else "/validate",
            "port": 443,
        }
        assert "caBundle" not in hook["clientConfig"]  # set by the hook Job or cert-manager, never rendered
    assert [h["rules"][0]["operations"] for h in mutating] == [["CREATE"]]
    assert [h["rules"][0]["operations"] for h in validating] == [["CREATE", "UPDATE"]]
    assert mutating[0]["reinvocationPolicy"] == "IfNeeded"
    assert all(h["rules"][0]["resources"] == ["pods"] for h in [*mutating, *validating])


@pytest.mark.parametrize("hubs", [["gpu-queue"], ["jhub", "kube-system"], []])
def test_render_refuses_a_scope_that_would_include_ours_or_kube_system_or_nothing(hubs: list[str]) -> None:
    with pytest.raises(HelmError, match="hubNamespaces"):
        render_chart({"hubNamespaces": hubs})


# The webhook.url mode: a service the API server reaches by URL, not through the release's Service
# (the dev cluster's local replicas use it), verified with a CA given in the values.
URL_CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()
URL_MODE: dict[str, Any] = {"webhook": {"url": "https://gpu-queue.example.org:8443/", "caBundle": URL_CA}}


@pytest.mark.parametrize("certs", ["selfManaged", "certManager"])
def test_webhook_url_mode_calls_the_url_with_the_ca_bundle_of_the_values(certs: str) -> None:
    values = {**URL_MODE, "certs": {"mode": certs}}
    lint_chart(values)
    objects = render_chart(values)
    for kind, path in (("MutatingWebhookConfiguration", "/mutate"), ("ValidatingWebhookConfiguration", "/validate")):
        config = one(objects, kind)
        (hook,) = config["webhooks"]
        assert hook["clientConfig"] == {"url": f"https://gpu-queue.example.org:8443{path}", "caBundle": URL_CA}
        # nothing else owns the caBundle: no cainjector annotation, and the Jobs do not patch it
        assert config["metadata"]["annotations"] == {"gpu-queue.io/ca-bundle-from": "values"}
        for version in SCHEMA_VERSIONS:
            kubernetes_validate.validate(config, version, strict=True)
    for job in find(objects, "Job"):
        assert build_parser().parse_args(job["spec"]["template"]["spec"]["containers"][0]["args"]).patch_webhooks == []
    assert not [g for g in grants_of(objects, NAMESPACE, f"{FULLNAME}-certs") if g[1] == "admissionregistration.k8s.io"]
    # the rest is as with the Service: the scope, the service's grants, the serving certificate
    assert grants_of(objects, NAMESPACE, FULLNAME) == set(SERVICE_GRANTS)
    for hook in webhooks(objects):
        assert selector_matches(hook["namespaceSelector"], namespace_labels("jhub"))
        assert not selector_matches(hook["namespaceSelector"], namespace_labels(NAMESPACE))
    assert find(objects, "Job" if certs == "selfManaged" else "Certificate")


def test_webhook_url_without_a_ca_bundle_keeps_the_charts_certificates() -> None:
    """A URL that serves the chart's own certificate (e.g. a name in certs.extraDnsNames): the
    caBundle is still set by the post-install Job, as with the Service."""
    objects = render_chart(
        {"webhook": {"url": "https://queue.example.org"}, "certs": {"extraDnsNames": ["queue.example.org"]}}
    )
    assert [h["clientConfig"] for h in webhooks(objects)] == [
        {"url": "https://queue.example.org/mutate"},
        {"url": "https://queue.example.org/validate"},
    ]
    post = one(objects, "Job", f"{FULLNAME}-certs-post")
    assert build_parser().parse_args(post["spec"]["template"]["spec"]["containers"][0]["args"]).patch_webhooks == [
        FULLNAME
    ]


@pytest.mark.parametrize(
    ("webhook", "match"),
    [
        ({"caBundle": URL_CA}, "only used with webhook.url"),  # with the Service, certs.mode owns it
        ({"url": "http://queue.example.org"}, "webhook/url"),  # the API server calls https only
        ({"url": "https://queue.example.org/?x=1"}, "webhook/url"),  # no query (nor fragment)
        ({"url": "https://user@queue.example.org"}, "webhook/url"),  # no credentials
    ],
)
def test_webhook_url_mode_refuses_what_the_api_server_would(webhook: dict[str, str], match: str) -> None:
    with pytest.raises(HelmError, match=match):
        render_chart({"webhook": webhook})


# --------------------------------------------------------------------------- the config file


@pytest.mark.parametrize("case", cases())
def test_rendered_config_loads_with_the_service_loader(case: str, tmp_path: Path) -> None:
    objects = rendered(case)
    config = service_config(objects, tmp_path)
    profiles, pools = EXPECTED_CONFIG[case]
    assert {name: p.pool for name, p in config.profiles.items()} == profiles
    assert {name: p.capacity for name, p in config.pools.items()} == pools
    assert config.namespaces == MATRIX[case].get("hubNamespaces", ["jhub"])
    assert config.service_account == SA
    assert config.controller.lease_name == f"{FULLNAME}-leader"
    assert config.server.port == 8443 and config.server.metrics_port == 8080
    ports = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    dashboard = {"dashboard": config.dashboard.port} if config.dashboard.enabled else {}
    assert ports == {"https": 8443, "metrics": 8080} | dashboard
    tls_mount = next(m for m in container(objects)["volumeMounts"] if m["name"] == "tls")
    assert config.tls.cert_file.parent == Path(tls_mount["mountPath"])
    assert config.api.read_tokens, "the API would refuse every request without a read token"


def test_generated_tokens_and_redis_password_reach_the_service(tmp_path: Path) -> None:
    objects = rendered("default")
    secrets = secret_values(objects)
    config = service_config(objects, tmp_path)
    assert [t.get_secret_value() for t in config.api.read_tokens] == [secrets[(f"{FULLNAME}-api", "read-tokens")]]
    assert [t.get_secret_value() for t in config.api.admin_tokens] == [secrets[(f"{FULLNAME}-api", "admin-tokens")]]
    password = secrets[(f"{FULLNAME}-redis", "redis-password")]
    assert config.redis.url.get_secret_value() == f"redis://:{password}@{FULLNAME}-redis.{NAMESPACE}.svc:6379/0"
    assert password not in one(objects, "ConfigMap")["data"]["config.yaml"]


def test_external_redis_gets_its_password_and_ca_without_putting_them_in_the_configmap(tmp_path: Path) -> None:
    objects = rendered("external-redis")
    assert not find(objects, "StatefulSet")
    config = service_config(objects, tmp_path)
    password = placeholder("redis-creds", "password")
    assert config.redis.url.get_secret_value() == (
        f"rediss://:{password}@redis.example.org:6380/0?ssl_ca_certs=/etc/gpu-queue/redis-ca/ca.crt"
    )
    assert "redis-creds" not in one(objects, "ConfigMap")["data"]["config.yaml"]
    mounts = {m["name"]: m["mountPath"] for m in container(objects)["volumeMounts"]}
    assert mounts["redis-ca"] == "/etc/gpu-queue/redis-ca"


def test_external_redis_url_with_credentials_is_refused() -> None:
    with pytest.raises(HelmError, match="credentials"):
        render_chart({"redis": {"mode": "external", "external": {"url": "redis://:hunter2@redis:6379/0"}}})


def test_existing_secret_is_used_and_no_token_secret_is_rendered(tmp_path: Path) -> None:
    objects = rendered("existing-secret")
    assert not find(objects, "Secret", f"{FULLNAME}-api")
    config = service_config(objects, tmp_path)
    assert [t.get_secret_value() for t in config.api.read_tokens] == [placeholder("gpu-queue-tokens", "read-tokens")]


def test_config_change_rolls_the_pods() -> None:
    def checksum(objects: list[dict[str, Any]]) -> str:
        annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    assert checksum(rendered("default")) != checksum(rendered("16-slices"))
    assert checksum(rendered("16-slices")) == checksum(render_chart(MATRIX["16-slices"]))


def test_generated_tokens_do_not_roll_the_pods_but_set_tokens_do() -> None:
    """Two renders draw two different random tokens (as an install and the stored token on the first
    upgrade differ in what the template sees); the pods' checksum must not move with them."""

    def api_checksum(objects: list[dict[str, Any]]) -> str:
        annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/api"])

    first, second = render_chart({}), render_chart({})
    tokens = [one(o, "Secret", f"{FULLNAME}-api")["data"]["read-tokens"] for o in (first, second)]
    assert tokens[0] != tokens[1], "the renders should have drawn different tokens"
    assert api_checksum(first) == api_checksum(second)
    assert api_checksum(render_chart({"api": {"readTokens": ["r" * 40]}})) != api_checksum(first)


# --------------------------------------------------------------------------- RBAC

# Every grant of the service's ServiceAccount, and why it needs it. Anything else fails the test.
SERVICE_GRANTS: dict[Grant, str] = {
    ("jhub", "", "pods", "get", None): "re-read a pod right before removing its gate",
    (
        "jhub",
        "",
        "pods",
        "patch",
        None,
    ): "remove the granted pod's own gate; rewrite requested-at (queue move, kept place)",
    ("jhub", "", "pods", "delete", None): "admin `queue rm`; a stuck head under stuckPolicy release (I7)",
    ("jhub", "", "events", "create", None): "position, grant and kept-place Events shown on the spawn page",
    ("jhub", "", "events", "list", None): "a slow start's Events: a volume that never mounts is stuck, a pull is not",
    ("cluster", "", "pods", "list", None): "pod informer: hub pods are the queue's truth; others count as in use (I1)",
    ("cluster", "", "pods", "watch", None): "pod informer",
    ("cluster", "", "nodes", "list", None): "node informer: capacity auto is the pool nodes' allocatable",
    ("cluster", "", "nodes", "watch", None): "capacity auto follows replicas 8 -> 16 with no restart",
    (NAMESPACE, "coordination.k8s.io", "leases", "create", None): "the first replica creates the Lease",
    (NAMESPACE, "coordination.k8s.io", "leases", "get", f"{FULLNAME}-leader"): "read the leader",
    (NAMESPACE, "coordination.k8s.io", "leases", "update", f"{FULLNAME}-leader"): "renew or take over",
}

CERTS_GRANTS: dict[Grant, str] = {
    (NAMESPACE, "", "secrets", "create", None): "first install: make the TLS Secret",
    (NAMESPACE, "", "secrets", "get", f"{FULLNAME}-tls"): "keep a still-valid certificate",
    (NAMESPACE, "", "secrets", "update", f"{FULLNAME}-tls"): "store a renewed certificate",
    (NAMESPACE, "", "secrets", "delete", f"{FULLNAME}-tls"): "replace a Secret of the wrong (immutable) type",
    **{
        ("cluster", "admissionregistration.k8s.io", kind, verb, FULLNAME): "set caBundle"
        for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
        for verb in ("get", "patch")
    },
}


def test_service_account_gets_exactly_the_minimum_grants() -> None:
    assert grants_of(rendered("default"), NAMESPACE, FULLNAME) == set(SERVICE_GRANTS)


def test_certificate_job_gets_exactly_the_minimum_grants() -> None:
    assert grants_of(rendered("default"), NAMESPACE, f"{FULLNAME}-certs") == set(CERTS_GRANTS)


def test_each_hub_namespace_gets_the_pod_grants_and_nothing_wider() -> None:
    grants = grants_of(rendered("everything-on"), NAMESPACE, FULLNAME)
    for hub in ("jhub", "jhub-staging"):
        assert {g for g in grants if g[0] == hub} == {(hub, *g[1:]) for g in SERVICE_GRANTS if g[0] == "jhub"}
    assert not {g for g in grants if g[0] == "cluster" and g[3] not in ("get", "list", "watch")}


def test_no_rule_uses_a_wildcard() -> None:
    for case in cases():
        for role in (o for o in rendered(case) if "rules" in o):
            for rule in role["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], role["metadata"]["name"]


def test_cert_manager_mode_needs_no_certificate_job_rbac() -> None:
    objects = rendered("cert-manager")
    assert grants_of(objects, NAMESPACE, f"{FULLNAME}-certs") == set()
    assert not find(objects, "Job")


# --------------------------------------------------------------------------- the Deployment


def test_deployment_runs_locked_down() -> None:
    objects = rendered("default")
    deployment = one(objects, "Deployment", FULLNAME)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container(objects)["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 10001
    assert "limits" in container(objects)["resources"] and "requests" in container(objects)["resources"]


def test_the_service_pods_mount_the_serving_pair_but_never_the_ca_key() -> None:
    for values in ("default", "cert-manager"):
        deployment = one(rendered(values), "Deployment", FULLNAME)
        (tls,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"]
        assert tls["secret"]["items"] == [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]


def test_deployment_is_highly_available() -> None:
    objects = rendered("default")
    deployment = one(objects, "Deployment", FULLNAME)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert selector_matches(term["labelSelector"], deployment["spec"]["template"]["metadata"]["labels"])
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    c = container(objects)
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_single_replica_gets_no_pdb_that_would_block_drains() -> None:
    assert not find(render_chart({"replicaCount": 1}), "PodDisruptionBudget")


def test_leader_election_identity_comes_from_the_pod() -> None:
    env = {e["name"]: e for e in container(rendered("default"))["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_service_routes_both_ports_to_the_webhook_pods_only() -> None:
    objects = rendered("default")
    service = one(objects, "Service", FULLNAME)
    pod_labels = one(objects, "Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    redis_labels = one(objects, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert selector_matches({"matchLabels": service["spec"]["selector"]}, pod_labels)
    assert not selector_matches({"matchLabels": service["spec"]["selector"]}, redis_labels)
    assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {(443, "https"), (8080, "metrics")}


# --------------------------------------------------------------------------- certificates


def test_self_managed_certificates_are_made_before_install_and_patched_after() -> None:
    objects = rendered("default")
    jobs = {j["metadata"]["name"]: j for j in find(objects, "Job")}
    pre, post = jobs[f"{FULLNAME}-certs-pre"], jobs[f"{FULLNAME}-certs-post"]
    assert pre["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert post["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    parser = build_parser()
    pre_args = parser.parse_args(pre["spec"]["template"]["spec"]["containers"][0]["args"])
    post_args = parser.parse_args(post["spec"]["template"]["spec"]["containers"][0]["args"])
    tls_volume = next(
        v for v in one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"
    )
    for args in (pre_args, post_args):
        assert args.secret == f"{NAMESPACE}/{tls_volume['secret']['secretName']}"
        assert (args.service, args.namespace) == (FULLNAME, NAMESPACE)
        assert args.renew_before_days == 30 and args.days == 365
    # at pre-install the webhook configurations do not exist yet: only the post Job patches them
    assert pre_args.patch_webhooks == []
    assert post_args.patch_webhooks == [one(objects, "MutatingWebhookConfiguration")["metadata"]["name"]]
    assert post_args.patch_webhooks == [one(objects, "ValidatingWebhookConfiguration")["metadata"]["name"]]
    for job in (pre, post):
        spec = job["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == f"{FULLNAME}-certs"
        assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    # the Job's RBAC exists before the Jobs run, in every phase they run in
    for obj in objects:
        if obj["metadata"]["name"] == f"{FULLNAME}-certs":
            annotations = obj["metadata"]["annotations"]
            assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade,post-install,post-upgrade"
            assert int(annotations["helm.sh/hook-weight"]) < 0
    assert all(is_hook(o) for o in objects if "certs" in o["metadata"]["name"])


def test_cert_manager_injects_the_ca_of_the_certificate_the_pods_mount() -> None:
    objects = rendered("cert-manager")
    certificate = one(objects, "Certificate", f"{FULLNAME}-tls")
    tls_volume = next(
        v for v in one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"
    )
    assert certificate["spec"]["secretName"] == tls_volume["secret"]["secretName"]
    assert f"{FULLNAME}.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        annotations = one(objects, kind)["metadata"]["annotations"]
        assert annotations["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{FULLNAME}-tls"
    ca = one(objects, "Certificate", f"{FULLNAME}-ca")
    assert ca["spec"]["isCA"] is True
    assert certificate["spec"]["issuerRef"]["name"] == one(objects, "Issuer", f"{FULLNAME}-ca")["metadata"]["name"]


def test_cert_manager_can_use_an_existing_issuer() -> None:
    objects = render_chart(
        {"certs": {"mode": "certManager", "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}}
    )
    assert not find(objects, "Issuer")
    assert one(objects, "Certificate")["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}


# --------------------------------------------------------------------------- Redis, monitoring, network


def test_builtin_redis_persists_its_append_only_file() -> None:
    objects = rendered("default")
    redis = one(objects, "StatefulSet", f"{FULLNAME}-redis")
    spec = redis["spec"]
    args = spec["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--dir") + 1] == "/data"
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert spec["replicas"] == 1
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert spec["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_service_monitor_scrapes_the_metrics_port() -> None:
    objects = rendered("everything-on")
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    service = one(objects, "Service", FULLNAME)
    assert selector_matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert not selector_matches(
        monitor["spec"]["selector"], one(objects, "Service", f"{FULLNAME}-redis")["metadata"]["labels"]
    )


def test_network_policy_keeps_admission_open_and_redis_closed() -> None:
    objects = rendered("everything-on")
    policy = one(objects, "NetworkPolicy", FULLNAME)
    rules = policy["spec"]["ingress"]
    admission = rules[0]
    assert admission["ports"] == [{"port": "https", "protocol": "TCP"}]
    assert "from" not in admission  # the API server is not a pod: no selector can name it
    api = rules[1]
    hub_peer = api["from"][0]
    assert selector_matches(hub_peer["namespaceSelector"], namespace_labels("jhub-staging"))
    assert hub_peer["podSelector"] == {"matchLabels": {"component": "hub"}}
    assert api["from"][1]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "platform-admins"}}
    redis_policy = one(objects, "NetworkPolicy", f"{FULLNAME}-redis")
    peers = redis_policy["spec"]["ingress"][0]["from"]
    webhook_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert [selector_matches(p["podSelector"], webhook_labels) for p in peers] == [True]


def test_admission_can_be_narrowed_to_the_control_plane() -> None:
    objects = render_chart(
        {"networkPolicy": {"enabled": True, "admissionFrom": [{"ipBlock": {"cidr": "10.0.0.0/28"}}]}}
    )
    rules = one(objects, "NetworkPolicy", FULLNAME)["spec"]["ingress"]
    assert rules[0]["from"] == [{"ipBlock": {"cidr": "10.0.0.0/28"}}]


def test_values_schema_rejects_a_typo() -> None:
    with pytest.raises(HelmError, match=r"replicaCount"):
        render_chart({"replicaCount": "two"})
    with pytest.raises(HelmError):
        render_chart({"webhook": {"timeoutSecond": 2}})


def test_values_file_documents_every_value() -> None:
    """Every leaf of values.yaml has a comment right above it or above one of its parent keys."""
    lines = (Path(__file__).resolve().parents[2] / "charts" / "gpu-queue" / "values.yaml").read_text().splitlines()

    def documented(i: int) -> bool:
        return i > 0 and lines[i - 1].strip().startswith("#")

    def ancestors(i: int) -> list[int]:
        found, indent = [], _indent(lines[i])
        for j in range(i - 1, -1, -1):
            if _KEY.match(lines[j]) and _indent(lines[j]) < indent:
                found.append(j)
                indent = _indent(lines[j])
        return found

    undocumented = [
        line.strip()
        for i, line in enumerate(lines)
        if (m := _KEY.match(line))
        and m.group(2).strip()
        and not documented(i)
        and not any(documented(a) for a in ancestors(i))
    ]
    assert undocumented == []


_KEY = re.compile(r"^\s*([A-Za-z][\w./-]*):(.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def test_extra_dns_names_reach_both_certificate_modes() -> None:
    """A port-forward to localhost can verify the serving certificate when the admin asks for it."""
    objects = render_chart({"certs": {"extraDnsNames": ["localhost", "queue.example.org"]}})
    jobs = [o for o in find(objects, "Job") if "certs" in o["spec"]["template"]["spec"]["containers"][0]["args"]]
    assert jobs
    for job in jobs:
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        parsed = build_parser().parse_args(args)
        assert parsed.dns == ["localhost", "queue.example.org"]
    cert_manager = render_chart({"certs": {"mode": "certManager", "extraDnsNames": ["localhost"]}})
    served = [o for o in find(cert_manager, "Certificate") if "localhost" in o["spec"].get("dnsNames", [])]
    assert len(served) == 1


def test_the_dashboard_gets_a_port_a_service_port_and_only_the_hubs_proxy_may_reach_it(tmp_path: Path) -> None:
    objects = rendered("dashboard-on")
    ports = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    assert ports["dashboard"] == 8090
    service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "gpu-queue")
    assert {"name": "dashboard", "port": 8090, "targetPort": "dashboard", "protocol": "TCP"} in service["spec"]["ports"]
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "gpu-queue")
    rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "dashboard")
    assert rule["from"][0]["podSelector"] == {"matchLabels": {"component": "proxy"}}
    config = service_config(objects, tmp_path)
    assert config.dashboard.enabled and config.dashboard.port == 8090
    assert "dashboard" not in {p["name"] for p in container(rendered("default"))["ports"]}, "off by default"


def test_the_grafana_dashboard_is_a_configmap_for_the_sidecar_and_plots_only_metrics_the_service_exports() -> None:
    from webhook.metrics import REGISTRY

    maps = [o for o in rendered("everything-on") if o["kind"] == "ConfigMap" and "grafana" in o["metadata"]["name"]]
    assert len(maps) == 1 and maps[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert not [o for o in rendered("default") if "grafana" in o["metadata"]["name"]], "off by default"
    dashboard = json.loads(maps[0]["data"]["gpu-queue.json"])
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs.append(dashboard["templating"]["list"][1]["query"]["query"])
    exported = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    for family in REGISTRY.collect():  # the series names each family exports, with or without samples yet
        exported |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    used = {name for expr in exprs for name in re.findall(r"gpu_queue_[a-z_]+", expr)}
    assert used and used <= exported, f"not exported by the service: {sorted(used - exported)}"
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert "Slices in use and capacity" in titles and "Share of time someone was waiting (last 24 h)" in titles
