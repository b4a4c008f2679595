"""Configuration: the shipped seed, env overrides, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook.cli import main
from webhook.config import ConfigError, load_config


def test_shipped_default_is_the_seed() -> None:
    config = load_config(env={})
    assert set(config.profiles) == {"cpu-only", "gpu-enabled"}
    gpu = config.profiles["gpu-enabled"]
    assert gpu.pool == "gpu" and gpu.limits == {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1"}
    assert gpu.requests == {"cpu": "1", "memory": "2Gi"}
    assert config.profiles["cpu-only"].limits == {"cpu": "2", "memory": "4Gi"}
    assert config.pools["gpu"].capacity == "auto" and config.pools["gpu"].keep_place_seconds == 300
    assert config.gate_name == "gpu-queue.io/slice" and config.profile_label == "gpu-queue.io/profile"


def test_the_seed_keeps_cpu_users_off_gpu_nodes_and_gpu_pods_on_z2jh_user_nodes() -> None:
    config = load_config(env={})
    cpu = config.node_constraints("cpu-only")
    assert not cpu.allows("gpu-1", {"nvidia.com/gpu.present": "true"}, ())
    assert cpu.allows("cpu-1", {"kubernetes.io/os": "linux"}, ())
    gpu = config.pools["gpu"].constraints
    assert [c.tolerations for c in gpu] == [config.node_constraints("gpu-enabled").tolerations]
    assert {t.key for t in gpu[0].tolerations} == {"hub.jupyter.org/dedicated", "hub.jupyter.org_dedicated"}
    assert config.placements["cpu-only"].terms and not config.placements["gpu-enabled"].node_selector


def test_a_pool_profile_gets_its_pools_node_selector(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    seed = (Path(__file__).parents[2] / "webhook/default-config.yaml").read_text()
    path.write_text(seed.replace("    nodeSelector: {}", "    nodeSelector: {nvidia.com/gpu.product: RTX-5090}"))
    config = load_config(path, env={})
    assert config.pools["gpu"].node_selector == {"nvidia.com/gpu.product": "RTX-5090"}
    assert config.placements["gpu-enabled"].node_selector == {"nvidia.com/gpu.product": "RTX-5090"}
    assert config.placements["cpu-only"].node_selector == {}


def test_env_overrides_nested_fields_and_reads_yaml_scalars() -> None:
    config = load_config(
        env={
            "GPU_QUEUE_POOLS__GPU__CAPACITY": "16",
            "GPU_QUEUE_REDIS__URL": "redis://r:6379/1",
            "GPU_QUEUE_API__READ_TOKENS": "a,b",
            "GPU_QUEUE_API__ADMIN_TOKENS": "123456",
            "GPU_QUEUE_SERVER__METRICS_PORT": "0",
        }
    )
    assert config.pools["gpu"].capacity == 16
    assert config.redis.url.get_secret_value() == "redis://r:6379/1"
    assert [t.get_secret_value() for t in config.api.read_tokens] == ["a", "b"]
    assert [t.get_secret_value() for t in config.api.admin_tokens] == ["123456"]
    assert config.server.metrics_port == 0


def test_cli_variables_with_the_same_prefix_are_not_configuration() -> None:
    env = {"GPU_QUEUE_API_URL": "https://x", "GPU_QUEUE_TOKEN": "t", "GPU_QUEUE_CA": "/ca", "GPU_QUEUE_DEV_DIR": "/d"}
    assert load_config(env=env) == load_config(env={})


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("pools: {gpu: {capacity: -1}}\nprofiles: {}", "pools.gpu.capacity"),
        ("profiles: {g: {limits: {cpu: lots}}}", "profiles.g.limits"),
        ("profiles: {g: {limits: {cpu: '1'}, pool: nope}}", "profiles.g.pool"),
        ("server: {prot: 1}", "server.prot"),
        ("profiles: {g: {requests: {cpu: '4'}, limits: {cpu: '2'}}}", "requests.cpu"),
        ("profiles: {g: {affinity: {nodeAffinty: {}}}}", "profiles.g.affinity"),
        (
            "profiles: {g: {affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: "
            "{nodeSelectorTerms: [{matchExpressions: [{key: a, operator: Has}]}]}}}}}",
            "operator",
        ),
        (
            "profiles: {g: {affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: "
            "{nodeSelectorTerms: [{}]}}}}}",
            "matches no node",
        ),
        (
            "profiles: {g: {affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: "
            "{nodeSelectorTerms: [{matchExpressions: [{key: a, operator: In, values: [1]}]}]}}}}}",
            "quote numbers",
        ),
        ("profiles: {g: {tolerations: [{key: a, operator: Exist}]}}", "profiles.g.tolerations"),
        ("profiles: {g: {tolerations: [{operator: Equal, value: x}]}}", "empty key"),
        ("profiles: {g: {tolerations: [{key: a, effect: NoSchedule, tolerationSeconds: 5}]}}", "NoExecute"),
        ("profiles: {g: {nodeSelector: [a]}}", "profiles.g.nodeSelector"),
        (
            "pools: {gpu: {nodeSelector: {zone: a}}}\n"
            "profiles: {g: {pool: gpu, limits: {nvidia.com/gpu: '1'}, nodeSelector: {zone: b}}}",
            "profiles.g.nodeSelector.zone",
        ),
    ],
)
def test_bad_file_fails_with_a_message_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text + "\nmissingProfile: allow\nunknownProfile: allow\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert field in str(caught.value)


def test_config_check_prints_the_effective_config_or_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "pools: {gpu: {capacity: 16}}\n"
        + (Path(__file__).parents[2] / "webhook/default-config.yaml").read_text().split("pools:")[0]
    )
    assert main(["config", "check", str(good)]) == 0
    assert "capacity: 16" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("redis: [1, 2]\n")
    assert main(["config", "check", str(bad)]) == 1
    assert "redis" in capsys.readouterr().err
    assert main(["config", "check", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err
