"""What-if replay: "how many slices would this pool have needed?", answered from recorded requests.

A pool's recorded requests (when each arrived, how many slices it asked for, how long it held
them once granted) are replayed against another slice count with gpu-queue's own discipline, so
the answer says what *this* queue would have done, not what a textbook queue would:

* **Strict FIFO** by arrival time; ties keep the input order (the live queue breaks ties by pod
  key, which a recording need not carry).
* **Head-of-line blocking**: a head that asks for more slices than are free waits, and nobody
  behind it overtakes, even when their one slice is free (``webhook.grants``: a stream of
  one-slice users can never starve a two-slice one).
* A granted request holds its slices for its ``hold_seconds``, then releases them all at once.
* **Giving up**: a request recorded as cancelled while waiting carries ``gave_up_after``; if its
  replayed wait would exceed that, it leaves the queue holding nothing (``abandoned``). A grant at
  exactly that wait still counts as a start.
* **Never fits**: a request that asks for more slices than the pool has can never be granted.
  The live controller would leave such a head blocking the pool until it is cancelled or capacity
  grows; the replay cannot know when that would have happened, so it skips the request (it never
  enters the queue) and counts it in ``never_fit``, and the other numbers stay meaningful. With
  0 slices every request is such a request: nobody starts, and the result says so.

At one instant, releases happen first, then arrivals join the queue, then heads are granted, then
the requests whose patience ends at that instant leave (and the heads are granted again, since a
blocked head that leaves unblocks those behind it). So a slice freed at *t* serves an arrival at
*t* with a zero wait.

Wait statistics are over the granted requests (the waits that happened); ``share_started_within``
is over all requests, so requests that gave up or never fit count as not started. Percentiles are
nearest-rank: an observed wait, and at least *p* % of the samples are at or below it, so
"95 % started within the p95" is literally true.

``erlang_c`` and ``mm_c_mean_wait`` are the M/M/c formulas (Poisson arrivals, exponential holds,
one slice each): a quick cross-check of the replay, and a first guess without a recording.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

EPSILON_SECONDS = 1e-9  # a wait at or below this is "at once" (float noise, not a queue)

_WAITING, _GRANTED, _ABANDONED, _NEVER_FIT = 0, 1, 2, 3


class Request(BaseModel):
    """One recorded request of a pool. Times are seconds; ``arrived_at`` may use any epoch.

    ``gave_up_after``: for a request cancelled while waiting, how long it was willing to wait
    (None: it waits as long as it takes). Its ``hold_seconds`` is then a guess of what it would
    have held (e.g. the pool's median), since the recording has none.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    arrived_at: float = Field(allow_inf_nan=False)
    slices: int = Field(1, ge=1)
    hold_seconds: float = Field(ge=0, allow_inf_nan=False)
    gave_up_after: float | None = Field(None, ge=0, allow_inf_nan=False)


class ReplayResult(BaseModel):
    """A summary of one replay. The sorted waits stay private (a recording may hold 100k requests);
    ``share_started_within`` and ``wait_percentile`` read them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slices: int = Field(ge=0, description="the slice count replayed")
    requests: int = Field(ge=0, description="all requests of the recording")
    granted: int = Field(ge=0, description="requests that started (got their slices)")
    abandoned: int = Field(ge=0, description="requests that gave up waiting (gave_up_after passed)")
    never_fit: int = Field(ge=0, description="requests asking for more slices than the pool has: skipped")
    mean_wait_seconds: float | None = Field(None, description="over granted requests; None when none was")
    p50_wait_seconds: float | None = Field(None, description="nearest-rank, over granted requests")
    p95_wait_seconds: float | None = Field(None, description="nearest-rank, over granted requests")
    max_wait_seconds: float | None = Field(None, description="over granted requests")
    share_queued: float | None = Field(
        None, description="fraction of granted requests that waited longer than EPSILON_SECONDS"
    )
    share_time_waiting: float | None = Field(
        None,
        description=(
            "fraction of the span [first arrival, last event] during which someone was waiting; "
            "None without requests, 0 when the span is empty"
        ),
    )
    span_seconds: float = Field(0.0, ge=0, description="first arrival to last event (arrival, release, give-up)")

    _waits: tuple[float, ...] = PrivateAttr(default=())

    def share_started_within(self, seconds: float) -> float | None:
        """Fraction of *all* requests that started within ``seconds`` of arriving (those that gave
        up or never fit did not start). None without requests."""
        if self.requests == 0:
            return None
        started = bisect.bisect_right(self._waits, seconds + EPSILON_SECONDS)
        return started / self.requests

    def wait_percentile(self, p: float) -> float | None:
        """Nearest-rank percentile ``p`` (0-100) of the granted requests' waits; None if none."""
        return percentile(self._waits, p)


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (0 <= p <= 100) of ascending values: the smallest value with at
    least p % of the values at or below it (an observed value, never an interpolation). None when
    empty."""
    if not 0 <= p <= 100:
        raise ValueError(f"p must be in [0, 100], got {p}")
    n = len(sorted_values)
    if n == 0:
        return None
    # round() first: p * n / 100 is a multiple of 1/100 for integer p, so 95 * 20 / 100 must stay 19.
    rank = max(1, math.ceil(round(p * n / 100, 9)))
    return sorted_values[rank - 1]


def _simulate(
    arrived: Sequence[float],
    needs: Sequence[int],
    holds: Sequence[float],
    patience: Sequence[float | None],
    slices: int,
) -> tuple[list[float | None], list[int], float, float]:
    """The discrete-event core over requests already in FIFO order: (wait per request or None,
    outcome per request, seconds someone was waiting, span). Events: arrivals (in order), releases
    and give-ups (heaps); abandoned requests are dropped from the queue lazily."""
    n = len(arrived)
    waits: list[float | None] = [None] * n
    state = [_WAITING] * n
    if n == 0:
        return waits, state, 0.0, 0.0
    free = slices
    releases: list[tuple[float, int]] = []  # (time, slices freed)
    deadlines: list[tuple[float, int]] = []  # (arrival + patience, index)
    queue: deque[int] = deque()
    waiting = 0
    waiting_time = 0.0
    first = last = arrived[0]
    i = 0
    inf = math.inf

    def grant(now: float) -> None:
        nonlocal free, waiting
        while queue:
            j = queue[0]
            if state[j] != _WAITING:  # gave up earlier: drop lazily
                queue.popleft()
                continue
            need = needs[j]
            if need > free:  # head-of-line blocking: nobody behind overtakes
                return
            queue.popleft()
            free -= need
            state[j] = _GRANTED
            waiting -= 1
            waits[j] = now - arrived[j]
            heapq.heappush(releases, (now + holds[j], need))

    while True:
        now = min(
            arrived[i] if i < n else inf,
            releases[0][0] if releases else inf,
            deadlines[0][0] if deadlines else inf,
        )
        if now == inf:
            break
        if waiting:
            waiting_time += now - last
        last = now
        while releases and releases[0][0] <= now:
            free += heapq.heappop(releases)[1]
        while i < n and arrived[i] <= now:
            if needs[i] > slices:
                state[i] = _NEVER_FIT
            else:
                queue.append(i)
                waiting += 1
                limit = patience[i]
                if limit is not None:
                    heapq.heappush(deadlines, (arrived[i] + limit, i))
            i += 1
        grant(now)
        if deadlines and deadlines[0][0] <= now:
            while deadlines and deadlines[0][0] <= now:
                _, j = heapq.heappop(deadlines)
                if state[j] == _WAITING:
                    state[j] = _ABANDONED
                    waiting -= 1
            grant(now)
    return waits, state, waiting_time, last - first


def _fifo_order(requests: Sequence[Request]) -> list[int]:
    """Indices in FIFO order: by arrival time, ties in input order (sorted() is stable)."""
    return sorted(range(len(requests)), key=lambda k: requests[k].arrived_at)


def _run(requests: Sequence[Request], order: Sequence[int], slices: int) -> tuple[list[float | None], ReplayResult]:
    if slices < 0:
        raise ValueError(f"slices must be >= 0, got {slices}")
    ordered = [requests[k] for k in order]
    waits, state, waiting_time, span = _simulate(
        [r.arrived_at for r in ordered],
        [r.slices for r in ordered],
        [r.hold_seconds for r in ordered],
        [r.gave_up_after for r in ordered],
        slices,
    )
    by_input: list[float | None] = [None] * len(requests)
    for position, k in enumerate(order):
        by_input[k] = waits[position]
    observed = sorted(w for w in waits if w is not None)
    n = len(requests)
    granted = len(observed)
    result = ReplayResult(
        slices=slices,
        requests=n,
        granted=granted,
        abandoned=state.count(_ABANDONED),
        never_fit=state.count(_NEVER_FIT),
        mean_wait_seconds=math.fsum(observed) / granted if granted else None,
        p50_wait_seconds=percentile(observed, 50),
        p95_wait_seconds=percentile(observed, 95),
        max_wait_seconds=observed[-1] if observed else None,
        share_queued=(granted - bisect.bisect_right(observed, EPSILON_SECONDS)) / granted if granted else None,
        share_time_waiting=(waiting_time / span if span > 0 else 0.0) if n else None,
        span_seconds=span,
    )
    result._waits = tuple(observed)
    return by_input, result


def replay(requests: Iterable[Request], slices: int) -> ReplayResult:
    """Replay the requests against ``slices`` slices (>= 0) with gpu-queue's discipline; see the
    module docstring."""
    reqs = list(requests)
    return _run(reqs, _fifo_order(reqs), slices)[1]


def replay_waits(requests: Iterable[Request], slices: int) -> list[float | None]:
    """Each request's replayed wait, in input order; None for one that never started (gave up,
    never fits). For looking at who would have waited, and for checking the replay by hand."""
    reqs = list(requests)
    return _run(reqs, _fifo_order(reqs), slices)[0]


def what_if(requests: Iterable[Request], counts: Iterable[int]) -> list[ReplayResult]:
    """One replay per slice count, in the order given (e.g. ``range(current, 2 * current + 1)``).
    The requests are read and ordered once."""
    reqs = list(requests)
    order = _fifo_order(reqs)
    return [_run(reqs, order, count)[1] for count in counts]


def format_duration(seconds: float) -> str:
    """A wait for people: ``at once``, ``within 45 s``, ``within 4 min``, ``within 1.5 h``. Rounded
    up, so "started within" stays true."""
    if seconds <= EPSILON_SECONDS:
        return "at once"
    if seconds < 60:
        return f"within {math.ceil(seconds)} s"
    if seconds < 3600:
        return f"within {math.ceil(seconds / 60 - EPSILON_SECONDS)} min"
    tenths = math.ceil(seconds / 360 - EPSILON_SECONDS)
    return f"within {tenths // 10} h" if tenths % 10 == 0 else f"within {tenths / 10:.1f} h"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def summary_line(result: ReplayResult, within_seconds: float | None = None) -> str:
    """One sentence for a report: "with 12 slices, 95 % of users would have started within 4 min".

    ``within_seconds`` None: the duration is the granted requests' p95 wait. The percentage is of
    all requests, rounded down (so it never overstates), and those that gave up or never fit are
    named, because they did not start at all."""
    if result.requests == 0:
        return "no requests in this period"
    if result.slices == 0:
        return "with 0 slices nobody starts"
    pool = f"with {_plural(result.slices, 'slice')}"
    missing = []
    if result.abandoned:
        missing.append(f"{result.abandoned} would have given up waiting")
    if result.never_fit:
        verb = "asks" if result.never_fit == 1 else "ask"
        missing.append(f"{result.never_fit} {verb} for more slices than the pool has")
    note = f" ({', '.join(missing)})" if missing else ""
    if result.granted == 0 or result.p95_wait_seconds is None:
        return f"{pool} nobody would have started{note}"
    seconds = result.p95_wait_seconds if within_seconds is None else max(within_seconds, 0.0)
    share = result.share_started_within(seconds) or 0.0
    percent = math.floor(share * 100 + EPSILON_SECONDS)
    return f"{pool}, {percent} % of users would have started {format_duration(seconds)}{note}"


def erlang_b(servers: int, offered_load: float) -> float:
    """Erlang B (blocking probability of M/M/c/c) by the recursion B(k) = a B(k-1) / (k + a B(k-1)):
    no factorials or powers, so it stays finite for hundreds of servers."""
    if servers < 0:
        raise ValueError(f"servers must be >= 0, got {servers}")
    if not (offered_load >= 0 and math.isfinite(offered_load)):
        raise ValueError(f"offered_load must be finite and >= 0, got {offered_load}")
    b = 1.0
    for k in range(1, servers + 1):
        b = offered_load * b / (k + offered_load * b)
    return b


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits in M/M/c (offered load a = lambda / mu in Erlangs), from
    Erlang B: C = c B / (c - a (1 - B)). 1.0 when a >= c: the queue grows without bound."""
    b = erlang_b(servers, offered_load)
    if offered_load >= servers:
        return 1.0
    return servers * b / (servers - offered_load * (1 - b))


