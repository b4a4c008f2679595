"""Wait-time estimates for a queued position: a range, or "unknown" while there is too little data.

The method (the docs quote this):

1. **Rate of freed slices.** A slice frees when a holder's pod ends (logout, idle cull, stop).
   From the last 20 release times the estimator takes the intervals between consecutive releases
   and smooths them as TCP smooths round-trip times (RFC 6298): an exponentially weighted moving
   average of the interval (the newest weighs 1/4) and one of its absolute deviation (the spread).
   When the time since the newest release is already longer than that average, it is folded in as
   one more interval, so a quiet evening lengthens estimates instead of keeping the afternoon's rate.
2. **Slices needed.** A queued pod needs *n = s - free* releases, where *s* is the slices it and
   everyone ahead of it ask for (its position *p* when every profile asks for one slice) and
   *free = capacity - in use*. If they fit already (*n <= 0*), the wait is under a minute (the
   controller's next pass).
3. **Range.** *n* intervals take about *n x average*; the range is that centre plus or minus
   *sqrt(n) x spread* (the spread of a sum of *n* independent intervals), and at least plus or minus
   15 % of the centre. It widens with the spread of the intervals and with the position.
4. **Idle-culler bound** (independent of the rate). JupyterHub's idle culler stops a server that
   has been idle for ``cullTimeoutSeconds``. If every holder is idle, a slice frees at the latest at
   its grant time plus that timeout, and the user who gets it next is culled at most one timeout
   later; the *p*-th slice handed out this way is the latest start for position *p*. Active users
   are never culled, so this bounds the wait **only when the holders are idle**: it is reported in
   ``method`` and never clips the range.
5. **Unknown.** Until ``min_samples`` release intervals have been observed, ``known`` is false and
   there are no numbers (a guess without data reads like a promise); ``method`` still gives the
   idle-culler bound, as a hint for admins.
6. **Rounding.** The lower end rounds down and the upper end up, to 1 minute below 10 minutes,
   5 minutes below an hour and 15 minutes above.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import datetime

from webhook.models import Eta, Holder

WINDOW = 20  # release times used: recent enough to follow the day, enough to smooth
ALPHA = 0.25  # weight of the newest interval in the average (RFC 6298's 1/8 reacts too slowly here)
BETA = 0.25  # weight of the newest deviation in the spread
MIN_RELATIVE_HALF_WIDTH = 0.15
FREE_SLICE_SECONDS = 60.0


def _step(seconds: float) -> float:
    if seconds < 600:
        return 60.0
    if seconds < 3600:
        return 300.0
    return 900.0


def round_range(low: float, high: float) -> tuple[float, float]:
    """Round outwards to sensible minutes; the step follows the upper end so both ends agree."""
    step = _step(high)
    lo = math.floor(max(low, 0.0) / step) * step
    hi = math.ceil(max(high, low, 0.0) / step) * step
    return lo, max(hi, lo, step)


def smoothed_interval(release_times: Sequence[datetime], now: datetime) -> tuple[float, float, int] | None:
    """(average interval, spread, intervals seen) from the newest ``WINDOW`` release times, or None
    without at least one interval. The open interval since the newest release counts when longer."""
    times = sorted(release_times)[-WINDOW:]
    if len(times) < 2:
        return None
    intervals = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    mean, dev = intervals[0], intervals[0] / 2
    for x in intervals[1:]:
        dev = (1 - BETA) * dev + BETA * abs(x - mean)
        mean = (1 - ALPHA) * mean + ALPHA * x
    quiet = (now - times[-1]).total_seconds()
    if quiet > mean:
        dev = (1 - BETA) * dev + BETA * abs(quiet - mean)
        mean = (1 - ALPHA) * mean + ALPHA * quiet
    return mean, dev, len(intervals)


def culler_bound(
    *, position: int, capacity: int, holders: Sequence[Holder], cull_timeout_seconds: float, now: datetime
) -> float | None:
    """Latest start (seconds from now) of ``position`` if every holder, and everyone ahead, is idle.

    Each slice frees at the latest at its grant time + the cull timeout (a free slice: now); the
    user ahead who takes it frees it again one timeout later. Holders beyond the capacity (it
    shrank) free slices that are not handed out again. None when the pool has no capacity. Each
    holder counts as one slice here: a two-slice holder frees two at once, so the bound is loose
    (later than the truth), never early.
    """
    if capacity <= 0:
        return None
    start = now.timestamp()
    frees = sorted(max(start, h.granted_at.timestamp() + cull_timeout_seconds) for h in holders)
    frees = [start] * max(capacity - len(holders), 0) + frees[max(len(holders) - capacity, 0) :]
    # Every slice frees within [now, now + timeout], so the hand-outs go round the slices in this
    # order, one timeout per round: the position's turn is a closed form, not a walk (O(C log C)).
    rounds, slot = divmod(position - 1, capacity)
    return max(frees[slot] + rounds * cull_timeout_seconds - start, 0.0)


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{round(seconds)}s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def estimate(
    *,
    slices: int,
    capacity: int,
    in_use: int,
    holders: Sequence[Holder],
    release_times: Sequence[datetime],
    cull_timeout_seconds: float,
    now: datetime,
    min_samples: int = 3,
) -> Eta:
    """The wait of a queued pod as a range; see the module docstring. ``slices`` is what it and
    everyone ahead of it ask for (its position when every profile asks for one slice)."""
    if slices < 1:
        raise ValueError(f"slices must be >= 1, got {slices}")
    if capacity <= 0:
        return Eta(known=False, method="the pool has no capacity (no nodes offer the resource)")
    free = max(capacity - in_use, 0)
    needed = slices - free
    if needed <= 0:
        return Eta(
            known=True,
            min_seconds=0.0,
            max_seconds=FREE_SLICE_SECONDS,
            method="a slice is free: the controller grants it on its next pass",
        )

    bound = culler_bound(
        position=slices, capacity=capacity, holders=holders, cull_timeout_seconds=cull_timeout_seconds, now=now
    )
    culler = (
        f"if the holders are idle, the idle culler frees a slice for this position within {_minutes(bound)}"
        if bound is not None
        else ""
    )
    rate = smoothed_interval(release_times, now)
    seen = 0 if rate is None else rate[2]
    if rate is None or seen < max(min_samples, 1):
        return Eta(known=False, method=f"unknown: {seen} of {min_samples} release intervals observed; {culler}")

    mean, spread, _ = rate
    centre = needed * mean
    half = max(math.sqrt(needed) * spread, MIN_RELATIVE_HALF_WIDTH * centre)
    low, high = round_range(centre - half, centre + half)
    return Eta(
        known=True,
        min_seconds=low,
        max_seconds=high,
        method=(
            f"{needed} slice release(s) needed at one per {_minutes(mean)} "
            f"(spread {_minutes(spread)}, average of the last {seen} intervals); {culler}"
        ),
    )


def format_eta(eta: Eta) -> str:
    """Human text for Events and the spawn page: ``about 15-25 min``, ``about 1-2 h``,
    ``wait time unknown``."""
    if not eta.known or eta.max_seconds is None:
        return "wait time unknown"
    low = max(eta.min_seconds or 0.0, 0.0)
    high = max(eta.max_seconds, low)
    if high <= 60:
        return "less than a minute"
    if high <= 3600:
        lo_m, hi_m = math.floor(low / 60), math.ceil(high / 60)
        if lo_m == hi_m:
            return f"about {hi_m} min"
        return f"under {hi_m} min" if lo_m == 0 else f"about {lo_m}-{hi_m} min"
    lo_h, hi_h = math.floor(low / 3600 + 0.5), math.ceil(high / 3600)
    if lo_h == hi_h:
        return f"about {hi_h} h"
    return f"under {hi_h} h" if lo_h == 0 else f"about {lo_h}-{hi_h} h"


__all__ = ["culler_bound", "estimate", "format_eta", "round_range", "smoothed_interval"]
