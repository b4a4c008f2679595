"""``gpu-queue demo``: the seed story, played on a local control plane with real KubeSpawner pods.

It is the README's first command, so it explains itself as it goes: it starts a dev cluster
(etcd, kube-apiserver, kube-scheduler, kwok fake nodes, Redis and the service), creates pods
exactly as a zero-to-jupyterhub hub creates them, shows what a user sees (the spawn page's lines,
made from the pod's Events) and what an admin sees (the queue API, a live table of pods), checks
that what the design promises happened, and tears the cluster down. It exits non-zero, naming
the step that went wrong, when the story did not happen as expected, so it doubles as a smoke
test of a fresh checkout.

Modules: ``cast`` (who plays), ``story`` (the steps and their checks), ``pods`` (reading pods and
Events, the pods table), ``screen`` (terminal output), ``outcome`` (checks, facts, the summary),
``run`` (the command: preflight, start, play, teardown).
"""

from gpu_queue_dev.demo.cast import CPU_USER, GPU_USERS, NINTH_USER, Cast, cast_for
from gpu_queue_dev.demo.outcome import Outcome, render_summary
from gpu_queue_dev.demo.run import run_demo
from gpu_queue_dev.demo.screen import Screen
from gpu_queue_dev.demo.story import Story, StoryFailed

__all__ = [
    "CPU_USER",
    "GPU_USERS",
    "NINTH_USER",
    "Cast",
    "Outcome",
    "Screen",
    "Story",
    "StoryFailed",
    "cast_for",
    "render_summary",
    "run_demo",
]
