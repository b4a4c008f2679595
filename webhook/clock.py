"""The API server's clock, as seen from this replica: what ``requested-at`` stamps are taken on.

Queue order is arrival order, and arrival is stamped by whichever replica answers ``/mutate``; a
replica whose clock runs 3 s fast would put its users 3 s behind. So each replica estimates the
offset between its wall clock and the API server's from the ``Date`` header of the API answers it
gets anyway (the Lease is read every ``leaseDurationSeconds / 4``), the way NTP bounds an offset
from request/response times: the server's clock read ``Date`` (whole seconds, so
``[Date, Date + 1)``) at some moment between our send and receive, so

    offset = local - server  lies in  (sent - Date - 1, received - Date]

and intersecting these intervals over the last samples pins it down to a few tens of
milliseconds within minutes (the second boundary falls at a different point of each request).
The stamps are corrected by the least the interval demands (nothing while it contains 0), so
replicas whose clocks agree with the API server stamp exactly as before.
Every replica stamps on the same (the API server's) clock; what remains of the skew between two
replicas is the width of their estimates, exported as ``gpu_queue_clock_offset_uncertainty_seconds``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from webhook import metrics

WINDOW = 64  # samples kept; an empty intersection (our clock jumped) starts over from the newest


class ApiServerClock:
    """``now()``: this replica's wall clock corrected by the estimated offset (uncorrected until the
    first API answer arrives). ``observe`` is called with each answer's send/receive times."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._samples: deque[tuple[float, float]] = deque(maxlen=WINDOW)
        self.low: float | None = None  # offset bounds, seconds
        self.high: float | None = None

    def observe(self, sent: float, received: float, date_header: str) -> None:
        """One answer: ``sent``/``received`` on our wall clock (epoch seconds), its ``Date``."""
        try:
            server = parsedate_to_datetime(date_header).timestamp()
        except (TypeError, ValueError, IndexError):
            return
        self._samples.append((sent - server - 1.0, received - server))
        low = max(s[0] for s in self._samples)
        high = min(s[1] for s in self._samples)
        if low > high:  # inconsistent: our clock (or the server's) stepped; trust the newest only
            self._samples = deque([self._samples[-1]], maxlen=WINDOW)
            low, high = self._samples[0]
        self.low, self.high = low, high
        metrics.CLOCK_OFFSET.set(self.offset)
        metrics.CLOCK_UNCERTAINTY.set((high - low) / 2)

    @property
    def offset(self) -> float:
        """The correction applied: the smallest that the evidence demands. 0 while the interval
        still allows it (a clock that agrees with the server is never made worse by a loose early
        estimate, which can be half a second wide); otherwise the interval's bound nearest to 0,
        within its width of the truth, which narrows as samples come in."""
        if self.low is None or self.high is None:
            return 0.0
        return min(max(0.0, self.low), self.high)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._wall(), tz=UTC) - timedelta(seconds=self.offset)
