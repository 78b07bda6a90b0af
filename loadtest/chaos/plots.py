"""The chaos run's plots, one PNG each beside the report, every one marked with the faults."""

from pathlib import Path
from typing import Any

from loadtest.chaos.checks import P95_429_GOAL_MS
from loadtest.chaos.rundata import HTTP_KINDS, WELL_BEHAVED_HTTP, RunData
from loadtest.percentiles import percentile_nearest_rank

MARKED = ("redis_stopping", "replica_killed", "replica_restarted", "postgres_cut")


def plot_all(data: RunData, out: Path) -> list[str]:
    """Draw every plot into out; their file names, in the report's order."""
    return [
        plot_requests_by_status(data, out),
        plot_admitted_latency(data, out),
        plot_refusal_latency(data, out),
        plot_engine_latency(data, out),
        *plot_engine_load(data, out),
    ]


def _pyplot() -> Any:
    # Imported on first use: the report's checks and `--help` need no matplotlib.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _origin(data: RunData) -> float:
    return data.phases["baseline"]


def _buckets(data: RunData) -> int:
    """The run's length in whole seconds, plus one: a bucket for every second."""
    end = max(r["t0"] + r.get("dt", 0) for r in data.records)
    return int(end - _origin(data)) + 1


def _annotate(ax: Any, data: RunData) -> None:
    """The start of the swarm (dotted) and each fault (red) on a time axis."""
    origin = _origin(data)
    marks = [
        (e["t"] - origin, e["kind"].replace("_", " ")) for e in data.events if e["kind"] in MARKED
    ]
    ax.axvline(data.phases["swarm"] - origin, color="grey", linestyle=":", linewidth=1)
    for t, label in marks:
        ax.axvline(t, color="red", alpha=0.5, linewidth=1)
        ax.text(t, ax.get_ylim()[1], label, rotation=90, va="top", ha="right", fontsize=7)
    ax.set_xlabel("seconds since the start")
    ax.grid(alpha=0.3)


def plot_requests_by_status(data: RunData, out: Path) -> str:
    plt, origin, buckets = _pyplot(), _origin(data), _buckets(data)
    fig, ax = plt.subplots(figsize=(10, 4))
    labels = sorted({str(r.get("status", 0)) for r in data.records if r["kind"] != "ws_connect"})
    for label in labels:
        series = [0] * buckets
        for r in data.records:
            if str(r.get("status", 0)) == label and r["kind"] != "ws_connect":
                series[min(buckets - 1, int(r["t0"] + r.get("dt", 0) - origin))] += 1
        ax.plot(range(buckets), series, label=label, linewidth=1)
    ax.set_ylabel("answers per second")
    ax.set_title("Requests per second by status")
    ax.legend(fontsize=8, ncol=6)
    _annotate(ax, data)
    return _save(fig, out / "requests_by_status.png")


def plot_admitted_latency(data: RunData, out: Path) -> str:
    """p50 and p95 of admitted well-behaved completions over time, in 10 s windows."""
    plt, origin, width = _pyplot(), _origin(data), 10
    fig, ax = plt.subplots(figsize=(10, 4))
    xs, p50s, p95s = [], [], []
    for start in range(0, _buckets(data), width):
        values = [
            r["dt"]
            for r in data.records
            if r["kind"] in WELL_BEHAVED_HTTP
            and r.get("status") == 200
            and r.get("complete")
            and start <= r["t0"] - origin < start + width
        ]
        if values:
            xs.append(start + width / 2)
            p50s.append(percentile_nearest_rank(values, 0.5) * 1000)
            p95s.append(percentile_nearest_rank(values, 0.95) * 1000)
    ax.plot(xs, p50s, marker="o", label="p50")
    ax.plot(xs, p95s, marker="o", label="p95")
    ax.set_ylabel("ms")
    ax.set_title("Latency of admitted well-behaved completions (10 s windows)")
    ax.legend()
    _annotate(ax, data)
    return _save(fig, out / "admitted_latency.png")


def plot_refusal_latency(data: RunData, out: Path) -> str:
    """Each 429's latency over time, and their distribution against the goal for the p95."""
    plt, origin = _pyplot(), _origin(data)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    refusals = [r for r in data.records if r.get("status") == 429 and r["kind"] in HTTP_KINDS]
    left.scatter([r["t0"] - origin for r in refusals], [r["dt"] * 1000 for r in refusals], s=2)
    left.set_ylabel("ms")
    left.set_title("Latency of each 429")
    _annotate(left, data)
    right.hist([r["dt"] * 1000 for r in refusals], bins=60)
    right.axvline(P95_429_GOAL_MS, color="red", linestyle="--", label="goal for p95")
    right.set_xlabel("ms")
    right.set_title("Distribution of 429 latency")
    right.legend()
    return _save(fig, out / "refusal_latency.png")


def plot_engine_latency(data: RunData, out: Path) -> str:
    """The engine's own view: queue wait and generation, from Prometheus."""
    plt, origin = _pyplot(), _origin(data)
    fig, ax = plt.subplots(figsize=(10, 3.5))
    engine_series = (("ttft_p95", "p95 time to first token"), ("generation_p95", "p95 generation"))
    for name, label in engine_series:
        points = data.series.get(name, [])
        ax.plot([t - origin for t, _ in points], [v * 1000 for _, v in points], label=label)
    ax.set_ylabel("ms")
    ax.set_title("Inside the engine (Prometheus, 10 s windows)")
    ax.legend()
    _annotate(ax, data)
    return _save(fig, out / "engine_latency.png")


def plot_engine_load(data: RunData, out: Path) -> list[str]:
    """Queue depth and batch size, from Prometheus."""
    plt, origin, files = _pyplot(), _origin(data), []
    for name, title, ylabel in (
        ("queue_depth", "Engine queue depth (sum over replicas, Prometheus)", "requests waiting"),
        ("batch_size", "Mean batch size (Prometheus, 5 s rate)", "rows per batch"),
    ):
        fig, ax = plt.subplots(figsize=(10, 3.5))
        points = data.series.get(name, [])
        ax.plot([t - origin for t, _ in points], [v for _, v in points], linewidth=1)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        _annotate(ax, data)
        files.append(_save(fig, out / f"{name}.png"))
    return files


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path.name
