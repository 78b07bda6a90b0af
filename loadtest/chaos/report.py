"""Turn a chaos run into checks, figures and plots: loadtest/reports/<timestamp>/README.md.

Inputs: the clients' records (one JSON line per request, from loadtest/locustfile.py), Traefik's
access log (which replica served each X-Request-Id, and when), the run's events (chaos and
restarts), usage in Postgres, leases left in Redis, and Prometheus series (queue depth, batch
size). Every check prints PASS or FAIL with the numbers behind it.
"""

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HTTP_KINDS = ("rest", "sse", "hostile", "invalid", "oversized_prompt", "oversized_body")
HTTP_KINDS += ("oversized_max_tokens",)
WELL_BEHAVED_HTTP = ("rest", "sse")
P95_RATIO_GOAL = 1.25
P95_429_GOAL_MS = 20.0
FAULTS = ("redis_stopping", "replica_killed", "postgres_cut")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    timed: bool = False  # a speed goal (reported, never asserted by tests)


@dataclass
class RunData:
    records: list[dict]
    phases: dict[str, float]
    events: list[dict]
    access: list[dict]
    usage: dict[str, dict[str, int]]  # key name -> requests, prompt_tokens, completion_tokens
    limits: dict
    leases: dict[str, int]
    series: dict[str, list[tuple[float, float]]]
    settings: dict
    profile: dict
    cpu: dict[str, float] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    # Request id -> Traefik's log entry, for every HTTP request in flight on a killed replica
    # (filled once by run_checks from in_flight_at_kills).
    in_flight: dict[str, dict] = field(default_factory=dict)


