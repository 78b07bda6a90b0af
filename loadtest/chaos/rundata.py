"""What a chaos run leaves behind, loaded for the report (loadtest/chaos/report.py).

Inputs: the clients' records (one JSON line per request, from loadtest/locustfile.py), Traefik's
access log (which replica served each X-Request-Id, and when), the run's events (chaos and
restarts), usage in Postgres, leases left in Redis, and Prometheus series (queue depth, batch
size).
"""

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypedDict

HTTP_KINDS: tuple[str, ...] = ("rest", "sse", "hostile", "invalid")
HTTP_KINDS += ("oversized_prompt", "oversized_body", "oversized_max_tokens")
WELL_BEHAVED_HTTP = ("rest", "sse")
FAULTS = ("redis_stopping", "replica_killed", "postgres_cut")


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    timed: bool = False  # a speed goal (reported, never asserted by tests)


class Leases(TypedDict, total=False):
    """What the limiter left in Redis at the end (empty where a test needs none)."""

    live: int  # in-flight leases not yet expired
    unsettled_records: int  # lease records never settled
    by_tenant: dict[str, int]  # tenant id -> its unsettled lease records


@dataclass
class RunData:
    records: list[dict]
    phases: dict[str, float]
    events: list[dict]
    access: list[dict]
    usage: dict[str, dict[str, int]]  # key name -> requests, prompt_tokens, completion_tokens
    limits: dict
    leases: Leases
    series: dict[str, list[tuple[float, float]]]
    settings: dict
    profile: dict
    cpu: dict[str, float] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    # Request id -> Traefik's log entry, for every HTTP request in flight on a killed replica
    # (filled once by run_checks from in_flight_at_kills).
    in_flight: dict[str, dict] = field(default_factory=dict)


def load_records(path: Path) -> tuple[list[dict], dict[str, float]]:
    """The clients' records, and when each phase (baseline, swarm, end) began."""
    records: list[dict] = []
    phases: dict[str, float] = {}
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
    entries: list[dict] = []
    if not path.exists():
        return entries
    for line in path.read_text(errors="replace").splitlines():
        try:
            raw = json.loads(line)
        except ValueError:
            continue
        entries.append(_access_entry(raw))
    return entries


def _access_entry(raw: dict) -> dict:
    start = datetime.fromisoformat(raw["StartUTC"].replace("Z", "+00:00")).timestamp()
    return {
        "id": raw.get("request_X-Request-Id", ""),
        "server": (raw.get("ServiceURL") or "").rstrip("/"),
        "status": raw.get("DownstreamStatus", 0),
        "origin": raw.get("OriginStatus", 0),
        "start": start,
        "end": start + raw.get("Duration", 0) / 1e9,
        "retries": raw.get("RetryAttempts", 0),
        "path": raw.get("RequestPath", ""),
    }


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
