"""The dashboard's SVG charts (``webhook.charts``): well-formed, accessible, safe, deterministic,
and drawn where the numbers say (geometry checked against hand-computed coordinates)."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from webhook.charts import NO_DATA, share_waiting_bar, slices_in_use_chart, time_ticks, wait_percentiles_chart

NS = "{http://www.w3.org/2000/svg}"
T0 = datetime(2024, 12, 1, 14, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
D0 = date(2024, 12, 1)


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    return root


def by_class(root: ET.Element, cls: str) -> list[ET.Element]:
    return [el for el in root.iter() if cls in (el.get("class") or "").split()]


def one(root: ET.Element, cls: str) -> ET.Element:
    found = by_class(root, cls)
    assert len(found) == 1, f"expected one .{cls}, found {len(found)}"
    return found[0]


def series(root: ET.Element, cls: str) -> list[ET.Element]:
    """Data elements of a wait series: the legend's samples (``gq-key``) share the class."""
    return [el for el in by_class(root, cls) if "gq-key" not in (el.get("class") or "").split()]


def series_path(root: ET.Element, cls: str) -> str:
    paths = [el for el in series(root, cls) if el.tag == f"{NS}path"]
    assert len(paths) == 1, f"expected one path .{cls}, found {len(paths)}"
    return paths[0].get("d", "")


def texts(root: ET.Element) -> list[str]:
    return [el.text or "" for el in root.iter(f"{NS}text")]


def x_labels(root: ET.Element) -> list[str]:
    """Tick labels under the x axis: texts well below the plot (the y label "0" sits just under it)."""
    plot = one(root, "gq-plot")
    bottom = float(plot.get("y", "0")) + float(plot.get("height", "0"))
    return [el.text or "" for el in root.iter(f"{NS}text") if float(el.get("y", "0")) > bottom + 8]


def path_vertices(d: str) -> list[list[tuple[float, float]]]:
    """Subpaths of an ``M x,y L x,y ...`` path as lists of points (``Z`` ignored)."""
    subpaths: list[list[tuple[float, float]]] = []
    for command, x, y in re.findall(r"([ML])(-?[\d.]+),(-?[\d.]+)", d):
        if command == "M":
            subpaths.append([])
        subpaths[-1].append((float(x), float(y)))
    return subpaths


def small_series_chart(**kwargs: object) -> str:
    series = [(T0, 1), (T0 + timedelta(minutes=15), 3), (T0 + timedelta(minutes=30), 0)]
    return slices_in_use_chart(series, 4, T0, T0 + HOUR, **kwargs)  # type: ignore[arg-type]


def week_of_waits() -> list[tuple[date, float | None, float | None]]:
    return [(D0 + timedelta(days=i), 30.0 + i, 300.0 + 10 * i) for i in range(7)]


ALL_CHARTS: dict[str, Callable[[], str]] = {
    "slices": small_series_chart,
    "slices-empty": lambda: slices_in_use_chart([], 4, T0, T0 + HOUR),
    "waits": lambda: wait_percentiles_chart(week_of_waits()),
    "waits-empty": lambda: wait_percentiles_chart([]),
    "share": lambda: share_waiting_bar(0.18),
    "share-unknown": lambda: share_waiting_bar(None),
}


# --- every chart -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_CHARTS)
def test_every_chart_is_well_formed_svg_labelled_by_its_title_and_desc(name: str) -> None:
    root = parse(ALL_CHARTS[name]())
    assert root.get("role") == "img"
    assert re.fullmatch(r"0 0 \d+ \d+", root.get("viewBox", ""))
    title, desc = root.find(f"{NS}title"), root.find(f"{NS}desc")
    assert title is not None and title.text
    assert desc is not None and desc.text
    assert root.get("aria-labelledby") == title.get("id")
    assert root.get("aria-describedby") == desc.get("id")