def mm_c_mean_wait(arrival_rate: float, mean_hold: float, servers: int) -> float:
    """Mean wait in queue of M/M/c: C(c, a) / (c mu - lambda) with mu = 1 / mean_hold and
    a = lambda mean_hold; inf when a >= c (unstable)."""
    if servers < 0:
        raise ValueError(f"servers must be >= 0, got {servers}")
    if not (arrival_rate >= 0 and math.isfinite(arrival_rate)):
        raise ValueError(f"arrival_rate must be finite and >= 0, got {arrival_rate}")
    if not (mean_hold >= 0 and math.isfinite(mean_hold)):
        raise ValueError(f"mean_hold must be finite and >= 0, got {mean_hold}")
    load = arrival_rate * mean_hold
    if load == 0:
        return 0.0
    if load >= servers:
        return math.inf
    # C / (c mu - lambda) = C mean_hold / (c - a): no division by mu, so mean_hold may be tiny.
    return erlang_c(servers, load) * mean_hold / (servers - load)


__all__ = [
    "EPSILON_SECONDS",
    "ReplayResult",
    "Request",
    "erlang_b",
    "erlang_c",
    "format_duration",
    "mm_c_mean_wait",
    "percentile",
    "replay",
    "replay_waits",
    "summary_line",
    "what_if",
]
