"""The chaos run's checks: each one PASS or FAIL with the numbers behind it.

Correctness: no 5xx but the requests that died with the killed replica, no key or tenant admitted
past its limit's bound, every answer billed in Postgres, every lease released. Speed (timed: a
benchmark's goals, reported, never asserted by tests): the p95 of admitted requests under the
swarm against the baseline, and the p95 of 429 answers.
"""

import math

from loadtest.chaos.rundata import HTTP_KINDS, WELL_BEHAVED_HTTP, Check, RunData, window
from loadtest.percentiles import percentile_nearest_rank

P95_RATIO_GOAL = 1.25
P95_429_GOAL_MS = 20.0
# How far before a kill the report looks for answers whose usage the process may have held.
KILL_LOOKBACK_S = 2.0


def run_checks(data: RunData) -> dict:
    """Fill data.checks; return the per-key tables behind them (bounds, usage)."""
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


# --- the killed replica ----------------------------------------------------------------------
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


def dropped_websockets(data: RunData, kills: list[dict]) -> tuple[list[dict], list[dict]]:
    """WebSocket requests dropped with their socket, and those of them whose socket was not on
    a killed replica (there must be none)."""
    sockets = {e["id"]: e for e in data.access if e["id"].startswith("chaos-ws-") and e["server"]}
    failed = [r for r in data.records if r["kind"] == "ws" and r.get("exception")]
    elsewhere = [
        r
        for r in failed
        if not any(
            sockets.get(r.get("conn") or "", {}).get("server") == kill["url"] for kill in kills
        )
    ]
    return failed, elsewhere


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
    ws_failed, ws_elsewhere = dropped_websockets(data, kills)
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


# --- limits ----------------------------------------------------------------------------------
def limit_bound(limit: int, burst_percent: int, seconds: float) -> float:
    burst = max(1, math.ceil(limit * burst_percent / 100))
    return burst + limit * seconds / 60


