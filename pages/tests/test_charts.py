"""Chart geometry: buckets on the grid, axis steps, lossless path thinning, time ticks."""

from datetime import UTC, datetime, timedelta

from pages import charts
from pages.selectors import window

NOW = datetime(2026, 11, 1, 12, 34, 56, tzinfo=UTC)


def test_a_window_ends_after_the_current_bucket() -> None:
    day = window("24h", now=NOW)
    assert day.end == datetime(2026, 11, 1, 12, 35, tzinfo=UTC)
    assert (day.end - day.start, day.buckets) == (timedelta(hours=24), 1440)
    week = window("7d", now=NOW)
    assert week.end == datetime(2026, 11, 1, 13, 0, tzinfo=UTC) and week.buckets == 168
    assert window("bogus", now=NOW).name == "24h"


def test_rows_land_in_their_bucket_and_gaps_are_zero() -> None:
    win = window("1h", now=NOW)
    rows = [
        {"bucket": win.start, "requests": 3},
        {"bucket": win.start + timedelta(minutes=59), "requests": 5},
        {"bucket": win.start - timedelta(minutes=1), "requests": 100},  # outside: dropped
    ]
    values = charts.grid(rows, "requests", win)
    assert len(values) == 60 and values[0] == 3 and values[59] == 5 and sum(values) == 8


def test_the_axis_step_is_round_and_covers_the_peak() -> None:
    assert [charts.nice_step(p) for p in (0, 1, 7, 9, 40, 258, 1000, 15500)] == [
        1,
        1,
        2,
        5,
        10,
        100,
        250,
        5000,
    ]
    for peak in range(0, 5000, 7):
        assert charts.nice_step(peak) * charts.Y_TICKS >= peak


def test_flat_runs_are_thinned_without_changing_the_line() -> None:
    values = [0, 0, 0, 0, 5, 5, 5, 0, 0]
    path = charts._path(values, 8)
    points = path[1:].split(" L")
    # Kept: the ends of each flat run and every corner.
    assert len(points) == 6
    xs = [float(p.split(",")[0]) for p in points]
    assert xs == sorted(xs) and xs[0] == round(charts._x(0, 9), 1)


def test_a_day_is_labelled_every_three_hours_and_a_week_every_day() -> None:
    day = [label for _, label in charts._x_ticks(window("24h", now=NOW))]
    assert day == ["15:00", "18:00", "21:00", "00:00", "03:00", "06:00", "09:00", "12:00"]
    week = [label for _, label in charts._x_ticks(window("7d", now=NOW))]
    assert week[0] == "Oct 26" and week[-1] == "Nov 01" and len(week) == 7


def test_numbers_are_shown_compactly() -> None:
    assert [charts.compact(n) for n in (0, 999, 1000, 12345, 2_500_000)] == [
        "0",
        "999",
        "1k",
        "12.3k",
        "2.5M",
    ]
