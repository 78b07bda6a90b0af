"""Line charts as server-rendered SVG geometry: the database sums the rows per bucket, this module
places the sums on the window's time grid and turns them into SVG paths and axis ticks. The
template console/_chart.html draws them; static/console/console.js only adds hover read-outs."""

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import groupby
from operator import itemgetter

from pages import selectors
from pages.selectors import Window
from tenants.models import ApiKey, Tenant

WIDTH, HEIGHT = 720, 150
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 10, 22
Y_TICKS = 4
X_TICK_CHOICES = (
    timedelta(minutes=10),
    timedelta(minutes=15),
    timedelta(minutes=30),
    timedelta(hours=1),
    timedelta(hours=2),
    timedelta(hours=3),
    timedelta(hours=6),
    timedelta(hours=12),
    timedelta(days=1),
)
MAX_X_TICKS = 8


def grid(rows: Iterable[Mapping], value: str, win: Window) -> list[int]:
    """Place per-bucket sums (rows with `bucket` and `value`) on the window's grid; gaps are 0."""
    values = [0] * win.buckets
    for row in rows:
        index = int((row["bucket"] - win.start) / win.step)
        if 0 <= index < len(values):
            values[index] += int(row[value] or 0)
    return values


def compact(number: float) -> str:
    """1234 -> '1.2k', 2500000 -> '2.5M'; small numbers unchanged."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= size:
            return f"{number / size:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{number:g}"


def nice_step(peak: int) -> float:
    """The y-axis step: 1, 2, 2.5 or 5 times a power of ten, so Y_TICKS steps cover `peak`."""
    raw = max(peak / Y_TICKS, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 2.5, 5, 10):
        # 2.5 only where it still gives whole-number ticks.
        if multiple == 2.5 and magnitude < 10:
            continue
        if multiple * magnitude >= raw:
            return multiple * magnitude
    return 10 * magnitude


@dataclass(frozen=True)
class Line:
    """One series of a chart: its values, its SVG path, and its total and peak."""

    label: str
    css: str
    values: list[int]
    path: str

    @property
    def total(self) -> int:
        return sum(self.values)

    @property
    def peak(self) -> int:
        return max(self.values, default=0)


@dataclass(frozen=True)
class Chart:
    """Everything the chart template needs: geometry, lines, ticks and the hover data."""

    chart_id: str
    title: str
    unit: str
    start: datetime
    step: timedelta
    lines: list[Line]
    y_ticks: list[tuple[float, str]]
    x_ticks: list[tuple[float, str]]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM

    @property
    def empty(self) -> bool:
        return all(line.peak == 0 for line in self.lines)

    @property
    def middle(self) -> tuple[float, float]:
        return (self.left + self.right) / 2, (self.top + self.bottom) / 2

    @property
    def data_id(self) -> str:
        return f"{self.chart_id}-data"

    @property
    def hover_data(self) -> dict:
        return {
            "start": self.start.isoformat(),
            "step": int(self.step.total_seconds()),
            "unit": self.unit,
            "series": [{"label": line.label, "values": line.values} for line in self.lines],
        }


def _x(index: float, buckets: int) -> float:
    return LEFT + (index + 0.5) * (WIDTH - RIGHT - LEFT) / buckets


def _y(value: float, top_value: float) -> float:
    bottom = HEIGHT - BOTTOM
    return bottom - (value / top_value) * (bottom - TOP)


def _path(values: Sequence[int], top_value: float) -> str:
    points = []
    last = len(values) - 1
    for i, value in enumerate(values):
        # Inside a run of equal values the point lies on a straight line: skip it (lossless).
        if 0 < i < last and values[i - 1] == value == values[i + 1]:
            continue
        points.append(f"{_x(i, len(values)):.1f},{_y(value, top_value):.1f}")
    return "M" + " L".join(points) if points else ""


def _x_ticks(win: Window) -> list[tuple[float, str]]:
    span = win.end - win.start
    interval = next((c for c in X_TICK_CHOICES if span / c <= MAX_X_TICKS), X_TICK_CHOICES[-1])
    seconds = interval.total_seconds()
    first = math.ceil(win.start.timestamp() / seconds) * seconds
    label = "%b %d" if interval >= timedelta(days=1) else "%H:%M"
    # A long range per day: at most MAX_X_TICKS day labels, spread over it.
    if interval >= timedelta(days=1):
        days = max(1, math.ceil(span / timedelta(days=1) / MAX_X_TICKS))
        interval = timedelta(days=days)
        seconds = interval.total_seconds()
        first = math.ceil(win.start.timestamp() / seconds) * seconds
    ticks, at = [], first
    while at < win.end.timestamp():
        moment = datetime.fromtimestamp(at, tz=UTC)
        offset = (moment - win.start) / win.step - 0.5
        ticks.append((round(_x(offset, win.buckets), 1), moment.strftime(label)))
        at += seconds
    return ticks


def line_chart(
    *, chart_id: str, title: str, unit: str, win: Window, series: Sequence[tuple[str, str, list]]
) -> Chart:
    """A chart of one or more series (label, css class, values on the window's grid)."""
    peak = max((max(values, default=0) for _, _, values in series), default=0)
    step = nice_step(peak)
    top_value = step * Y_TICKS
    lines = [Line(label, css, values, _path(values, top_value)) for label, css, values in series]
    y_ticks = [(round(_y(i * step, top_value), 1), compact(i * step)) for i in range(Y_TICKS + 1)]
    return Chart(
        chart_id=chart_id,
        title=title,
        unit=unit,
        start=win.start,
        step=win.step,
        lines=lines,
        y_ticks=y_ticks,
        x_ticks=_x_ticks(win),
    )


def _rate_unit(win: Window) -> str:
    return f"per {win.unit}"


def node_charts(win: Window) -> list[Chart]:
    """The overview's charts: requests and errors, tokens, 429s of the whole node."""
    usage, throttled = selectors.usage_buckets(win), selectors.throttle_buckets(win)
    unit = _rate_unit(win)
    return [
        line_chart(
            chart_id="chart-requests",
            title=f"Requests {unit}",
            unit="requests",
            win=win,
            series=[
                ("accepted", "s-requests", grid(usage, "requests", win)),
                ("errors", "s-errors", grid(usage, "errors", win)),
            ],
        ),
        line_chart(
            chart_id="chart-tokens",
            title=f"Tokens {unit}",
            unit="tokens",
            win=win,
            series=[("prompt + completion", "s-tokens", grid(usage, "tokens", win))],
        ),
        line_chart(
            chart_id="chart-throttled",
            title=f"429s {unit}",
            unit="429s",
            win=win,
            series=[("throttled", "s-throttled", grid(throttled, "throttled", win))],
        ),
    ]


# The tenant page draws this many keys as lines of their own, the others summed as one.
TOP_KEYS = 5
KEY_LINES = tuple(f"s-key{i}" for i in range(TOP_KEYS))


def tenant_charts(tenant: Tenant, keys: Sequence[ApiKey], win: Window) -> list[Chart]:
    """A tenant's charts: its requests, errors and 429s; its tokens; its busiest keys. `keys`
    are all its keys with their `requests` in the window (selectors.tenant_keys)."""
    usage = selectors.usage_buckets(win, tenant=tenant)
    throttled = selectors.throttle_buckets(win, tenant=tenant)
    unit = _rate_unit(win)
    return [
        line_chart(
            chart_id="chart-tenant-requests",
            title=f"Requests {unit}",
            unit="requests",
            win=win,
            series=[
                ("accepted", "s-requests", grid(usage, "requests", win)),
                ("errors", "s-errors", grid(usage, "errors", win)),
                ("429s", "s-throttled", grid(throttled, "throttled", win)),
            ],
        ),
        line_chart(
            chart_id="chart-tenant-tokens",
            title=f"Tokens {unit}",
            unit="tokens",
            win=win,
            series=[("prompt + completion", "s-tokens", grid(usage, "tokens", win))],
        ),
        top_keys_chart(tenant, keys, win, grid(usage, "requests", win)),
    ]


def top_keys_chart(tenant: Tenant, keys: Sequence[ApiKey], win: Window, total: list[int]) -> Chart:
    """One chart of the tenant's busiest keys (accepted requests), one line each, and one line
    for all its other keys together: a tenant with 40 keys gets one chart, not 40."""
    used = [key for key in keys if getattr(key, "requests", 0) > 0]
    ranked = sorted(used, key=lambda key: (-key.requests, key.key_id))  # type: ignore[attr-defined]
    top, rest = ranked[:TOP_KEYS], ranked[TOP_KEYS:]
    # Only the top keys' buckets are read; the others' line is the tenant's total minus them.
    usage, _ = selectors.key_buckets(win, tenant, only=[key.pk for key in top])
    per_key = {k: grid(g, "requests", win) for k, g in groupby(usage, key=itemgetter("api_key_id"))}
    series = [
        (f"{key.key_id} {key.name}".strip(), css, per_key.get(key.pk, [0] * win.buckets))
        for key, css in zip(top, KEY_LINES, strict=False)
    ]
    if rest:
        shown = [sum(column) for column in zip(*(line for _, _, line in series), strict=True)]
        others = [max(all_ - top_, 0) for all_, top_ in zip(total, shown, strict=True)]
        series.append((f"{len(rest)} other keys", "s-others", others))
    return line_chart(
        chart_id="chart-top-keys",
        title=f"Busiest keys: requests {_rate_unit(win)}",
        unit="requests",
        win=win,
        series=series or [("no key in use", "s-others", [0] * win.buckets)],
    )
