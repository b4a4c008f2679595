"""Server-side SVG charts for the admin dashboard: pure functions from numbers to SVG text.

Why SVG strings made here: the dashboard is rendered on the server, has to work offline (no CDN,
no front-end build, no fonts to fetch) and must stay readable in a screenshot. Each chart is one
standalone ``<svg>`` that can be inlined into HTML or saved as a file.

Rules every chart follows:

* Accessible: ``role="img"``, a ``<title>`` (the caller's ``title``) and a ``<desc>`` that states
  the numbers the picture shows, both referenced by ``aria-labelledby``/``aria-describedby``.
* Safe: every text and attribute value is XML-escaped, so a pool name or title cannot inject
  markup. No ``href``, scripts, fonts or other external resources.
* Themed by CSS classes in an inline ``<style>`` (light, dark and forced-colors palettes). An
  inline SVG's ``<style>`` applies to the whole HTML page, so every class is prefixed ``gq-`` and
  scoped under ``.gq-chart``; every chart emits the same style, so repeating it is harmless.
* Meaning does not depend on color alone: the capacity line is dashed and labelled, p50 and p95
  differ in marker shape, fill and line dash, and there is a legend.
* Deterministic and small: same input, same string; coordinates rounded to 0.1.

Times are shown in UTC; naive datetimes are taken as UTC.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final, TypeAlias
from xml.sax.saxutils import escape, quoteattr

__all__ = ["NO_DATA", "share_waiting_bar", "slices_in_use_chart", "time_ticks", "wait_percentiles_chart"]

NO_DATA: Final = "no data for this period"

_XOf: TypeAlias = Callable[[int], float]  # day index -> x
_YOf: TypeAlias = Callable[[float], float]  # seconds -> y

_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# One style for all charts (see the module docstring). Light: GitHub-like neutrals, blue data and
# orange/red accents (blue vs orange stays distinct for the common color-vision deficiencies).
_STYLE: Final = (
    ".gq-chart{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;font-size:11px;"
    "font-variant-numeric:tabular-nums}"
    ".gq-chart .gq-bg{fill:#ffffff}"
    ".gq-chart text{fill:#1f2328}"
    ".gq-chart .gq-muted{fill:#57606a}"
    ".gq-chart .gq-small{font-size:10px}"
    ".gq-chart .gq-grid{stroke:#d8dee4;stroke-width:1}"
    ".gq-chart .gq-axis{stroke:#57606a;stroke-width:1}"
    ".gq-chart .gq-plot{fill:none}"
    ".gq-chart .gq-line{fill:none;stroke:#0969da;stroke-width:2;stroke-linejoin:round}"
    ".gq-chart .gq-area{fill:#0969da;fill-opacity:.15}"
    ".gq-chart .gq-cap{stroke:#cf222e;stroke-width:1.5;stroke-dasharray:6 4}"
    ".gq-chart .gq-cap-label{fill:#cf222e}"
    ".gq-chart .gq-p50{fill:none;stroke:#0969da;stroke-width:2}"
    ".gq-chart .gq-p95{fill:none;stroke:#bc4c00;stroke-width:2;stroke-dasharray:5 3}"
    ".gq-chart .gq-m50{fill:#0969da;stroke:#0969da;stroke-width:1.5}"
    ".gq-chart .gq-m95{fill:#ffffff;stroke:#bc4c00;stroke-width:1.5}"
    ".gq-chart .gq-track{fill:#eaeef2;stroke:#8c959f;stroke-width:1}"
    ".gq-chart .gq-fill{fill:#0969da}"
    "@media (prefers-color-scheme:dark){"
    ".gq-chart .gq-bg{fill:#0d1117}"
    ".gq-chart text{fill:#e6edf3}"
    ".gq-chart .gq-muted{fill:#9198a1}"
    ".gq-chart .gq-grid{stroke:#30363d}"
    ".gq-chart .gq-axis{stroke:#9198a1}"
    ".gq-chart .gq-line{stroke:#58a6ff}"
    ".gq-chart .gq-area{fill:#58a6ff;fill-opacity:.2}"
    ".gq-chart .gq-cap{stroke:#ff7b72}"
    ".gq-chart .gq-cap-label{fill:#ff7b72}"
    ".gq-chart .gq-p50{stroke:#58a6ff}"
    ".gq-chart .gq-p95{stroke:#f0883e}"
    ".gq-chart .gq-m50{fill:#58a6ff;stroke:#58a6ff}"
    ".gq-chart .gq-m95{fill:#0d1117;stroke:#f0883e}"
    ".gq-chart .gq-track{fill:#21262d;stroke:#6e7681}"
    ".gq-chart .gq-fill{fill:#58a6ff}}"
    "@media (forced-colors:active){"
    ".gq-chart .gq-bg,.gq-chart .gq-m95{fill:Canvas}"
    ".gq-chart text,.gq-chart .gq-muted,.gq-chart .gq-cap-label{fill:CanvasText}"
    ".gq-chart .gq-grid,.gq-chart .gq-axis,.gq-chart .gq-line,.gq-chart .gq-cap,.gq-chart .gq-p50,"
    ".gq-chart .gq-p95,.gq-chart .gq-m50,.gq-chart .gq-m95,.gq-chart .gq-track{stroke:CanvasText}"
    ".gq-chart .gq-area,.gq-chart .gq-fill,.gq-chart .gq-m50{fill:Highlight}"
    ".gq-chart .gq-track{fill:Canvas}}"
)

# Candidate time-axis steps, smallest first; all below a day divide a day, so ticks stay on the
# same wall-clock positions every day.
_SUB_DAY_STEPS: Final = tuple(
    timedelta(seconds=s) for s in (1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
)
_DAY_STEPS: Final = (1, 2, 7, 14, 28, 56, 91, 182, 364)
_MIN_TICK_SPACING: Final = 90.0  # px between x labels: room for "Dec 01" with air around it
_Y_INTERVALS: Final = 5  # at most this many y intervals: readable at 220 px high


@dataclass(frozen=True)
class _Frame:
    """The plot rectangle inside the SVG; margins hold the axis labels and legend."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int

    @property
    def x0(self) -> float:
        return float(self.left)

    @property
    def x1(self) -> float:
        return float(self.width - self.right)

    @property
    def y0(self) -> float:
        return float(self.top)

    @property
    def y1(self) -> float:
        """The baseline (value 0)."""
        return float(self.height - self.bottom)

    @property
    def plot_width(self) -> float:
        return self.x1 - self.x0

    @property
    def plot_height(self) -> float:
        return self.y1 - self.y0


