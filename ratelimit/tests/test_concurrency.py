"""Exactness across OS processes (as daphne workers are): four processes hammer one key and
one tenant through the Python API against the real Redis at the same time.

GCRA bound over the span t between the first and last admission of a group, with burst B and
rate R per second: B + floor(R t) - 1 <= admitted <= B + ceil(R t) + 1.
"""

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from core.errors import RateLimited
from ratelimit import limiter
from ratelimit.tests.helpers import RecordFields, make_record
from tests.childproc import child_env, start_child

PROCESSES = 4
SECONDS = 2.0
KEY_BOUND = {"tenant_id": 101, "key_id": "KEYaaaaaaaaa", "key": {"rpm": 600}, "burst_percent": 10}
TENANT_B1 = {
    "tenant_id": 102,
    "key_id": "KEYbbbbbbbb1",
    "key": {"rpm": 120},
    "tenant": {"rpm": 300},
}
TENANT_B2 = {"tenant_id": 102, "key_id": "KEYbbbbbbbb2", "tenant": {"rpm": 300}}
TOKENS = {"tenant_id": 103, "key_id": "KEYcccccccc1", "tenant": {"tpm": 3000}}
INFLIGHT = {"tenant_id": 104, "key_id": "KEYdddddddd1", "key": {"max_inflight": 3}}


def _start(plan: dict[str, object], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    # Exactness of the Redis path is under test: a starved 2-core box must not push the
    # children into the fallback limiter (tests/test_faults.py covers that).
    overrides = {"RATELIMIT_REDIS_TIMEOUT_MS": "2000", **(env or {})}
    child = start_child(
        [sys.executable, "-m", "ratelimit.tests.hammer"], child_env(database=False, **overrides)
    )
    _send(child, json.dumps(plan))
    assert _receive(child).strip() == "ready"
    return child


def _send(child: subprocess.Popen[str], line: str) -> None:
    assert child.stdin is not None  # a pipe (start_child)
    child.stdin.write(line + "\n")
    child.stdin.flush()


def _receive(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None  # a pipe (start_child)
    return child.stdout.readline()


def _plan(index: int) -> dict[str, object]:
    group_b = TENANT_B1 if index < 2 else TENANT_B2
    groups = [
        {"record": KEY_BOUND, "tasks": 3},
        {"record": {**group_b, "burst_percent": 10}, "tasks": 3},
        {"record": {**TOKENS, "burst_percent": 10}, "tasks": 2, "tokens": 25},
        {"record": INFLIGHT, "tasks": 3, "hold_seconds": 0.02},
    ]
    return {"groups": groups, "seconds": SECONDS}


def _assert_gcra_bounds(instants: list[int], burst: int, per_minute: int, cost: int = 1) -> None:
    span = (max(instants) - min(instants)) / 1_000_000
    rate = per_minute / 60
    admitted = len(instants) * cost
    upper = burst + math.ceil(rate * span) + cost
    lower = burst + math.floor(rate * span) - cost
    assert lower <= admitted <= upper, (lower, admitted, upper, span)


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    # At equal instants the release sorts first (-1 < 1), never inflating the count.
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def test_four_processes_never_exceed_any_bound() -> None:
    children = [_start(_plan(i)) for i in range(PROCESSES)]
    for child in children:
        _send(child, "go")
    results = [json.loads(_receive(child)) for child in children]
    for child in children:
        assert child.wait(timeout=10) == 0
    key_bound = [t for r in results for t in r[0]]
    tenant_bound = [t for r in results for t in r[1]]
    key_b1 = [t for r in results[:2] for t in r[1]]
    tokens = [t for r in results for t in r[2]]
    held = [tuple(i) for r in results for i in r[3]]
    _assert_gcra_bounds(key_bound, burst=60, per_minute=600)
    _assert_gcra_bounds(tenant_bound, burst=30, per_minute=300)
    # Key B1 competes with B2 for its tenant's budget: only its upper bound holds.
    span = (max(key_b1) - min(key_b1)) / 1_000_000
    assert len(key_b1) <= 12 + math.ceil(2 * span) + 1
    _assert_gcra_bounds(tokens, burst=300, per_minute=3000, cost=25)
    assert _max_overlap(held) == 3  # reached, never above the cap
    assert len(held) > 50


async def test_a_crashed_holders_slots_come_back_after_the_lease_ttl() -> None:
    record: RecordFields = {"tenant_id": 105, "key_id": "KEYeeeeeeee1", "key": {"max_inflight": 3}}
    child = _start(
        {"groups": [{"record": record}], "hold": 3}, {"RATELIMIT_LEASE_TTL_SECONDS": "1"}
    )
    _send(child, "go")
    word, admitted_at = _receive(child).split()
    assert word == "held"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with pytest.raises(RateLimited, match="key-inflight"):
        await limiter.admit(make_record(**record), tokens=1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            admission = await limiter.admit(make_record(**record), tokens=1)
            break
        except RateLimited:
            await asyncio.sleep(0.02)
    else:
        pytest.fail("the crashed holder's slot never came back")
    assert admission.decision is not None  # Redis's admissions carry its decision
    waited = (admission.decision.now_us - int(admitted_at)) / 1_000_000
    assert 1.0 <= waited <= 1.5
