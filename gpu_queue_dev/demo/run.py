"""``gpu-queue demo``'s driver: check what can be checked before starting anything, start the dev
cluster, play the story, print the summary, and tear everything down (also on Ctrl-C or SIGTERM)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

from gpu_queue_dev.cluster import DevCluster, DevClusterError, missing_cluster_tools
from gpu_queue_dev.cluster.procs import pid_matches
from gpu_queue_dev.cluster.state import load_state
from gpu_queue_dev.demo.cast import cast_for
from gpu_queue_dev.demo.outcome import Facts, Outcome, render_summary, usage_after_keep
from gpu_queue_dev.demo.screen import Screen, is_terminal
from gpu_queue_dev.demo.story import Story, StoryFailed


async def _play(cluster: DevCluster, screen: Screen, pace: float, outcome: Outcome) -> None:
    """Start the cluster, play the story, fill ``outcome``; leaves stopping to the caller."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)  # SIGTERM tears down like Ctrl-C
    try:
        await _play_inner(cluster, screen, pace, outcome)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _play_inner(cluster: DevCluster, screen: Screen, pace: float, outcome: Outcome) -> None:
    screen.say(f"starting a dev cluster in {cluster.state_dir}")
    try:
        await cluster.start()
    except DevClusterError as exc:
        outcome.failure = f"the dev cluster did not start: {exc}"
        return
    outcome.started = True
    outcome.startup_seconds = cluster.state.startup_seconds
    st = cluster.state
    screen.say(
        f"  Kubernetes {st.kubernetes_version}; node {st.gpu_node} with {st.slices} nvidia.com/gpu, "
        f"node {st.cpu_node}; hub namespace {st.hub_namespace}; gpu-queue at {cluster.api_url(0)}"
    )
    screen.say()
    kube = cluster.kube()  # the admin identity, as a hub's kubeconfig would be
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            story = Story(cluster, kube, http, screen, pace)
            outcome.checks = story.checks
            outcome.facts = story.facts
            refresher = asyncio.create_task(story.live()) if screen.live else None
            try:
                await story.play()
            except StoryFailed as exc:
                outcome.failure = str(exc)
            finally:
                if refresher is not None:
                    refresher.cancel()
                    await asyncio.gather(refresher, return_exceptions=True)
                    await story.refresh()
                screen.freeze()
    finally:
        outcome.story_seconds = time.monotonic() - started
        await kube.aclose()


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """Teardown must finish: a second Ctrl-C would otherwise leave processes behind."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _teardown(cluster: DevCluster, say: Callable[[str], None]) -> list[str]:
    """Stop every process; the names of any that would not stop."""
    started = time.monotonic()
    with _signals_ignored():
        result = cluster.stop()
    left = [f"{name} ({what})" for name, what in result.items() if what.startswith("still running")]
    forced = [name for name, what in result.items() if what.startswith("killed")]
    note = f"; {', '.join(forced)} needed SIGKILL" if forced else ""
    say(
        f"stopped the dev cluster ({len(result)} processes, {time.monotonic() - started:.1f}s{note}); "
        f"logs kept in {cluster.logs}"
    )
    return left


def _running_cluster(state_dir: Path) -> str | None:
    """Why the demo cannot use ``state_dir`` (a dev cluster is up there), or None."""
    try:
        state = load_state(state_dir)
    except (OSError, ValueError) as exc:
        return f"cannot read the dev cluster state in {state_dir}: {exc}"
    if state is None:
        return None
    alive = [name for name, p in state.processes.items() if pid_matches(p.pid, p.start_time)]
    if not alive:
        return None
    return (
        f"a dev cluster is already running in {state_dir} ({', '.join(alive)}).\n"
        "The demo starts its own cluster with an empty hub namespace. Stop that one first:\n"
        f"  gpu-queue dev down --state-dir {state_dir}\n"
        "or play the demo in another directory: gpu-queue demo --state-dir DIR"
    )


def _preflight(args: argparse.Namespace, state_dir: Path) -> str | None:
    """Everything that can be said before starting anything: the reason not to start, or None."""
    if args.slices < 1:
        return f"--slices must be at least 1 (the story fills the GPU pool), got {args.slices}"
    if args.pace < 0:
        return f"--pace must be 0 or more seconds, got {args.pace}"
    running = _running_cluster(state_dir)
    if running is not None:
        return running
    missing = missing_cluster_tools()
    if missing:
        return (
            f"missing tools: {', '.join(missing)}\n"
            "build them once with `make setup` (or tools/build.sh from the repository); "
            "a cold build takes 15-30 minutes, later runs use the cache"
        )
    try:
        import kubespawner  # noqa: F401
    except ImportError:
        return "jupyterhub-kubespawner is not installed (the demo builds pods with it): pip install 'gpu-queue[hub]'"
    return None


def run_demo(args: argparse.Namespace) -> int:
    """``gpu-queue demo``: 0 when the story happened as the design says, 1 when it did not, 2 when
    it could not start (missing tools, a cluster already up), 130/143 when interrupted."""
    out = sys.stdout
    state_dir = Path(args.state_dir).expanduser().resolve()
    reason = _preflight(args, state_dir)
    if reason is not None:
        print(f"gpu-queue demo: {reason}", file=sys.stderr, flush=True)
        return 2
    screen = Screen(out, is_terminal(out))
    screen.say("gpu-queue demo: the seed story on a local control plane (no Docker needed)")
    screen.say(
        f"  {args.slices} users fill a GPU time-sliced into {args.slices}; one more queues and is told where it "
        "stands;\n  a CPU user starts at once; a GPU user logs out and the queued one gets the slice."
    )
    screen.say()
    cluster = DevCluster(state_dir, slices=args.slices, replicas=1, progress=lambda line: screen.say(f"  {line}"))
    outcome = Outcome(checks={}, facts=Facts())
    interrupted = 0
    try:
        asyncio.run(_play(cluster, screen, args.pace, outcome))
    except KeyboardInterrupt:
        interrupted = 130
    except asyncio.CancelledError:
        interrupted = 143  # SIGTERM
    except Exception as exc:  # a bug or an unexpected answer: still tear down, and show where
        screen.freeze()
        traceback.print_exc()
        outcome.failure = f"unexpected error: {exc.__class__.__name__}: {exc}"
        outcome.started = False
    screen.freeze()
    if interrupted:
        screen.say("interrupted: stopping the dev cluster")
        _teardown(cluster, screen.say)
        return interrupted
    if not outcome.started:
        print(f"gpu-queue demo: {outcome.failure}", file=sys.stderr, flush=True)
        _teardown(cluster, screen.say)
        return 1
    screen.say(render_summary(outcome, cast_for(cluster.state.slices), cluster.state.slices))
    screen.say()
    if args.keep:
        screen.say(usage_after_keep(cluster))
    else:
        left = _teardown(cluster, screen.say)
        if left:
            screen.say(f"gpu-queue demo: processes left behind: {', '.join(left)}")
            return 1
    return 0 if outcome.passed else 1
