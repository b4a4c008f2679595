"""The recorded KubeSpawner pods the unit tier reads are what the installed KubeSpawner builds now."""

from __future__ import annotations

import json

from gpu_queue_dev.spawnerpods import PROFILE_LIST, render_cases
from tests.helpers.spawner_pods import RECORDING, recording


async def test_recorded_pods_are_what_kubespawner_builds_today() -> None:
    recorded = recording()
    fresh = await render_cases(recorded["cases"])
    assert fresh["kubespawner"] == recorded["kubespawner"], "re-record: KubeSpawner's version changed"
    for old, new in zip(recorded["cases"], fresh["cases"], strict=True):
        assert json.dumps(new, sort_keys=True) == json.dumps(old, sort_keys=True), (
            f"{RECORDING.name} is stale for {old['user']}/{old['profile']}: "
            "run `python -m gpu_queue_dev.spawnerpods record tests/unit/data/kubespawner-pods.json`"
        )


def test_the_recording_uses_the_docs_profile_list() -> None:
    assert recording()["profileList"] == PROFILE_LIST
