"""The story's promises (checks), what was measured, and the summary the demo ends with."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpu_queue_dev.cluster import DevCluster
from gpu_queue_dev.demo.cast import Cast


@dataclass
class Check:
    """One promise of the story; ``ok`` is None until the story reaches it."""

    title: str
    ok: bool | None = None
    detail: str = ""

    @property
    def label(self) -> str:
        return {None: "not run", True: "ok", False: "FAILED"}[self.ok]


@dataclass
class Facts:
    """What was measured, for the summary."""

    fill_seconds: float | None = None
    waiting_line: str = ""
    cpu_seconds: float | None = None
    cpu_node: str = ""
    grant_latency: float | None = None
    granted_line: str = ""


@dataclass
class Outcome:
    """The story's result: every check, the facts, and the first failure's reason."""

    checks: dict[str, Check]
    facts: Facts
    failure: str = ""
    startup_seconds: float = 0.0
    story_seconds: float = 0.0
    started: bool = False
    leftovers: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.started and not self.failure and all(c.ok for c in self.checks.values())


def render_summary(outcome: Outcome, cast: Cast, slices: int) -> str:
    """What happened, the grant latency, and every check with its result."""
    f = outcome.facts
    lines = ["summary"]
    happened: list[str] = []
    if f.fill_seconds is not None:
        happened.append(
            f"{slices} GPU users ({cast.gpu[0]} ... {cast.gpu[-1]}) took the {slices} slices in {f.fill_seconds:.1f}s"
        )
    if f.waiting_line:
        happened.append(f'{cast.ninth} was queued; the spawn page said "{f.waiting_line}"')
    if f.cpu_seconds is not None:
        happened.append(f"{cast.cpu} (CPU only) started at once ({f.cpu_seconds:.1f}s) while the GPU pool was full")
    if f.grant_latency is not None:
        happened.append(f"{cast.leaver} logged out; {cast.ninth} got the slice {f.grant_latency:.3f}s later")
    if f.granted_line:
        happened.append(f'{cast.ninth}\'s spawn page said "{f.granted_line}"')
    if happened:
        lines.append("  what happened:")
        lines += [f"    - {line}" for line in happened]
    if f.grant_latency is not None:
        lines.append(f"  grant latency (logout to slice granted): {f.grant_latency * 1000:.0f} ms")
    lines.append("  checks:")
    width = max((len(c.label) for c in outcome.checks.values()), default=6) + 2
    for check in outcome.checks.values():
        detail = "" if not check.detail else f": {check.detail}" if check.ok is False else f" ({check.detail})"
        lines.append(f"    {('[' + check.label + ']').ljust(width)} {check.title}{detail}")
    timing = f"cluster start {outcome.startup_seconds:.1f}s, story {outcome.story_seconds:.1f}s"
    total = len(outcome.checks)
    if outcome.passed:
        lines.append(f"  result: all {total} checks passed ({timing})")
    else:
        failed = [c for c in outcome.checks.values() if c.ok is False]
        reason = outcome.failure or (failed[0].detail if failed else "the story did not finish")
        lines.append(f"  result: FAILED, {len(failed)} of {total} checks failed ({timing})")
        lines.append(f"  reason: {reason}")
    return "\n".join(lines)


def usage_after_keep(cluster: DevCluster) -> str:
    """How to look at the cluster the demo left up."""
    st = cluster.state
    return "\n".join(
        [
            "the cluster stays up (--keep); use it:",
            f"  export KUBECONFIG={st.kubeconfig}",
            f"  kubectl get pods -n {st.hub_namespace}",
            f"  gpu-queue status --api {cluster.api_url(st.webhook_replica)} --ca {st.ca_file} "
            f"--token {st.admin_token}",
            f"  gpu-queue dev down --state-dir {st.state_dir}",
            f"  (also in {st.state_dir / 'env.sh'}; logs in {cluster.logs})",
        ]
    )