def _frame(width: int, height: int, left: int, right: int, top: int, bottom: int) -> _Frame:
    """Reject sizes that leave no room to plot, instead of drawing a garbled chart."""
    min_width, min_height = left + right + 40, top + bottom + 40
    if width < min_width:
        raise ValueError(f"width must be at least {min_width} px, got {width}")
    if height < min_height:
        raise ValueError(f"height must be at least {min_height} px, got {height}")
    return _Frame(width, height, left, right, top, bottom)


def _n(value: float) -> str:
    """A coordinate rounded to 0.1, without a trailing ``.0`` or a ``-0``: small, stable output."""
    rounded = round(value, 1)
    if rounded == 0:
        return "0"
    if rounded == int(rounded):
        return str(int(rounded))
    return f"{rounded:.1f}"


def _num(value: float) -> str:
    """A tick value for people: at most 2 decimals, trailing zeros dropped (``0.5``, ``12``)."""
    text = f"{round(value, 2):.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _text(x: float, y: float, content: str, cls: str = "", anchor: str = "") -> str:
    """A ``<text>``; the content is always escaped."""
    attrs = f'x="{_n(x)}" y="{_n(y)}"'
    if cls:
        attrs += f" class={quoteattr(cls)}"
    if anchor:
        attrs += f" text-anchor={quoteattr(anchor)}"
    return f"<text {attrs}>{escape(content)}</text>"