def load_records(path: Path) -> tuple[list[dict], dict[str, float]]:
    records, phases = [], {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        if entry.get("event") == "phase":
            phases.setdefault(entry["name"], entry["t"])
        else:
            records.append(entry)
    return records, phases


def load_access_log(path: Path) -> list[dict]:
    """Traefik's JSON access log: request id, replica, status, start and end (epoch s)."""
    entries = []
    if not path.exists():
        return entries
    for line in path.read_text(errors="replace").splitlines():
        try:
            raw = json.loads(line)
        except ValueError:
            continue
        start = datetime.fromisoformat(raw["StartUTC"].replace("Z", "+00:00")).timestamp()
        entries.append(
            {
                "id": raw.get("request_X-Request-Id", ""),
                "server": (raw.get("ServiceURL") or "").rstrip("/"),
                "status": raw.get("DownstreamStatus", 0),
                "origin": raw.get("OriginStatus", 0),
                "start": start,
                "end": start + raw.get("Duration", 0) / 1e9,
                "retries": raw.get("RetryAttempts", 0),
                "path": raw.get("RequestPath", ""),
            }
        )
    return entries


# --- the checks ----------------------------------------------------------------------------
def failed_at_client(entry: dict) -> bool:
    status = entry.get("status", 0)
    return status == 0 or status >= 500 or (status == 200 and entry.get("complete") is False)


def in_flight_at_kills(data: RunData) -> dict[str, dict]:
    """HTTP requests Traefik had sent to a replica when it was killed (its access log)."""
    found: dict[str, dict] = {}
    for kill in (e for e in data.events if e["kind"] == "replica_killed"):
        for entry in data.access:
            if entry["id"].startswith("chaos-ws-") or entry["server"] != kill["url"]:
                continue
            if entry["start"] <= kill["dead_at"] and entry["end"] >= kill["t"]:
                found[entry["id"]] = entry
    return found


def check_kill_accounting(data: RunData) -> Check:
    kills = [e for e in data.events if e["kind"] == "replica_killed"]
    by_id = {entry["id"]: entry for entry in data.access if entry["id"]}
    http = [r for r in data.records if r["kind"] in HTTP_KINDS]
    failures = [r for r in http if failed_at_client(r)]
    in_flight = data.in_flight
    explained = [r for r in failures if r["id"] in in_flight]
    unexplained = [r for r in failures if r["id"] not in in_flight]
    survived = [i for i in in_flight if i not in {r["id"] for r in failures}]
    five_xx = sum(1 for r in failures if r.get("status", 0) >= 500)
    cut = sum(1 for r in failures if r.get("status") == 200)
    # WebSocket requests dropped with their socket: every such socket must be on a killed replica.
    sockets = {e["id"]: e for e in data.access if e["id"].startswith("chaos-ws-") and e["server"]}
    ws_failed = [r for r in data.records if r["kind"] == "ws" and r.get("exception")]
    ws_elsewhere = [
        r
        for r in ws_failed
        if not any(
            sockets.get(r.get("conn") or "", {}).get("server") == kill["url"] for kill in kills
        )
    ]
    samples = ", ".join(
        f"{r['kind']} {r.get('status')} {r.get('code') or r.get('exception') or ''}"
        f" via {by_id.get(r['id'], {}).get('server', '?')}"
        for r in unexplained[:5]
    )
    expected = data.profile["kill_at"] < data.profile["swarm_s"]  # not in a shortened run
    # A request in the kill's window whose client got a whole, good answer was answered before
    # the process died (Traefik logs its end a little after the replica's last byte): counted,
    # not a failure. What the check forbids is a 5xx or broken answer not explained by the kill.
    passed = len(kills) == expected and not unexplained and not ws_elsewhere
    detail = (
        f"{len(kills)} SIGKILL; {len(in_flight)} HTTP requests were in flight on the killed "
        f"replica (Traefik's access log); {len(explained)} failed at the client ({five_xx} "
        f"5xx, {cut} cut streams), {len(survived)} in the kill's window got a whole answer; "
        f"other 5xx or broken answers: {len(unexplained)}"
        f"{' (' + samples + ')' if samples else ''}; "
        f"WebSocket requests dropped with their socket: {len(ws_failed)}, "
        f"{len(ws_failed) - len(ws_elsewhere)} of them on the killed replica"
    )
    return Check("no 5xx except the requests in flight on the killed process", passed, detail)


def limit_bound(limit: int, burst_percent: int, seconds: float) -> float:
    burst = max(1, math.ceil(limit * burst_percent / 100))
    return burst + limit * seconds / 60


def local_allowance(limit: int, burst_percent: int, seconds: float, data: RunData) -> float:
    """What the per-process fallback may add while Redis is away (docs/ratelimit.md)."""
    divisor = data.settings["local_divisor"]
    share = max(1, limit // divisor)
    return data.settings["processes"] * limit_bound(share, burst_percent, seconds)


def check_key_bounds(data: RunData) -> tuple[Check, list[dict]]:
    first = min((r["t0"] for r in data.records), default=0.0)
    last = max((r["t0"] + r.get("dt", 0) for r in data.records), default=0.0)
    seconds = last - first
    outage = local_seconds(data)
    rows, passed = [], True
    counted = [r for r in data.records if r["kind"] in HTTP_KINDS or r["kind"] == "ws"]
    in_flight = data.in_flight
    admitted: dict[str, int] = {}
    died: dict[str, int] = {}
    for r in counted:
        # Admitted: every answer, whole or cut, and every 503 overloaded (admitted, then refused
        # by the full queue). A request that died with the killed replica may or may not have
        # been: the lease records it left unsettled in Redis say how many were, per tenant.
        status = r.get("status", 0)
        if status == 200 or r.get("code") == "overloaded":
            admitted[r["key"]] = admitted.get(r["key"], 0) + 1
        elif r["id"] in in_flight:
            died[r["key"]] = died.get(r["key"], 0) + 1
    unsettled = data.leases.get("by_tenant", {})
    for name, spec in data.limits["keys"].items():
        tenant_pk = str(data.limits["tenants"][spec["tenant"]]["pk"])
        extra = min(died.get(name, 0), unsettled.get(tenant_pk, 0))
        admitted[name] = admitted.get(name, 0) + extra
    tenants = data.limits["tenants"]
    for name, spec in data.limits["keys"].items():
        tenant = tenants[spec["tenant"]]
        burst = tenant["burst_percent"]
        scopes = [("key", spec["rpm"])] if spec.get("rpm") else []
        scopes.append(("tenant", tenant["rpm"]))
        limit = min(value for _, value in scopes)
        bound = limit_bound(limit, burst, seconds) + local_allowance(limit, burst, outage, data)
        count = admitted.get(name, 0)
        ok = count <= bound
        passed &= ok
        rows.append({"key": name, "tenant": spec["tenant"], "rpm": limit, "admitted": count,
                     "bound": bound, "ok": ok})  # fmt: skip
    for slug, tenant in tenants.items():
        count = sum(row["admitted"] for row in rows if row["tenant"] == slug)
        limit, burst = tenant["rpm"], tenant["burst_percent"]
        bound = limit_bound(limit, burst, seconds) + local_allowance(limit, burst, outage, data)
        ok = count <= bound
        passed &= ok
        rows.append({"key": f"(tenant {slug})", "tenant": slug, "rpm": limit, "admitted": count,
                     "bound": bound, "ok": ok})  # fmt: skip
    worst = max(rows, key=lambda row: row["admitted"] / row["bound"])
    detail = (
        f"{len(rows)} keys and tenants over {seconds:.0f} s (bound: burst + rpm x minutes, plus "
        f"the per-process fallback's share during {outage:.1f} s without Redis; requests that "
        f"died with the killed replica counted as admitted up to the unsettled leases their "
        f"tenant left); closest: "
        f"{worst['key']} {worst['admitted']} of {worst['bound']:.1f}"
    )
    return Check("per key, admitted <= the limit's bound", passed, detail), rows


def local_seconds(data: RunData) -> float:
    """From Redis going down until it was back plus the breaker's open time."""
    down = [e["t"] for e in data.events if e["kind"] == "redis_stopping"]
    up = [e["t"] for e in data.events if e["kind"] == "redis_up"]
    return sum(u - d for d, u in zip(down, up, strict=False)) + data.settings[
        "breaker_seconds"
    ] * len(up)


def client_usage(data: RunData) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for r in data.records:
        if r.get("status") != 200 or not r.get("complete") or not r.get("usage"):
            continue
        row = totals.setdefault(
            r["key"], {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        )
        row["requests"] += 1
        row["prompt_tokens"] += r["usage"]["prompt_tokens"]
        row["completion_tokens"] += r["usage"]["completion_tokens"]
    return totals


def died_with_a_replica(data: RunData) -> dict[str, int]:
    """Per key: requests that were running on a replica when it was killed (HTTP in flight per
    Traefik's log, WebSocket requests dropped with their socket). The replica settles a request
    before sending its end, so each of these may or may not be in Postgres."""
    in_flight = data.in_flight
    died: dict[str, int] = {}
    for r in data.records:
        dropped = r["kind"] == "ws" and r.get("exception")
        if r["id"] in in_flight or dropped:
            died[r["key"]] = died.get(r["key"], 0) + 1
    return died


def check_usage(data: RunData) -> tuple[Check, list[dict]]:
    clients = client_usage(data)
    died = died_with_a_replica(data)
    rows, passed = [], True
    zero = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for key in sorted(set(clients) | set(data.usage)):
        seen, stored = clients.get(key, zero), data.usage.get(key, zero)
        extra = {f: stored[f] - seen[f] for f in zero}  # billed, but the answer never arrived
        if extra["requests"] == 0:
            ok = all(value == 0 for value in extra.values())
        else:
            ok = 0 < extra["requests"] <= died.get(key, 0) and min(extra.values()) >= 0
        passed &= ok
        rows.append({"key": key, "client": seen, "postgres": stored, "ok": ok,
                     "died": died.get(key, 0), "billed_died": extra["requests"]})  # fmt: skip
    total = {f: sum(row["client"][f] for row in rows) for f in zero}
    billed_died = sum(row["billed_died"] for row in rows)
    detail = (
        f"{len(rows)} keys; clients received {total['requests']} whole answers, "
        f"{total['prompt_tokens']} prompt and {total['completion_tokens']} completion tokens, "
        f"all in Postgres; of {sum(died.values())} requests that died with the killed replica, "
        f"{billed_died} had been settled before (Postgres has them, their clients did not get "
        f"the end); keys that differ otherwise: "
        f"{[row['key'] for row in rows if not row['ok']] or 'none'}"
    )
    return Check("every accepted request accounted in Postgres usage", passed, detail), rows


def check_leases(data: RunData) -> Check:
    live, records = data.leases["live"], data.leases["unsettled_records"]
    detail = (
        f"live in-flight leases at the end: {live}; lease records never settled (requests "
        f"that died with the killed replica, their slots freed by expiry): {records}"
    )
    return Check("every lease released at the end", live == 0, detail)


def window(data: RunData, name: str) -> tuple[float, float]:
    """baseline: the well-behaved users alone (after a warm-up); swarm: everyone, faults
    included; calm: the swarm before its first fault (where the latency goals are measured)."""
    start, swarm, end = data.phases["baseline"], data.phases["swarm"], data.phases.get("end")
    if name == "baseline":
        return start + data.profile["warmup_s"], swarm
    end = end or max(r["t0"] for r in data.records)
    if name == "calm":
        first_fault = min((e["t"] for e in data.events if e["kind"] in FAULTS), default=end)
        return swarm + data.profile["ramp_s"], min(first_fault, end)
    return swarm + data.profile["ramp_s"], end


def admitted_latencies(data: RunData, name: str) -> list[float]:
    lo, hi = window(data, name)
    return [
        r["dt"]
        for r in data.records
        if r["kind"] in WELL_BEHAVED_HTTP
        and r.get("status") == 200
        and r.get("complete")
        and lo <= r["t0"] < hi
    ]


def refusal_latencies(data: RunData, name: str = "calm") -> list[float]:
    lo, hi = window(data, name)
    return [
        r["dt"]
        for r in data.records
        if r["kind"] in HTTP_KINDS and r.get("status") == 429 and lo <= r["t0"] < hi
    ]


def check_latency(data: RunData) -> list[Check]:
    base, calm = admitted_latencies(data, "baseline"), admitted_latencies(data, "calm")
    everything = admitted_latencies(data, "swarm")
    p95_base, p95_calm = percentile(base, 95), percentile(calm, 95)
    ratio = p95_calm / p95_base if base and calm else float("inf")
    refusals, all_refusals = refusal_latencies(data, "calm"), refusal_latencies(data, "swarm")
    p95_429 = percentile(refusals, 95) * 1000
    users = data.profile["baseline_users"]
    return [
        Check(
            f"p95 of admitted requests under the swarm <= {P95_RATIO_GOAL}x the p95 at "
            f"{users} users",
            ratio <= P95_RATIO_GOAL,
            f"p95 {p95_calm * 1000:.0f} ms under the swarm before the faults ({len(calm)} "
            f"requests) vs {p95_base * 1000:.0f} ms at {users} users ({len(base)}): "
            f"{ratio:.2f}x; over the whole swarm, faults included: "
            f"{percentile(everything, 95) * 1000:.0f} ms ({len(everything)} requests)",
            timed=True,
        ),
        Check(
            f"p95 of 429 answers <= {P95_429_GOAL_MS:.0f} ms",
            p95_429 <= P95_429_GOAL_MS,
            f"before the faults: p50 {percentile(refusals, 50) * 1000:.1f} ms, p95 "
            f"{p95_429:.1f} ms, p99 {percentile(refusals, 99) * 1000:.1f} ms over "
            f"{len(refusals)} refusals; whole swarm: p95 "
            f"{percentile(all_refusals, 95) * 1000:.1f} ms over {len(all_refusals)}",
            timed=True,
        ),
    ]


def run_checks(data: RunData) -> dict:
    data.in_flight = in_flight_at_kills(data)
    bounds_check, bound_rows = check_key_bounds(data)
    usage_check, usage_rows = check_usage(data)
    data.checks = [
        check_kill_accounting(data),
        bounds_check,
        usage_check,
        check_leases(data),
        *check_latency(data),
    ]
    return {"bounds": bound_rows, "usage": usage_rows}


# --- figures and plots -------------------------------------------------------------------
def status_counts(records: list[dict], lo: float, hi: float) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        if lo <= r["t0"] < hi and r["kind"] != "ws_connect":
            label = str(r.get("status", 0))
            if r.get("status") == 200 and r.get("complete") is False:
                label = "200 cut"
            counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


def plot_all(data: RunData, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    origin = data.phases["baseline"]
    end = max(r["t0"] + r.get("dt", 0) for r in data.records)
    marks = [
        (e["t"] - origin, e["kind"].replace("_", " "))
        for e in data.events
        if e["kind"] in ("redis_stopping", "replica_killed", "replica_restarted", "postgres_cut")
    ]

    def annotate(ax) -> None:  # type: ignore[no-untyped-def]
        ax.axvline(data.phases["swarm"] - origin, color="grey", linestyle=":", linewidth=1)
        for t, label in marks:
            ax.axvline(t, color="red", alpha=0.5, linewidth=1)
            ax.text(t, ax.get_ylim()[1], label, rotation=90, va="top", ha="right", fontsize=7)
        ax.set_xlabel("seconds since the start")
        ax.grid(alpha=0.3)

    files = []
    buckets = int(end - origin) + 1
    # 1. requests/s by status
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
    annotate(ax)
    files.append(_save(fig, out / "requests_by_status.png"))
    # 2. p50/p95 of admitted requests over time (10 s windows)
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 10
    xs, p50s, p95s = [], [], []
    for start in range(0, buckets, width):
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
            p50s.append(percentile(values, 50) * 1000)
            p95s.append(percentile(values, 95) * 1000)
    ax.plot(xs, p50s, marker="o", label="p50")
    ax.plot(xs, p95s, marker="o", label="p95")
    ax.set_ylabel("ms")
    ax.set_title("Latency of admitted well-behaved completions (10 s windows)")
    ax.legend()
    annotate(ax)
    files.append(_save(fig, out / "admitted_latency.png"))
    # 3. latency of 429s
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    refusals = [r for r in data.records if r.get("status") == 429 and r["kind"] in HTTP_KINDS]
    left.scatter([r["t0"] - origin for r in refusals], [r["dt"] * 1000 for r in refusals], s=2)
    left.set_ylabel("ms")
    left.set_title("Latency of each 429")
    annotate(left)
    right.hist([r["dt"] * 1000 for r in refusals], bins=60)
    right.axvline(P95_429_GOAL_MS, color="red", linestyle="--", label="goal for p95")
    right.set_xlabel("ms")
    right.set_title("Distribution of 429 latency")
    right.legend()
    files.append(_save(fig, out / "refusal_latency.png"))
    # 4. the engine's own view: queue wait + generation, from Prometheus
    fig, ax = plt.subplots(figsize=(10, 3.5))
    engine_series = (("ttft_p95", "p95 time to first token"), ("generation_p95", "p95 generation"))
    for name, label in engine_series:
        points = data.series.get(name, [])
        ax.plot([t - origin for t, _ in points], [v * 1000 for _, v in points], label=label)
    ax.set_ylabel("ms")
    ax.set_title("Inside the engine (Prometheus, 10 s windows)")
    ax.legend()
    annotate(ax)
    files.append(_save(fig, out / "engine_latency.png"))
    # 5/6. queue depth and batch size, from Prometheus
    for name, title, ylabel in (
        ("queue_depth", "Engine queue depth (sum over replicas, Prometheus)", "requests waiting"),
        ("batch_size", "Mean batch size (Prometheus, 5 s rate)", "rows per batch"),
    ):
        fig, ax = plt.subplots(figsize=(10, 3.5))
        points = data.series.get(name, [])
        ax.plot([t - origin for t, _ in points], [v for _, v in points], linewidth=1)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        annotate(ax)
        files.append(_save(fig, out / f"{name}.png"))
    return files


def _save(fig, path: Path) -> str:  # type: ignore[no-untyped-def]
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def write_report(data: RunData, out: Path, command: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    tables = run_checks(data)
    images = plot_all(data, out)
    origin = data.phases["baseline"]
    base_lo, base_hi = window(data, "baseline")
    swarm_lo, swarm_hi = window(data, "swarm")
    base_counts = status_counts(data.records, base_lo, base_hi)
    swarm_counts = status_counts(data.records, swarm_lo, swarm_hi)
    lines = [
        f"# Chaos run {datetime.fromtimestamp(origin, UTC):%Y-%m-%d %H:%M:%S} UTC",
        "",
        f"Command: `{command}`",
        "",
        f"Profile: {data.profile['name']}; model: {data.profile['model']}; "
        f"{data.profile['baseline_users']} well-behaved users for "
        f"{data.profile['baseline_s']} s, then {data.profile['users']} users for "
        f"{data.profile['swarm_s']} s; two daphne replicas behind Traefik; "
        + (
            f"model threads on CPU {data.settings['model_cpus']}, everything else on CPU "
            f"{data.settings['request_cpus']}."
            if data.settings.get("model_cpus")
            else "every process on every CPU."
        )
        + (
            f" Beside the stack, from before the baseline to the end: a CPU hog of "
            f"{data.settings['cpu_hog']} process(es) spinning on a core each (`--cpu-hog`)."
            if data.settings.get("cpu_hog")
            else ""
        ),
        "",
        "## Checks",
        "",
        "| check | result | figures |",
        "| --- | --- | --- |",
    ]
    for check in data.checks:
        lines.append(
            f"| {check.name} | **{'PASS' if check.passed else 'FAIL'}** | {check.detail} |"
        )
    lines += ["", "## Traffic", "", "| window | seconds | answers by status | answers/s |"]
    lines.append("| --- | --- | --- | --- |")
    for label, (lo, hi), counts in (
        ("baseline", (base_lo, base_hi), base_counts),
        ("swarm", (swarm_lo, swarm_hi), swarm_counts),
    ):
        total = sum(counts.values())
        lines.append(f"| {label} | {hi - lo:.0f} | {counts} | {total / max(hi - lo, 1e-9):.1f} |")
    if data.cpu:
        seconds = data.profile["baseline_s"] + data.profile["swarm_s"]
        lines += ["", f"## CPU during the run ({seconds:.0f} s, 2 cores = {2 * seconds:.0f} CPU-s)"]
        lines += ["", "| component | CPU seconds | share of one core |", "| --- | --- | --- |"]
        for name, used in sorted(data.cpu.items(), key=lambda item: -item[1]):
            lines.append(f"| {name} | {used:.1f} | {used / seconds:.0%} |")
        lines.append("")
        lines.append("(a replica's successive processes added up, model loading included)")
    lines += ["", "## Where the time of admitted REST completions goes", ""]
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
            f"{percentile(v, 50):.0f} / {percentile(v, 95):.0f}" for v in parts.values()
        )
        name = "baseline" if label == "baseline" else "swarm before the faults"
        lines.append(f"| {name} | {len(rows)} | {cells} |")
    lines += ["", "## Events", "", "| t (s) | event |", "| --- | --- |"]
    for event in data.events:
        details = {k: v for k, v in event.items() if k not in ("t", "kind")}
        lines.append(f"| {event['t'] - origin:.1f} | {event['kind']} {details or ''} |")
    lines += ["", "## Per key: admitted against the bound", "", "| key | rpm | admitted | bound |"]
    lines.append("| --- | --- | --- | --- |")
    for row in tables["bounds"]:
        lines.append(f"| {row['key']} | {row['rpm']} | {row['admitted']} | {row['bound']:.1f} |")
    lines += ["", "## Usage: what clients received against Postgres", ""]
    lines += ["| key | client (req / prompt / completion) | Postgres | died with a replica | ok |"]
    lines += ["| --- | --- | --- | --- | --- |"]
    for row in tables["usage"]:
        c, p = row["client"], row["postgres"]
        lines.append(
            f"| {row['key']} | {c['requests']} / {c['prompt_tokens']} / {c['completion_tokens']}"
            f" | {p['requests']} / {p['prompt_tokens']} / {p['completion_tokens']} | "
            f"{row['died']} ({row['billed_died']} settled) | {'yes' if row['ok'] else 'NO'} |"
        )
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({name})" for name in images]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    summary = {
        "checks": [vars(check) for check in data.checks],
        "traffic": {"baseline": base_counts, "swarm": swarm_counts},
        "cpu_hog": data.settings.get("cpu_hog", 0),
        "images": images,
    }
    (out / "checks.json").write_text(json.dumps(summary, indent=2))
    return summary
