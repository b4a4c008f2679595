"""Who plays the seed story: as many GPU users as slices, a ninth who queues, a CPU user, and the
user who logs out; and the profiles' names as the hub's profile list shows them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gpu_queue_dev.spawnerpods import PROFILE_LIST

GPU_PROFILE: Final = "gpu-enabled"
CPU_PROFILE: Final = "cpu-only"

# Realistic hub user names: KubeSpawner escapes them into pod names, so the raw name (with its dot
# or @) survives only in the hub.jupyter.org/username annotation, which is what the queue API uses.
GPU_USERS: Final = ("alice", "bob.smith", "carmen", "dmitri", "esther", "farid", "grace", "hiro")
NINTH_USER: Final = "ines@physics.example.edu"
CPU_USER: Final = "jonas"


@dataclass(frozen=True)
class Cast:
    """Who does what: ``gpu`` fill the pool, ``ninth`` queues, ``cpu`` starts at once, ``leaver``
    logs out."""

    gpu: tuple[str, ...]
    ninth: str
    cpu: str
    leaver: str


def cast_for(slices: int) -> Cast:
    """As many GPU users as slices: the seed's eight names first, then numbered ones."""
    extra = tuple(f"user{i:02d}" for i in range(len(GPU_USERS) + 1, slices + 1))
    gpu = (GPU_USERS + extra)[:slices]
    return Cast(gpu=gpu, ninth=NINTH_USER, cpu=CPU_USER, leaver=gpu[min(3, slices - 1)])


def profile_title(slug: str) -> str:
    """The profile's display name as the hub's profile list shows it."""
    for entry in PROFILE_LIST:
        if entry["slug"] == slug:
            return str(entry["display_name"])
    return slug


def profile_short(slug: str | None) -> str:
    if slug is None:
        return "-"
    return profile_title(slug).split(" - ", 1)[0]