def _document(kind: str, frame: _Frame, title: str, desc: str, body: Sequence[str]) -> str:
    """Wrap the drawing in the accessible ``<svg>`` shell.

    The title/desc ids must be unique on a page that inlines several charts, and the output must
    be deterministic, so they derive from a hash of the content: identical charts share ids, but
    they also share the text those ids point to.
    """
    digest = hashlib.sha256("\x00".join([kind, title, desc, *body]).encode()).hexdigest()[:10]
    title_id, desc_id = f"gq-{kind}-{digest}-t", f"gq-{kind}-{digest}-d"
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="gq-chart gq-{kind}" '
        f'width="{frame.width}" height="{frame.height}" viewBox="0 0 {frame.width} {frame.height}" '
        f'role="img" aria-labelledby="{title_id}" aria-describedby="{desc_id}">'
    )
    parts = [
        head,
        f'<title id="{title_id}">{escape(title)}</title>',
        f'<desc id="{desc_id}">{escape(desc)}</desc>',
        f"<style>{_STYLE}</style>",
        f'<rect class="gq-bg" x="0" y="0" width="{frame.width}" height="{frame.height}"/>',
        *body,
        "</svg>",
    ]
    return "\n".join(parts)


def _no_data(kind: str, frame: _Frame, title: str, desc: str, message: str = NO_DATA) -> str:
    """An empty period still gets a valid, labelled SVG so the dashboard layout does not jump."""
    body = [
        _plot_rect(frame),
        _text(frame.width / 2, frame.height / 2 + 4, message, "gq-muted", "middle"),
    ]
    return _document(kind, frame, title, desc, body)


def _plot_rect(frame: _Frame) -> str:
    """The plot area as an (invisible) rect: documents the geometry for readers and tests."""
    return (
        f'<rect class="gq-plot" x="{_n(frame.x0)}" y="{_n(frame.y0)}" '
        f'width="{_n(frame.plot_width)}" height="{_n(frame.plot_height)}"/>'
    )


def _hline(frame: _Frame, y: float, cls: str) -> str:
    return f'<line class="{cls}" x1="{_n(frame.x0)}" y1="{_n(y)}" x2="{_n(frame.x1)}" y2="{_n(y)}"/>'


def _x_label(frame: _Frame, x: float, label: str) -> str:
    """An x tick label, kept inside the SVG at the edges (no text metrics: ~6.5 px a character)."""
    half = len(label) * 6.5 / 2
    anchor = "middle"
    if x - half < 1:
        anchor = "start"
    elif x + half > frame.width - 1:
        anchor = "end"
    return _text(x, frame.y1 + 16, label, "gq-muted", anchor)


def _x_tick(frame: _Frame, x: float) -> str:
    return f'<line class="gq-axis" x1="{_n(x)}" y1="{_n(frame.y1)}" x2="{_n(x)}" y2="{_n(frame.y1 + 4)}"/>'