def local_allowance(limit: int, burst_percent: int, seconds: float, data: RunData) -> float:
    """What the per-process fallback may add while Redis is away (docs/ratelimit.md)."""
    divisor = data.settings["local_divisor"]
    share = max(1, limit // divisor)
    return data.settings["processes"] * limit_bound(share, burst_percent, seconds)


def local_seconds(data: RunData) -> float:
    """From Redis going down until it was back plus the breaker's open time."""
    down = [e["t"] for e in data.events if e["kind"] == "redis_stopping"]
    up = [e["t"] for e in data.events if e["kind"] == "redis_up"]
    return sum(u - d for d, u in zip(down, up, strict=False)) + data.settings[
        "breaker_seconds"
    ] * len(up)


def admitted_by_key(data: RunData) -> dict[str, int]:
    """Per key: the requests the limiter admitted, as far as the clients and Redis tell."""
    counted = [r for r in data.records if r["kind"] in HTTP_KINDS or r["kind"] == "ws"]
    admitted: dict[str, int] = {}
    died: dict[str, int] = {}
    for r in counted:
        # Admitted: every answer, whole or cut, and every 503 overloaded (admitted, then refused
        # by the full queue). A request that died with the killed replica may or may not have
        # been: the lease records it left unsettled in Redis say how many were, per tenant.
        status = r.get("status", 0)
        if status == 200 or r.get("code") == "overloaded":
            admitted[r["key"]] = admitted.get(r["key"], 0) + 1
        elif r["id"] in data.in_flight:
            died[r["key"]] = died.get(r["key"], 0) + 1
    unsettled = data.leases.get("by_tenant", {})
    for name, spec in data.limits["keys"].items():
        tenant_pk = str(data.limits["tenants"][spec["tenant"]]["pk"])
        extra = min(died.get(name, 0), unsettled.get(tenant_pk, 0))
        admitted[name] = admitted.get(name, 0) + extra
    return admitted


def bound_rows(data: RunData, seconds: float, outage: float) -> list[dict]:
    """Per key, then per tenant: the limit, what was admitted and the bound it must stay in."""
    admitted = admitted_by_key(data)
    tenants = data.limits["tenants"]
    rows = []
    for name, spec in data.limits["keys"].items():
        tenant = tenants[spec["tenant"]]
        burst = tenant["burst_percent"]
        scopes = [("key", spec["rpm"])] if spec.get("rpm") else []
        scopes.append(("tenant", tenant["rpm"]))
        limit = min(value for _, value in scopes)
        bound = limit_bound(limit, burst, seconds) + local_allowance(limit, burst, outage, data)
        count = admitted.get(name, 0)
        rows.append({"key": name, "tenant": spec["tenant"], "rpm": limit, "admitted": count,
                     "bound": bound, "ok": count <= bound})  # fmt: skip
    for slug, tenant in tenants.items():
        count = sum(row["admitted"] for row in rows if row["tenant"] == slug)
        limit, burst = tenant["rpm"], tenant["burst_percent"]
        bound = limit_bound(limit, burst, seconds) + local_allowance(limit, burst, outage, data)
        rows.append({"key": f"(tenant {slug})", "tenant": slug, "rpm": limit, "admitted": count,
                     "bound": bound, "ok": count <= bound})  # fmt: skip
    return rows


def check_key_bounds(data: RunData) -> tuple[Check, list[dict]]:
    first = min((r["t0"] for r in data.records), default=0.0)
    last = max((r["t0"] + r.get("dt", 0) for r in data.records), default=0.0)
    seconds = last - first
    outage = local_seconds(data)
    rows = bound_rows(data, seconds, outage)
    passed = all(row["ok"] for row in rows)
    worst = max(rows, key=lambda row: row["admitted"] / row["bound"])
    detail = (
        f"{len(rows)} keys and tenants over {seconds:.0f} s (bound: burst + rpm x minutes, plus "
        f"the per-process fallback's share during {outage:.1f} s without Redis; requests that "
        f"died with the killed replica counted as admitted up to the unsettled leases their "
        f"tenant left); closest: "
        f"{worst['key']} {worst['admitted']} of {worst['bound']:.1f}"
    )
    return Check("per key, admitted <= the limit's bound", passed, detail), rows


# --- usage and leases ------------------------------------------------------------------------
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


def usage_rows(data: RunData, died: dict[str, int]) -> list[dict]:
    """Per key: what the clients received against what Postgres holds; died: per key, the
    requests that died with a replica (died_with_a_replica). billed_died: requests Postgres
    holds beyond the whole answers (settled, then killed before the end went out); missing:
    whole answers Postgres does not hold (delivered, never billed: always a failure)."""
    clients = client_usage(data)
    rows = []
    zero = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for key in sorted(set(clients) | set(data.usage)):
        seen, stored = clients.get(key, zero), data.usage.get(key, zero)
        extra = {f: stored[f] - seen[f] for f in zero}  # billed, but the answer never arrived
        if extra["requests"] == 0:
            ok = all(value == 0 for value in extra.values())
        else:
            ok = 0 < extra["requests"] <= died.get(key, 0) and min(extra.values()) >= 0
        rows.append({"key": key, "client": seen, "postgres": stored, "ok": ok,
                     "died": died.get(key, 0), "billed_died": max(extra["requests"], 0),
                     "missing": {f: max(-value, 0) for f, value in extra.items()}})  # fmt: skip
    return rows


def _whole(r: dict) -> bool:
    return r.get("status") == 200 and bool(r.get("complete")) and bool(r.get("usage"))


def answered_before_kills(data: RunData, seconds: float = KILL_LOOKBACK_S) -> list[dict]:
    """Whole answers a killed replica sent in the `seconds` before it died, oldest first, each
    with `before_kill` (s). A process keeps some usage in memory until its flusher writes it
    to Postgres (the fallback limiter's, while Redis cannot answer: ratelimit/backlog.py), so
    these are the suspects when a delivered answer is missing from Postgres."""
    server = {e["id"]: e["server"] for e in data.access if e["id"]}
    found = []
    for kill in (e for e in data.events if e["kind"] == "replica_killed"):
        for r in filter(_whole, data.records):
            # A WebSocket request goes to its socket's replica; an HTTP one, to its own.
            via = server.get(r.get("conn") or "") if r["kind"] == "ws" else server.get(r["id"])
            answered = r["t0"] + r.get("dt", 0.0)
            # The client notes its answer a little after the replica sent it: a second of slack.
            if via == kill["url"] and kill["t"] - seconds <= answered <= kill["dead_at"] + 1:
                found.append({**r, "before_kill": kill["t"] - answered})
    return sorted(found, key=lambda r: -r["before_kill"])


def missing_detail(data: RunData, rows: list[dict]) -> str:
    """The answers delivered but not billed, per key, and the suspects that match them."""
    short = [row for row in rows if row["missing"]["requests"]]
    if not short:
        return "none"
    suspects = answered_before_kills(data)
    parts = []
    for row in short:
        gap = row["missing"]
        mine = [r for r in suspects if r["key"] == row["key"]]
        named = ", ".join(
            f"{r['kind']} {r['id']} ({r['usage']['prompt_tokens']}+"
            f"{r['usage']['completion_tokens']} tokens, answered {r['before_kill']:.2f} s before"
            f"{' the kill; same tokens as missing' if _same_tokens(r, gap) else ' the kill'})"
            for r in mine
        )
        parts.append(
            f"{row['key']} {gap['requests']} ({gap['prompt_tokens']} prompt, "
            f"{gap['completion_tokens']} completion tokens; whole answers the killed replica "
            f"sent in the {KILL_LOOKBACK_S:.0f} s before its death: {named or 'none'})"
        )
    return "; ".join(parts)


def _same_tokens(r: dict, gap: dict[str, int]) -> bool:
    usage = r["usage"]
    return gap["requests"] == 1 and (usage["prompt_tokens"], usage["completion_tokens"]) == (
        gap["prompt_tokens"],
        gap["completion_tokens"],
    )


def check_usage(data: RunData) -> tuple[Check, list[dict]]:
    died = died_with_a_replica(data)
    rows = usage_rows(data, died)
    passed = all(row["ok"] for row in rows)
    fields = ("requests", "prompt_tokens", "completion_tokens")
    total = {f: sum(row["client"][f] for row in rows) for f in fields}
    stored = {f: sum(row["postgres"][f] for row in rows) for f in fields}
    billed_died = sum(row["billed_died"] for row in rows)
    otherwise = [row["key"] for row in rows if not row["ok"] and not row["missing"]["requests"]]
    detail = (
        f"{len(rows)} keys; clients received {total['requests']} whole answers, "
        f"{total['prompt_tokens']} prompt and {total['completion_tokens']} completion tokens; "
        f"Postgres holds {stored['requests']} requests, {stored['prompt_tokens']} prompt and "
        f"{stored['completion_tokens']} completion tokens; of {sum(died.values())} requests "
        f"that died with the killed replica, {billed_died} had been settled before (Postgres "
        f"has them, their clients did not get the end); answered but missing from Postgres: "
        f"{missing_detail(data, rows)}; keys that differ otherwise: {otherwise or 'none'}"
    )
    return Check("every accepted request accounted in Postgres usage", passed, detail), rows


def check_leases(data: RunData) -> Check:
    live, records = data.leases["live"], data.leases["unsettled_records"]
    detail = (
        f"live in-flight leases at the end: {live}; lease records never settled (requests "
        f"that died with the killed replica, their slots freed by expiry): {records}"
    )
    return Check("every lease released at the end", live == 0, detail)


# --- latency goals ---------------------------------------------------------------------------
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
    return [check_admitted_p95(data), check_refusal_p95(data)]


def check_admitted_p95(data: RunData) -> Check:
    base, calm = admitted_latencies(data, "baseline"), admitted_latencies(data, "calm")
    everything = admitted_latencies(data, "swarm")
    p95_base = percentile_nearest_rank(base, 0.95)
    p95_calm = percentile_nearest_rank(calm, 0.95)
    ratio = p95_calm / p95_base if base and calm else float("inf")
    users = data.profile["baseline_users"]
    return Check(
        f"p95 of admitted requests under the swarm <= {P95_RATIO_GOAL}x the p95 at {users} users",
        ratio <= P95_RATIO_GOAL,
        f"p95 {p95_calm * 1000:.0f} ms under the swarm before the faults ({len(calm)} "
        f"requests) vs {p95_base * 1000:.0f} ms at {users} users ({len(base)}): "
        f"{ratio:.2f}x; over the whole swarm, faults included: "
        f"{percentile_nearest_rank(everything, 0.95) * 1000:.0f} ms ({len(everything)} requests)",
        timed=True,
    )


def check_refusal_p95(data: RunData) -> Check:
    refusals, all_refusals = refusal_latencies(data, "calm"), refusal_latencies(data, "swarm")
    p50, p95, p99 = (percentile_nearest_rank(refusals, q) * 1000 for q in (0.5, 0.95, 0.99))
    p95_all = percentile_nearest_rank(all_refusals, 0.95) * 1000
    return Check(
        f"p95 of 429 answers <= {P95_429_GOAL_MS:.0f} ms",
        p95 <= P95_429_GOAL_MS,
        f"before the faults: p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms over "
        f"{len(refusals)} refusals; whole swarm: p95 {p95_all:.1f} ms over {len(all_refusals)}",
        timed=True,
    )
