"""Admission latency and throughput through the Python API against a local Redis, next to a
plain Redis SET round trip measured in the same run, plus an over-admission check.

    .venv/bin/python loadtest/bench_admission.py [--ops 5000] [--seconds 3] [--tasks 16]
                                                 [--redis-url redis://127.0.0.1:6379/10]

By default it starts its own redis-server on a free loopback port (the shared one carries other
traffic) and stops it at the end; --redis-url uses an existing Redis instead, touching only the
keys of a random tenant id and deleting them afterwards. Bounded: --ops sequential calls per
latency measurement, --seconds per timed phase. Goal: admission p99 <= 2x the SET p99.
"""

import argparse
import asyncio
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

# Run as a file: the project's root is not on the path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loadtest.harness import own_redis  # noqa: E402
from loadtest.percentiles import percentile_nearest_rank  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")


PARSER = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
PARSER.add_argument("--ops", type=int, default=5000)
PARSER.add_argument("--seconds", type=float, default=3.0)
PARSER.add_argument("--tasks", type=int, default=16)
PARSER.add_argument("--redis-url", default="")
PARSER.add_argument(
    "--timeout-ms",
    default="1000",
    help="limiter timeout; generous so a noisy box measures latency, not fallbacks",
)
ARGS = PARSER.parse_args()
SERVER = None
if not ARGS.redis_url:
    SERVER, ARGS.redis_url = own_redis()
# Settings read the environment once, at setup.
os.environ["REDIS_URL"] = os.environ["RATELIMIT_REDIS_URL"] = ARGS.redis_url
os.environ["RATELIMIT_REDIS_TIMEOUT_MS"] = ARGS.timeout_ms

import django  # noqa: E402

django.setup()

from prometheus_client import REGISTRY  # noqa: E402

from core.errors import RateLimited  # noqa: E402
from core.redis import get_redis, get_sync_redis  # noqa: E402
from ratelimit import limiter  # noqa: E402
from ratelimit.scripts import preload  # noqa: E402
from tenants.keycache import KeyRecord  # noqa: E402
from tenants.models import LIMIT_FIELDS  # noqa: E402

TENANT = random.randint(10**8, 10**9)  # noqa: S311 - a key prefix, not a secret


def _record(key: dict, tenant: dict, burst: int = 20, key_id: str = "BENCHkey0001") -> KeyRecord:
    return KeyRecord(
        api_key_pk=1,
        key_id=key_id,
        tenant_id=TENANT,
        tenant_slug="bench",
        tenant_active=True,
        scopes=frozenset({"completions"}),
        tenant_limits={f: tenant.get(f) for f in LIMIT_FIELDS},
        key_limits={f: key.get(f) for f in LIMIT_FIELDS},
        burst_percent=burst,
        expires_at=None,
        revoked=False,
        last_used_at=None,
        secret_hash="",
        previous_hash="",
    )


# Every kind of limit at once, all far from binding: the allow path with all writes.
FULL = _record(
    key={"rpm": 10**7, "tpm": 10**9, "max_inflight": 10**4, "tokens_per_day": 10**12},
    tenant={"rpm": 10**7, "tpm": 10**9, "max_inflight": 10**5, "tokens_per_month": 10**13},
)
# A typical tenant: requests and tokens per minute, in flight, a daily quota; no key overrides.
TYPICAL = _record(
    key={},
    tenant={"rpm": 10**7, "tpm": 10**9, "max_inflight": 10**5, "tokens_per_day": 10**12},
    key_id="BENCHkey0003",
)


async def _latencies(op: Callable[[], Awaitable[object]], count: int) -> list[float]:
    for _ in range(min(200, count)):  # warm the pool and the script cache
        await op()
    out = []
    for _ in range(count):
        started = time.perf_counter()
        await op()
        out.append(time.perf_counter() - started)
    return out


async def _admit_settle() -> None:
    admission = await limiter.admit(FULL, tokens=120)
    await limiter.settle(admission, prompt_tokens=20, completion_tokens=80)


async def _interleaved(count: int, key: str) -> dict[str, list[float]]:
    """SET, admit (4 limits) and admit (8 limits) in turn, so all three meet the same noise
    from the rest of the machine. Each admission is settled, untimed, so leases do not pile."""
    client = get_redis("ratelimit")
    timings: dict[str, list[float]] = {"set": [], "typical": [], "full": []}

    async def admit(record: KeyRecord) -> float:
        started = time.perf_counter()
        admission = await limiter.admit(record, tokens=120)
        elapsed = time.perf_counter() - started
        await limiter.settle(admission, prompt_tokens=20, completion_tokens=80)
        return elapsed

    for i in range(count + 200):  # the first 200 rounds warm up and are dropped
        started = time.perf_counter()
        await client.set(key, "1")
        set_time = time.perf_counter() - started
        typical, full = await admit(TYPICAL), await admit(FULL)
        if i >= 200:
            timings["set"].append(set_time)
            timings["typical"].append(typical)
            timings["full"].append(full)
    return timings