def _utc(moment: datetime) -> datetime:
    """Aware UTC datetimes only, so naive and aware inputs compare and label the same way."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _day_label(day: date) -> str:
    """``Dec 01``, independent of the process locale (strftime's %b is not)."""
    return f"{_MONTHS[day.month - 1]} {day.day:02d}"


def _stamp(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M}"


def time_ticks(start: datetime, end: datetime, max_intervals: int) -> list[tuple[datetime, str]]:
    """Ticks on round UTC times for the span [start, end], at most ``max_intervals`` steps apart.

    The step is the smallest "round" one (1 s ... 12 h, then 1, 2, 7, 14 ... days) that keeps the
    labels apart. Ticks below a day read ``14:00`` (``14:00:30`` for second steps), except at
    midnight, which reads the date (``Dec 02``) so a span across days says which day is which.
    Day ticks fall on midnights; weekly ones on Mondays.
    """
    start, end = _utc(start), _utc(end)
    if start >= end:
        raise ValueError(f"start must be before end, got start={start.isoformat()} end={end.isoformat()}")
    span = end - start
    limit = max(1, max_intervals)
    for step in _SUB_DAY_STEPS:
        if span / step <= limit:
            return _sub_day_ticks(start, end, step)
    days = span / timedelta(days=1)
    for k in _DAY_STEPS:
        if days / k <= limit:
            return _day_ticks(start, end, k)
    return _day_ticks(start, end, math.ceil(days / limit))


def _sub_day_ticks(start: datetime, end: datetime, step: timedelta) -> list[tuple[datetime, str]]:
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    k = -(-(start - midnight) // step)  # ceil: the first multiple of step at or after start
    moment = midnight + k * step
    seconds = step < timedelta(minutes=1)
    ticks: list[tuple[datetime, str]] = []
    while moment <= end:
        if moment.hour == moment.minute == moment.second == 0:
            label = _day_label(moment.date())
        else:
            label = f"{moment:%H:%M:%S}" if seconds else f"{moment:%H:%M}"
        ticks.append((moment, label))
        moment += step
    return ticks


def _day_ticks(start: datetime, end: datetime, k: int) -> list[tuple[datetime, str]]:
    day = start.date()
    if start != datetime(day.year, day.month, day.day, tzinfo=UTC):
        day += timedelta(days=1)
    # Align to a calendar grid, not to the start: ordinal 1 (0001-01-01) is a Monday.
    day += timedelta(days=(-(day.toordinal() - 1)) % k)
    ticks: list[tuple[datetime, str]] = []
    moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    while moment <= end:
        ticks.append((moment, _day_label(moment.date())))
        moment += timedelta(days=k)
    return ticks


def _int_axis(peak: int) -> tuple[int, int]:
    """(step, top) for an integer y axis from 0: the smallest 1/2/5 x 10^k step with at most
    ``_Y_INTERVALS`` intervals, so slices read as whole numbers."""
    peak = max(peak, 1)
    magnitude = 1
    while True:
        for m in (1, 2, 5):
            step = m * magnitude
            if -(-peak // step) <= _Y_INTERVALS:
                return step, -(-peak // step) * step
        magnitude *= 10


def _float_axis(peak: float) -> tuple[float, float]:
    """(step, top) for a y axis from 0 in any unit: a 1/2/5 x 10^k step, at most 5 intervals."""
    if peak <= 0:
        return 1.0, 1.0
    exponent = math.floor(math.log10(peak / _Y_INTERVALS))
    for e in (exponent - 1, exponent, exponent + 1):
        for m in (1, 2, 5):
            step = m * 10.0**e
            intervals = math.ceil(peak / step - 1e-9)
            if intervals <= _Y_INTERVALS:
                return step, intervals * step
    step = 10.0 ** (exponent + 2)  # pragma: no cover - the loop above always finds one
    return step, math.ceil(peak / step) * step


def _wait_unit(peak_seconds: float) -> tuple[str, float]:
    """Seconds below 2 min, minutes below 2 h, then hours: tick labels stay short numbers."""
    if peak_seconds < 120:
        return "s", 1.0
    if peak_seconds < 7200:
        return "min", 60.0
    return "h", 3600.0


def _human_seconds(seconds: float) -> str:
    unit, factor = _wait_unit(seconds)
    value = seconds / factor
    return f"{_num(round(value, 1) if unit != 's' else round(value))} {unit}"


# --- 1. slices in use --------------------------------------------------------------------------


def slices_in_use_chart(
    series: Sequence[tuple[datetime, int]],
    capacity: int,
    start: datetime,
    end: datetime,
    *,
    width: int = 720,
    height: int = 220,
    title: str = "GPU slices in use",
) -> str:
    """Slices in use over [start, end] as a step line against the pool's capacity.

    ``series`` is a step function: each value holds until the next point, and the last one until
    ``end`` (so pass the state changes, not samples). It may be unsorted (it is sorted; at equal
    times the later item wins). Points before ``start`` only set the value at ``start``; points
    after ``end`` are dropped. The y axis runs from 0 to max(capacity, peak) rounded up to a tick,
    so an over-commit is visible instead of clipped.
    """
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {capacity}")
    start, end = _utc(start), _utc(end)
    if start >= end:
        raise ValueError(f"start must be before end, got start={start.isoformat()} end={end.isoformat()}")
    for moment, value in series:
        if value < 0:
            raise ValueError(f"slices in use must be >= 0, got {value} at {_utc(moment).isoformat()}")
    frame = _frame(width, height, left=44, right=16, top=24, bottom=28)
    steps = _clip_steps(series, start, end)
    period = f"from {_stamp(start)} to {_stamp(end)} UTC"
    if not steps:
        return _no_data("slices", frame, title, f"Slices in use {period}: no data. Capacity {capacity}.")

    peak = max(value for _, value in steps)
    y_step, y_top = _int_axis(max(capacity, peak))
    span = (end - start).total_seconds()

    def x_of(moment: datetime) -> float:
        return frame.x0 + frame.plot_width * (moment - start).total_seconds() / span

    def y_of(value: float) -> float:
        return frame.y1 - frame.plot_height * value / y_top

    body = [_plot_rect(frame)]
    for tick in range(0, y_top + 1, y_step):
        y = y_of(tick)
        body.append(_hline(frame, y, "gq-grid"))
        body.append(_text(frame.x0 - 6, y + 4, str(tick), "gq-muted", "end"))
    body.append(_text(frame.x0 - 6, frame.y0 - 10, "slices", "gq-muted", "start"))

    vertices = _step_vertices([(x_of(t), y_of(v)) for t, v in steps], x_of(end))
    line = "M" + " L".join(f"{_n(x)},{_n(y)}" for x, y in vertices)
    first_x, last_x = vertices[0][0], vertices[-1][0]
    floor = [(last_x, frame.y1)] if vertices[-1][1] != frame.y1 else []
    outline = [(first_x, frame.y1), *vertices, *floor]
    area = "M" + " L".join(f"{_n(x)},{_n(y)}" for x, y in outline) + " Z"
    body.append(f'<path class="gq-area" d="{area}"/>')

    cap_y = y_of(capacity)
    body.append(_hline(frame, cap_y, "gq-cap"))
    body.append(_text(frame.x1, cap_y - 4, f"capacity {capacity}", "gq-cap-label", "end"))
    body.append(f'<path class="gq-line" d="{line}"/>')

    body.append(_hline(frame, frame.y1, "gq-axis"))
    for moment, label in time_ticks(start, end, int(frame.plot_width // _MIN_TICK_SPACING)):
        x = x_of(moment)
        body.append(_x_tick(frame, x))
        body.append(_x_label(frame, x, label))

    last = steps[-1][1]
    over = f" (over capacity by {peak - capacity})" if peak > capacity else ""
    desc = f"Slices in use {period}: peak {peak} of capacity {capacity}{over}, {last} at the end of the period."
    return _document("slices", frame, title, desc, body)


def _clip_steps(series: Sequence[tuple[datetime, int]], start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """The step function restricted to [start, end]: sorted, the value carried into ``start``,
    duplicates and no-change points dropped (they add vertices, not information)."""
    ordered = sorted(((_utc(t), v) for t, v in series), key=lambda item: item[0])
    steps: list[tuple[datetime, int]] = []
    for moment, value in ordered:
        if moment > end:
            break
        moment = max(moment, start)
        if steps and steps[-1][0] == moment:
            steps.pop()
        if steps and steps[-1][1] == value:
            continue
        steps.append((moment, value))
    return steps


def _step_vertices(points: Sequence[tuple[float, float]], x_end: float) -> list[tuple[float, float]]:
    """Corners of the step line: horizontal to each change, then vertical, then on to the end."""
    vertices = [points[0]]
    for (_, y_prev), (x, y) in itertools.pairwise(points):
        vertices.append((x, y_prev))
        vertices.append((x, y))
    last_x, last_y = vertices[-1]
    if x_end > last_x:
        vertices.append((x_end, last_y))
    return vertices


# --- 2. wait percentiles -----------------------------------------------------------------------


def wait_percentiles_chart(
    days: Sequence[tuple[date, float | None, float | None]],
    *,
    width: int = 720,
    height: int = 220,
    title: str = "Wait for a GPU slice per day (p50, p95)",
) -> str:
    """Median and 95th-percentile wait per day as two point+line series.

    Each item is (day, p50 seconds, p95 seconds); None means no data that day and leaves a gap
    (a zero would claim nobody waited). The x axis covers every calendar day from the first to
    the last one given, so a day missing from ``days`` is a gap too. p50 is a filled circle on a
    solid line, p95 a hollow square on a dashed line: distinguishable without color. The y unit
    (s / min / h) follows the largest wait.
    """
    frame = _frame(width, height, left=52, right=16, top=24, bottom=28)
    by_day: dict[date, tuple[float | None, float | None]] = {}
    for day, p50, p95 in days:
        if day in by_day:
            raise ValueError(f"day {day.isoformat()} appears more than once")
        for name, value in (("p50", p50), ("p95", p95)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} wait must be a finite number of seconds >= 0, got {value} on {day}")
        if p50 is not None and p95 is not None and p50 > p95:
            raise ValueError(f"p50 ({p50}) must not exceed p95 ({p95}) on {day.isoformat()}")
        by_day[day] = (p50, p95)
    values = [v for pair in by_day.values() for v in pair if v is not None]
    if not values:
        period = ""
        if by_day:
            period = f" from {min(by_day).isoformat()} to {max(by_day).isoformat()}"
        return _no_data("waits", frame, title, f"Daily wait percentiles{period}: no data.")

    first = min(by_day)
    count = (max(by_day) - first).days + 1
    calendar = [first + timedelta(days=i) for i in range(count)]
    unit, factor = _wait_unit(max(values))
    # Waits under a second (a free slice) on a 0-1 s axis: finer ticks would round to one label.
    y_step, y_top = _float_axis(max(max(values) / factor, 1.0 if unit == "s" else 0.0))
    band = frame.plot_width / count

    def x_of(index: int) -> float:
        return frame.x0 + band * (index + 0.5)

    def y_of(seconds: float) -> float:
        return frame.y1 - frame.plot_height * (seconds / factor) / y_top

    body = [_plot_rect(frame)]
    intervals = round(y_top / y_step)
    for i in range(intervals + 1):
        y = y_of(i * y_step * factor)
        body.append(_hline(frame, y, "gq-grid"))
        body.append(_text(frame.x0 - 6, y + 4, f"{_num(i * y_step)} {unit}", "gq-muted", "end"))

    radius = max(1.5, min(3.5, band / 3))
    for index_in_pair, cls, marker_cls in ((0, "gq-p50", "gq-m50"), (1, "gq-p95", "gq-m95")):
        path = _gapped_path(calendar, by_day, index_in_pair, x_of, y_of)
        if path:
            body.append(f'<path class="{cls}" d="{path}"/>')
        label = "p50" if index_in_pair == 0 else "p95"
        for i, day in enumerate(calendar):
            value = by_day.get(day, (None, None))[index_in_pair]
            if value is None:
                continue
            tip = f"{_day_label(day)}: {label} {_human_seconds(value)}"
            body.append(_marker(index_in_pair, marker_cls, x_of(i), y_of(value), radius, tip))

    if band >= 40:  # say so where there is room: a bare gap could be mistaken for a rendering glitch
        for i, day in enumerate(calendar):
            if by_day.get(day, (None, None)) == (None, None):
                body.append(_text(x_of(i), frame.y1 - 6, "no data", "gq-muted gq-small", "middle"))

    body.append(_hline(frame, frame.y1, "gq-axis"))
    every = max(1, math.ceil(_MIN_TICK_SPACING * 0.6 / band))
    for i, day in enumerate(calendar):
        if i % every == 0:
            body.append(_x_tick(frame, x_of(i)))
            body.append(_x_label(frame, x_of(i), _day_label(day)))

    body.extend(_wait_legend(frame))

    missing = sum(1 for day in calendar if by_day.get(day, (None, None)) == (None, None))
    p50s = [p for p, _ in by_day.values() if p is not None]
    p95s = [p for _, p in by_day.values() if p is not None]
    summary = [f"Daily wait for a GPU slice from {first.isoformat()} to {calendar[-1].isoformat()}"]
    if p50s:
        summary.append(f"median (p50) up to {_human_seconds(max(p50s))}")
    if p95s:
        summary.append(f"p95 up to {_human_seconds(max(p95s))}")
    if missing:
        summary.append(f"no data on {missing} day{'s' if missing != 1 else ''}")
    desc = "; ".join(summary) + "."
    return _document("waits", frame, title, desc, body)


def _gapped_path(
    calendar: Sequence[date],
    by_day: dict[date, tuple[float | None, float | None]],
    index_in_pair: int,
    x_of: _XOf,
    y_of: _YOf,
) -> str:
    """A polyline broken at every day without data: a new ``M`` after each gap, and lone points
    left to their marker (a one-point subpath draws nothing)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for i, day in enumerate(calendar):
        value = by_day.get(day, (None, None))[index_in_pair]
        if value is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((x_of(i), y_of(value)))
    return " ".join("M" + " L".join(f"{_n(x)},{_n(y)}" for x, y in run) for run in runs if len(run) > 1)


def _marker(shape: int, cls: str, x: float, y: float, r: float, tip: str) -> str:
    """p50: a circle; p95: a square. The ``<title>`` child is the hover tooltip."""
    tooltip = f"<title>{escape(tip)}</title>"
    if shape == 0:
        return f'<circle class="{cls}" cx="{_n(x)}" cy="{_n(y)}" r="{_n(r)}">{tooltip}</circle>'
    side = r * 1.8
    return (
        f'<rect class="{cls}" x="{_n(x - side / 2)}" y="{_n(y - side / 2)}" '
        f'width="{_n(side)}" height="{_n(side)}">{tooltip}</rect>'
    )


def _wait_legend(frame: _Frame) -> list[str]:
    """Legend in the top margin, right-aligned, drawn with the same strokes and markers (``gq-key``
    marks its parts apart from the data)."""
    y = frame.y0 - 12
    x95 = frame.x1 - 30
    x50 = x95 - 120
    parts: list[str] = []
    for x, cls, marker_cls, shape, label in (
        (x50, "gq-p50", "gq-m50", 0, "p50 (median)"),
        (x95, "gq-p95", "gq-m95", 1, "p95"),
    ):
        parts.append(f'<path class="{cls} gq-key" d="M{_n(x - 26)},{_n(y)} L{_n(x - 6)},{_n(y)}"/>')
        side = 6.3
        if shape == 0:
            parts.append(f'<circle class="{marker_cls} gq-key" cx="{_n(x - 16)}" cy="{_n(y)}" r="3.5"/>')
        else:
            parts.append(
                f'<rect class="{marker_cls} gq-key" x="{_n(x - 16 - side / 2)}" y="{_n(y - side / 2)}" '
                f'width="{_n(side)}" height="{_n(side)}"/>'
            )
        parts.append(_text(x, y + 4, label, "gq-key", "start"))
    return parts


# --- 3. share of time waiting ------------------------------------------------------------------


def share_waiting_bar(
    share: float | None,
    *,
    width: int = 360,
    height: int = 40,
    title: str = "Share of time someone was waiting",
) -> str:
    """One horizontal bar: the fraction (0..1) of the period during which someone was queued.

    None means unknown (no history) and draws an empty track saying so, never a 0 %. Shares that
    round to 0 or 100 but are not are shown as "<1 %" and ">99 %", so "someone waited briefly"
    and "always someone waiting" stay distinct from "never" and "always".
    """
    if share is not None and not (math.isfinite(share) and 0 <= share <= 1):
        raise ValueError(f"share must be between 0 and 1 (a fraction, not a percentage), got {share}")
    if width < 80:
        raise ValueError(f"width must be at least 80 px, got {width}")
    if height < 32:
        raise ValueError(f"height must be at least 32 px, got {height}")
    frame = _Frame(width, height, left=2, right=2, top=20, bottom=max(2, height - 34))
    bar_h = frame.plot_height
    body = [
        f'<rect class="gq-track" x="{_n(frame.x0)}" y="{_n(frame.y0)}" width="{_n(frame.plot_width)}" '
        f'height="{_n(bar_h)}" rx="2"/>'
    ]
    if share is None:
        label = "someone was waiting: unknown"
        desc = "Unknown: no data on waiting for this period."
    else:
        percent = _percent(share)
        label = f"someone was waiting {percent} of the time"
        desc = f"Someone was waiting {percent} of the time in this period."
        fill = frame.plot_width * share
        if share > 0:
            fill = max(fill, 1.0)  # a sliver stays visible
            body.append(
                f'<rect class="gq-fill" x="{_n(frame.x0)}" y="{_n(frame.y0)}" width="{_n(fill)}" '
                f'height="{_n(bar_h)}" rx="2"/>'
            )
    body.insert(0, _text(frame.x0, frame.y0 - 6, label))
    return _document("share", frame, title, desc, body)


def _percent(share: float) -> str:
    if 0 < share < 0.005:
        return "<1 %"
    if 0.995 <= share < 1:
        return ">99 %"
    return f"{round(share * 100)} %"