@pytest.mark.parametrize("name", ALL_CHARTS)
def test_no_chart_references_anything_external(name: str) -> None:
    svg = ALL_CHARTS[name]()
    root = parse(svg)
    forbidden_tags = {"script", "image", "use", "foreignObject", "a", "iframe", "link"}
    for el in root.iter():
        assert el.tag.removeprefix(NS) not in forbidden_tags
        for attr, value in el.attrib.items():
            assert "href" not in attr
            assert "http" not in value and "url(" not in value
            assert not attr.startswith("on"), f"event handler {attr}"
    style = root.find(f"{NS}style")
    assert style is not None and style.text
    for needle in ("url(", "@import", "@font-face", "http"):
        assert needle not in style.text
    # The only URL anywhere is the SVG namespace itself.
    assert re.findall(r"https?://[^\s\"']+", svg) == ["http://www.w3.org/2000/svg"]


@pytest.mark.parametrize("name", ALL_CHARTS)
def test_style_offers_system_fonts_and_light_dark_and_forced_colors_palettes(name: str) -> None:
    style = parse(ALL_CHARTS[name]()).find(f"{NS}style")
    assert style is not None and style.text
    assert "system-ui" in style.text and "sans-serif" in style.text
    assert "prefers-color-scheme:dark" in style.text
    assert "forced-colors:active" in style.text


@pytest.mark.parametrize("name", ALL_CHARTS)
def test_same_input_gives_the_same_string(name: str) -> None:
    assert ALL_CHARTS[name]() == ALL_CHARTS[name]()


def test_different_charts_get_different_element_ids_so_they_can_share_a_page() -> None:
    ids = [parse(make()).get("aria-labelledby") for make in ALL_CHARTS.values()]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("name", ALL_CHARTS)