async def _throughput(op: Callable[[], Awaitable[object]], seconds: float, tasks: int) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await op()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return done / (time.perf_counter() - started)


async def _over_admission(seconds: float, tasks: int) -> tuple[int, int, int, float]:
    record = _record(key={"rpm": 600}, tenant={}, burst=10, key_id="BENCHkey0002")  # B=60, 10/s
    admitted: list[int] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            try:
                admission = await limiter.admit(record, tokens=0)
            except RateLimited:
                continue
            # Admitted by Redis (the bench's own server): the decision is there.
            assert admission.decision is not None
            admitted.append(admission.decision.now_us)
            await limiter.settle(admission, prompt_tokens=0, completion_tokens=0)

    await asyncio.gather(*(worker() for _ in range(tasks)))
    span = (max(admitted) - min(admitted)) / 1_000_000
    return len(admitted), 60 + math.ceil(10 * span) + 1, 60 + math.floor(10 * span) - 1, span


def _row(name: str, values: list[float]) -> str:
    us = [v * 1e6 for v in values]
    return (
        f"| {name} | {statistics.median(us):.0f} | {percentile_nearest_rank(us, 0.99):.0f} | "
        f"{percentile_nearest_rank(us, 0.999):.0f} | {len(us)} |"
    )


def _fallbacks() -> float:
    results = ("failed_open", "failed_closed", "local_allowed", "local_denied")
    return sum(
        REGISTRY.get_sample_value("ratelimit_decisions_total", {"result": r, "limit": "none"})
        or 0.0
        for r in results
    )


async def main(args: argparse.Namespace) -> None:
    client = get_redis("ratelimit")
    await preload(client)
    key = f"bench:{TENANT}:set"
    timings = await _interleaved(args.ops, key)
    set_lat, typical_lat, full_lat = timings["set"], timings["typical"], timings["full"]
    pair_lat = await _latencies(_admit_settle, args.ops)
    set_rate = await _throughput(lambda: client.set(key, "1"), args.seconds, args.tasks)
    admit_rate = await _throughput(_admit_settle, args.seconds, args.tasks)
    got, upper, lower, span = await _over_admission(args.seconds, args.tasks)
    print(f"redis: {'own server' if SERVER else args.redis_url}; ops {args.ops}; ", end="")
    print(f"tasks {args.tasks}; seconds {args.seconds}")
    print("| measurement | p50 us | p99 us | p99.9 us | calls |\n| --- | --- | --- | --- | --- |")
    print(_row("Redis SET round trip (redis.asyncio, limiter pool)", set_lat))
    print(_row("admit(), typical tenant: 4 limits", typical_lat))
    print(_row("admit(), every limit: 8 limits", full_lat))
    print(_row("admit() + settle(), 8 limits (separate loop)", pair_lat))
    set_p99, set_p50 = percentile_nearest_rank(set_lat, 0.99), statistics.median(set_lat)
    for name, lat in (("typical", typical_lat), ("8 limits", full_lat)):
        ratio = percentile_nearest_rank(lat, 0.99) / set_p99
        print(f"{name}: admission p99 / SET p99 = {ratio:.2f} (goal <= 2.00); ", end="")
        print(f"p50 / SET p50 = {statistics.median(lat) / set_p50:.2f}")
    print(f"throughput, {args.tasks} tasks in one process: SET {set_rate:,.0f}/s; ", end="")
    print(f"admit+settle (8 limits) {admit_rate:,.0f} admissions/s")
    over = max(0, got - upper)
    print(f"over-admission: {got} admitted in {span:.2f} s, bound [{lower}, {upper}], over {over}")
    print(f"fallback decisions (must be 0 for valid figures): {_fallbacks():.0f}")
    sync = get_sync_redis("ratelimit")
    for stale in sync.scan_iter(f"*{TENANT}*"):
        sync.delete(stale)


if __name__ == "__main__":
    try:
        asyncio.run(main(ARGS))
    finally:
        if SERVER is not None:
            SERVER.kill()
            SERVER.wait()
