"""Write a chaos run's report: loadtest/reports/<timestamp>/README.md, checks.json and the plots.

The run's data is loaded in loadtest/chaos/rundata.py, judged in checks.py (every check PASS or
FAIL with the numbers behind it) and drawn in plots.py; this module puts the figures in writing.
"""

import json
from datetime import UTC, datetime
from pathlib import Path

from loadtest.chaos.checks import run_checks
from loadtest.chaos.plots import plot_all
from loadtest.chaos.rundata import RunData, window
from loadtest.percentiles import percentile_nearest_rank

TRAFFIC = ("baseline", "swarm")  # the windows whose answers the report counts by status


def write_report(data: RunData, out: Path, command: str) -> dict:
    """Run the checks, draw the plots, write README.md and checks.json; the summary."""
    out.mkdir(parents=True, exist_ok=True)
    tables = run_checks(data)
    images = plot_all(data, out)
    traffic = {name: status_counts(data.records, *window(data, name)) for name in TRAFFIC}
    lines = [
        *header(data, command),
        *checks_table(data),
        *traffic_table(data, traffic),
        *cpu_table(data),
        *time_split_table(data),
        *events_table(data),
        *bounds_table(tables["bounds"]),
        *usage_table(tables["usage"]),
        "",
        "## Plots",
        "",
        *(f"![{name}]({name})" for name in images),
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    summary = {
        "checks": [vars(check) for check in data.checks],
        "traffic": traffic,
        "cpu_hog": data.settings.get("cpu_hog", 0),
        "images": images,
    }
    (out / "checks.json").write_text(json.dumps(summary, indent=2))
    return summary


def status_counts(records: list[dict], lo: float, hi: float) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        if lo <= r["t0"] < hi and r["kind"] != "ws_connect":
            label = str(r.get("status", 0))
            if r.get("status") == 200 and r.get("complete") is False:
                label = "200 cut"
            counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


def header(data: RunData, command: str) -> list[str]:
    """The title, the command and what ran: profile, users, model, CPUs, a CPU hog."""
    profile, settings = data.profile, data.settings
    cpus = (
        f"model threads on CPU {settings['model_cpus']}, everything else on CPU "
        f"{settings['request_cpus']}."
        if settings.get("model_cpus")
        else "every process on every CPU."
    )
    hog = (
        f" Beside the stack, from before the baseline to the end: a CPU hog of "
        f"{settings['cpu_hog']} process(es) spinning on a core each (`--cpu-hog`)."
        if settings.get("cpu_hog")
        else ""
    )
    return [
        f"# Chaos run {datetime.fromtimestamp(data.phases['baseline'], UTC):%Y-%m-%d %H:%M:%S} UTC",
        "",
        f"Command: `{command}`",
        "",
        f"Profile: {profile['name']}; model: {profile['model']}; "
        f"{profile['baseline_users']} well-behaved users for "
        f"{profile['baseline_s']} s, then {profile['users']} users for "
        f"{profile['swarm_s']} s; two daphne replicas behind Traefik; " + cpus + hog,
    ]


def checks_table(data: RunData) -> list[str]:
    lines = ["", "## Checks", "", "| check | result | figures |", "| --- | --- | --- |"]
    for check in data.checks:
        lines.append(
            f"| {check.name} | **{'PASS' if check.passed else 'FAIL'}** | {check.detail} |"
        )
    return lines


def traffic_table(data: RunData, traffic: dict[str, dict[str, int]]) -> list[str]:
    lines = ["", "## Traffic", "", "| window | seconds | answers by status | answers/s |"]
    lines.append("| --- | --- | --- | --- |")
    for label, counts in traffic.items():
        lo, hi = window(data, label)
        total = sum(counts.values())
        lines.append(f"| {label} | {hi - lo:.0f} | {counts} | {total / max(hi - lo, 1e-9):.1f} |")
    return lines


def cpu_table(data: RunData) -> list[str]:
    if not data.cpu:
        return []
    seconds = data.profile["baseline_s"] + data.profile["swarm_s"]
    lines = ["", f"## CPU during the run ({seconds:.0f} s, 2 cores = {2 * seconds:.0f} CPU-s)"]
    lines += ["", "| component | CPU seconds | share of one core |", "| --- | --- | --- |"]
    for name, used in sorted(data.cpu.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {used:.1f} | {used / seconds:.0%} |")
    lines.append("")
    lines.append("(a replica's successive processes added up, model loading included)")
    return lines


def time_split_table(data: RunData) -> list[str]:
    """Where the time of admitted REST completions goes: queue, inference and the rest."""
    lines = ["", "## Where the time of admitted REST completions goes", ""]
    lines += ["From the node's `x-queue-time-ms` and `x-inference-time-ms` headers; the rest is"]
    lines += ["HTTP, Traefik, admission and the client. p50 / p95 in ms.", ""]
    lines += ["| window | requests | total | queue | inference | rest |"]
    lines += ["| --- | --- | --- | --- | --- | --- |"]
    for label in ("baseline", "calm"):
        lo, hi = window(data, label)
        rows = [
            r
            for r in data.records
            if r["kind"] == "rest" and r.get("status") == 200 and "inference_ms" in r
            and lo <= r["t0"] < hi
        ]  # fmt: skip
        if not rows:
            continue
        parts = {
            "total": [r["dt"] * 1000 for r in rows],
            "queue": [r["queue_ms"] for r in rows],
            "inference": [r["inference_ms"] for r in rows],
            "rest": [r["dt"] * 1000 - r["queue_ms"] - r["inference_ms"] for r in rows],
        }
        cells = " | ".join(
            f"{percentile_nearest_rank(v, 0.5):.0f} / {percentile_nearest_rank(v, 0.95):.0f}"
            for v in parts.values()
        )
        name = "baseline" if label == "baseline" else "swarm before the faults"
        lines.append(f"| {name} | {len(rows)} | {cells} |")
    return lines


def events_table(data: RunData) -> list[str]:
    origin = data.phases["baseline"]
    lines = ["", "## Events", "", "| t (s) | event |", "| --- | --- |"]
    for event in data.events:
        details = {k: v for k, v in event.items() if k not in ("t", "kind")}
        lines.append(f"| {event['t'] - origin:.1f} | {event['kind']} {details or ''} |")
    return lines


def bounds_table(rows: list[dict]) -> list[str]:
    lines = ["", "## Per key: admitted against the bound", "", "| key | rpm | admitted | bound |"]
    lines.append("| --- | --- | --- | --- |")
    for row in rows:
        lines.append(f"| {row['key']} | {row['rpm']} | {row['admitted']} | {row['bound']:.1f} |")
    return lines


def usage_table(rows: list[dict]) -> list[str]:
    lines = ["", "## Usage: what clients received against Postgres", ""]
    lines += ["| key | client (req / prompt / completion) | Postgres | died with a replica | ok |"]
    lines += ["| --- | --- | --- | --- | --- |"]
    for row in rows:
        c, p = row["client"], row["postgres"]
        lines.append(
            f"| {row['key']} | {c['requests']} / {c['prompt_tokens']} / {c['completion_tokens']}"
            f" | {p['requests']} / {p['prompt_tokens']} / {p['completion_tokens']} | "
            f"{row['died']} ({row['billed_died']} settled) | {'yes' if row['ok'] else 'NO'} |"
        )
    return lines