def test_coordinates_have_at_most_one_decimal(name: str) -> None:
    root = parse(ALL_CHARTS[name]())
    numbers: list[str] = []
    for el in root.iter():
        for attr in ("x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "r", "width", "height", "d"):
            numbers += re.findall(r"-?\d+(?:\.\d+)?", el.get(attr, ""))
    assert numbers
    assert all(re.fullmatch(r"-?\d+(\.\d)?", n) for n in numbers), [n for n in numbers if len(n.split(".")[-1]) > 1]


MALICIOUS = "<script>alert('x')</script> & \"pool\" <a href='http://evil'>"


@pytest.mark.parametrize(
    "make",
    [
        lambda t: small_series_chart(title=t),
        lambda t: slices_in_use_chart([], 1, T0, T0 + HOUR, title=t),
        lambda t: wait_percentiles_chart(week_of_waits(), title=t),
        lambda t: share_waiting_bar(0.5, title=t),
        lambda t: share_waiting_bar(None, title=t),
    ],
    ids=["slices", "slices-empty", "waits", "share", "share-unknown"],
)
def test_malicious_title_is_escaped_and_kept_as_text(make: Callable[[str], str]) -> None:
    svg = make(MALICIOUS)
    assert "<script" not in svg and "&lt;script&gt;" in svg
    root = parse(svg)
    assert not list(root.iter(f"{NS}script")) and not list(root.iter(f"{NS}a"))
    title = root.find(f"{NS}title")
    assert title is not None and title.text == MALICIOUS


def test_custom_title_becomes_the_title_element() -> None:
    title = parse(small_series_chart(title="Pool a100: slices")).find(f"{NS}title")
    assert title is not None and title.text == "Pool a100: slices"


# --- slices in use -----------------------------------------------------------------------------


def test_step_path_has_the_hand_computed_vertices() -> None:
    # Plot 44..704 x 24..192 (660 x 168 px); 1 h = 660 px, so 15 min = 165 px; y 0..4 = 42 px a slice.
    root = parse(small_series_chart())
    plot = one(root, "gq-plot")
    assert (plot.get("x"), plot.get("y"), plot.get("width"), plot.get("height")) == ("44", "24", "660", "168")
    line = one(root, "gq-line").get("d", "")
    assert path_vertices(line) == [[(44, 150), (209, 150), (209, 66), (374, 66), (374, 192), (704, 192)]]


def test_area_under_the_step_line_is_closed_down_to_the_baseline() -> None:
    root = parse(slices_in_use_chart([(T0, 2)], 4, T0, T0 + HOUR))
    area = one(root, "gq-area").get("d", "")
    assert area.endswith("Z")
    assert path_vertices(area) == [[(44, 192), (44, 108), (704, 108), (704, 192)]]


def test_last_value_holds_until_the_end_of_the_period() -> None:
    root = parse(slices_in_use_chart([(T0 + timedelta(minutes=30), 2)], 4, T0, T0 + HOUR))
    assert path_vertices(one(root, "gq-line").get("d", "")) == [[(374, 108), (704, 108)]]


def test_unsorted_series_is_sorted_and_points_outside_the_period_are_clipped() -> None:
    messy = [
        (T0 + timedelta(minutes=30), 0),
        (T0 - timedelta(hours=3), 2),
        (T0 + timedelta(minutes=15), 3),
        (T0 - timedelta(minutes=5), 1),  # the value in force at the start
        (T0 + 2 * HOUR, 4),  # after the end: dropped
    ]
    assert slices_in_use_chart(messy, 4, T0, T0 + HOUR) == small_series_chart()


def test_at_equal_times_the_later_item_wins() -> None:
    series = [
        (T0, 1),
        (T0 + timedelta(minutes=15), 2),
        (T0 + timedelta(minutes=15), 3),
        (T0 + timedelta(minutes=30), 0),
    ]
    assert slices_in_use_chart(series, 4, T0, T0 + HOUR) == small_series_chart()


def test_capacity_line_sits_at_the_capacity_on_the_y_scale() -> None:
    # Peak 7 over capacity 3: axis 0..8 in steps of 2, so capacity 3 is 3/8 up the 168 px plot.
    series = [(T0, 7)]
    root = parse(slices_in_use_chart(series, 3, T0, T0 + HOUR))
    cap = one(root, "gq-cap")
    assert cap.get("y1") == cap.get("y2") == "129"  # 192 - 168 * 3 / 8
    assert (cap.get("x1"), cap.get("x2")) == ("44", "704")
    label = one(root, "gq-cap-label")
    assert label.text == "capacity 3"
    assert float(label.get("y", "0")) < 129


def test_capacity_line_coincides_with_its_tick_when_capacity_is_the_top() -> None:
    root = parse(small_series_chart())
    cap_y = float(one(root, "gq-cap").get("y1", "nan"))
    tick_y = {el.text: float(el.get("y", "nan")) - 4 for el in root.iter(f"{NS}text")}
    assert cap_y == tick_y["4"] == 24


def test_y_axis_has_integer_ticks_from_zero_to_max_of_capacity_and_peak() -> None:
    root = parse(small_series_chart())  # capacity 4, peak 3
    grid = [float(el.get("y1", "nan")) for el in by_class(root, "gq-grid")]
    assert grid == [192, 150, 108, 66, 24]
    assert [t for t in texts(root) if t.isdigit()] == ["0", "1", "2", "3", "4"]
    over = parse(slices_in_use_chart([(T0, 9)], 2, T0, T0 + HOUR))
    assert [t for t in texts(over) if t.isdigit()] == ["0", "2", "4", "6", "8", "10"]


def test_zero_capacity_puts_the_capacity_line_on_the_baseline() -> None:
    root = parse(slices_in_use_chart([(T0, 0)], 0, T0, T0 + HOUR))
    assert one(root, "gq-cap").get("y1") == "192"
    assert one(root, "gq-cap-label").text == "capacity 0"


def test_time_axis_of_one_hour_ticks_every_ten_minutes() -> None:
    root = parse(slices_in_use_chart([(T0, 1)], 2, T0, T0 + HOUR))
    assert x_labels(root) == ["14:00", "14:10", "14:20", "14:30", "14:40", "14:50", "15:00"]


def test_time_axis_of_one_day_ticks_every_six_hours_with_dates_at_midnight() -> None:
    start = datetime(2024, 12, 1, tzinfo=UTC)
    root = parse(slices_in_use_chart([(start, 1)], 2, start, start + timedelta(days=1)))
    assert x_labels(root) == ["Dec 01", "06:00", "12:00", "18:00", "Dec 02"]


def test_time_axis_of_seven_days_ticks_every_midnight() -> None:
    start = datetime(2024, 12, 1, tzinfo=UTC)
    root = parse(slices_in_use_chart([(start, 1)], 2, start, start + timedelta(days=7)))
    assert x_labels(root) == [f"Dec {d:02d}" for d in range(1, 9)]


def test_time_ticks_start_at_the_first_round_time_inside_an_unaligned_span() -> None:
    start = datetime(2024, 12, 1, 13, 47, tzinfo=UTC)
    labels = [label for _, label in time_ticks(start, start + HOUR, 7)]
    assert labels == ["13:50", "14:00", "14:10", "14:20", "14:30", "14:40"]
    weekly = time_ticks(start, start + timedelta(days=40), 7)
    assert weekly[0][1] == "Dec 02" and all(t.weekday() == 0 for t, _ in weekly)  # weekly ticks fall on Mondays


def test_times_are_labelled_in_utc_and_naive_times_are_taken_as_utc() -> None:
    cet = timezone(timedelta(hours=1))
    aware = slices_in_use_chart([(T0.astimezone(cet), 1)], 2, T0.astimezone(cet), (T0 + HOUR).astimezone(cet))
    naive = slices_in_use_chart(
        [(T0.replace(tzinfo=None), 1)], 2, T0.replace(tzinfo=None), (T0 + HOUR).replace(tzinfo=None)
    )
    assert aware == naive == slices_in_use_chart([(T0, 1)], 2, T0, T0 + HOUR)
    assert x_labels(parse(aware))[0] == "14:00"


def test_desc_states_the_period_peak_and_capacity() -> None:
    desc = parse(small_series_chart()).find(f"{NS}desc")
    assert desc is not None and desc.text is not None
    assert "2024-12-01 14:00" in desc.text and "2024-12-01 15:00 UTC" in desc.text
    assert "peak 3 of capacity 4" in desc.text


@pytest.mark.parametrize(
    "series",
    [[], [(T0 + 2 * HOUR, 3)]],
    ids=["empty", "only-after-the-end"],
)
def test_no_points_in_the_period_says_no_data(series: list[tuple[datetime, int]]) -> None:
    root = parse(slices_in_use_chart(series, 4, T0, T0 + HOUR))
    assert NO_DATA in texts(root)
    assert not by_class(root, "gq-line")


def test_a_point_before_the_start_carries_its_value_through_the_period() -> None:
    root = parse(slices_in_use_chart([(T0 - HOUR, 2)], 4, T0, T0 + HOUR))
    assert path_vertices(one(root, "gq-line").get("d", "")) == [[(44, 108), (704, 108)]]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: slices_in_use_chart([], -1, T0, T0 + HOUR), "capacity must be >= 0"),
        (lambda: slices_in_use_chart([], 1, T0, T0), "start must be before end"),
        (lambda: slices_in_use_chart([], 1, T0 + HOUR, T0), "start must be before end"),
        (lambda: slices_in_use_chart([(T0, -2)], 1, T0, T0 + HOUR), "slices in use must be >= 0"),
        (lambda: slices_in_use_chart([], 1, T0, T0 + HOUR, width=50), "width must be at least"),
        (lambda: slices_in_use_chart([], 1, T0, T0 + HOUR, height=50), "height must be at least"),
    ],
    ids=["negative-capacity", "empty-period", "reversed-period", "negative-value", "too-narrow", "too-low"],
)
def test_invalid_slices_input_raises_value_error(call: Callable[[], str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# --- wait percentiles --------------------------------------------------------------------------


def test_a_none_day_is_a_gap_not_a_zero() -> None:
    days = week_of_waits()
    days[3] = (days[3][0], None, None)
    root = parse(wait_percentiles_chart(days))
    for line_cls in ("gq-p50", "gq-p95"):
        runs = path_vertices(series_path(root, line_cls))
        assert [len(run) for run in runs] == [3, 3]  # days 0-2 and 4-6, nothing drawn for day 3
    band = 652 / 7  # plot 52..704
    gap_x = round(52 + band * 3.5, 1)
    marker_xs = [float(el.get("cx", "nan")) for el in series(root, "gq-m50")]
    assert len(marker_xs) == 6 and gap_x not in marker_xs
    no_data = [el for el in root.iter(f"{NS}text") if el.text == "no data"]
    assert [float(el.get("x", "nan")) for el in no_data] == [gap_x]


def test_a_day_missing_from_the_input_is_a_gap_too() -> None:
    days = [(D0, 10.0, 20.0), (D0 + timedelta(days=1), 12.0, 25.0), (D0 + timedelta(days=3), 11.0, 30.0)]
    root = parse(wait_percentiles_chart(days))
    assert x_labels(root) == ["Dec 01", "Dec 02", "Dec 03", "Dec 04"]
    assert [len(run) for run in path_vertices(series_path(root, "gq-p50"))] == [2]  # Dec 04 stands alone
    assert len(series(root, "gq-m50")) == 3


def test_only_p95_missing_keeps_the_p50_line_unbroken() -> None:
    days = week_of_waits()
    days[2] = (days[2][0], days[2][1], None)
    root = parse(wait_percentiles_chart(days))
    assert [len(r) for r in path_vertices(series_path(root, "gq-p50"))] == [7]
    assert [len(r) for r in path_vertices(series_path(root, "gq-p95"))] == [2, 4]


def test_p50_and_p95_differ_without_color_and_have_a_legend() -> None:
    root = parse(wait_percentiles_chart(week_of_waits()))
    circles = [el for el in root.iter(f"{NS}circle") if "gq-m50" in el.get("class", "")]
    squares = [el for el in root.iter(f"{NS}rect") if "gq-m95" in el.get("class", "")]
    assert len(circles) == len(squares) == 7 + 1  # seven days plus the legend's sample
    style = root.find(f"{NS}style")
    assert style is not None and style.text
    assert re.search(r"\.gq-p95\{[^}]*stroke-dasharray", style.text)
    assert not re.search(r"\.gq-p50\{[^}]*stroke-dasharray", style.text)
    assert "p50 (median)" in texts(root) and "p95" in texts(root)


def test_markers_carry_a_tooltip_with_the_day_and_value() -> None:
    root = parse(wait_percentiles_chart([(D0, 42.0, 600.0)]))
    tips = sorted(el.text or "" for el in root.iter(f"{NS}title"))[:2]
    assert tips == ["Dec 01: p50 42 s", "Dec 01: p95 10 min"]


def test_wait_markers_sit_at_their_value_on_the_y_scale() -> None:
    # max 50 s: axis 0..50 s in steps of 10 over 168 px; 25 s is half way up.
    root = parse(wait_percentiles_chart([(D0, 25.0, 50.0)]))
    (circle,) = series(root, "gq-m50")
    assert circle.get("cy") == "108"
    assert circle.get("cx") == "378"  # the middle of the one 652 px band starting at 52


@pytest.mark.parametrize(
    ("peak", "labels"),
    [
        (45.0, ["0 s", "10 s", "20 s", "30 s", "40 s", "50 s"]),
        (600.0, ["0 min", "2 min", "4 min", "6 min", "8 min", "10 min"]),
        (3 * 3600.0, ["0 h", "1 h", "2 h", "3 h"]),
        (0.3, ["0 s", "0.2 s", "0.4 s", "0.6 s", "0.8 s", "1 s"]),
        (0.0068, ["0 s", "0.2 s", "0.4 s", "0.6 s", "0.8 s", "1 s"]),
        (0.0, ["0 s", "0.2 s", "0.4 s", "0.6 s", "0.8 s", "1 s"]),
    ],
    ids=["seconds", "minutes", "hours", "fractions", "a-free-slice", "all-zero"],
)
def test_wait_axis_unit_follows_the_largest_wait(peak: float, labels: list[str]) -> None:
    root = parse(wait_percentiles_chart([(D0, 0.0, peak)]))
    assert [t for t in texts(root) if re.fullmatch(r"[\d.]+ (s|min|h)", t)] == labels


def test_week_of_days_is_labelled_by_date_in_order_even_if_given_unsorted() -> None:
    days = week_of_waits()
    svg = wait_percentiles_chart(list(reversed(days)))
    assert svg == wait_percentiles_chart(days)
    assert x_labels(parse(svg)) == [f"Dec {d:02d}" for d in range(1, 8)]


def test_many_days_thin_the_date_labels() -> None:
    days = [(D0 + timedelta(days=i), 10.0, 20.0) for i in range(60)]
    labels = x_labels(parse(wait_percentiles_chart(days)))
    assert labels[0] == "Dec 01" and 5 <= len(labels) <= 15


@pytest.mark.parametrize(
    "days",
    [[], [(D0, None, None), (D0 + timedelta(days=1), None, None)]],
    ids=["empty", "all-none"],
)
def test_waits_without_any_value_say_no_data(days: list[tuple[date, float | None, float | None]]) -> None:
    root = parse(wait_percentiles_chart(days))
    assert NO_DATA in texts(root)
    assert not by_class(root, "gq-p50")


@pytest.mark.parametrize(
    ("days", "message"),
    [
        ([(D0, 1.0, 2.0), (D0, 1.0, 2.0)], "appears more than once"),
        ([(D0, -1.0, 2.0)], "p50 wait must be a finite number"),
        ([(D0, 1.0, math.nan)], "p95 wait must be a finite number"),
        ([(D0, 1.0, math.inf)], "p95 wait must be a finite number"),
        ([(D0, 5.0, 2.0)], "must not exceed p95"),
    ],
    ids=["duplicate-day", "negative", "nan", "inf", "p50-above-p95"],
)
def test_invalid_wait_input_raises_value_error(
    days: list[tuple[date, float | None, float | None]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        wait_percentiles_chart(days)


# --- share of time waiting ---------------------------------------------------------------------


def test_share_bar_fills_the_share_of_the_track_and_says_the_percentage() -> None:
    root = parse(share_waiting_bar(0.18))
    assert "someone was waiting 18 % of the time" in texts(root)
    track, fill = one(root, "gq-track"), one(root, "gq-fill")
    assert track.get("width") == "356"
    assert fill.get("width") == "64.1"  # 356 * 0.18
    assert fill.get("x") == track.get("x")


def test_unknown_share_draws_an_empty_track_saying_unknown() -> None:
    root = parse(share_waiting_bar(None))
    assert "someone was waiting: unknown" in texts(root)
    assert not by_class(root, "gq-fill")
    assert by_class(root, "gq-track")


@pytest.mark.parametrize(
    ("share", "label"),
    [(0.0, "0 %"), (0.001, "<1 %"), (0.5, "50 %"), (0.999, ">99 %"), (1.0, "100 %")],
)
def test_share_labels_keep_never_and_always_apart_from_almost(share: float, label: str) -> None:
    assert f"someone was waiting {label} of the time" in texts(parse(share_waiting_bar(share)))


def test_zero_share_draws_no_fill_and_a_tiny_share_stays_visible() -> None:
    assert not by_class(parse(share_waiting_bar(0.0)), "gq-fill")
    assert float(one(parse(share_waiting_bar(0.0001)), "gq-fill").get("width", "0")) >= 1


@pytest.mark.parametrize("share", [-0.1, 1.5, 18.0, math.nan])
def test_share_outside_zero_to_one_raises_value_error(share: float) -> None:
    with pytest.raises(ValueError, match="share must be between 0 and 1"):
        share_waiting_bar(share)
