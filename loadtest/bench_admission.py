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
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")


def _own_redis() -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(  # noqa: S603 - the redis-server binary, fixed arguments
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind"]
        + ["127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tempfile.gettempdir()],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return server, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.02)
    server.kill()
    raise SystemExit("redis-server did not start")


PARSER = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
PARSER.add_argument("--ops", type=int, default=5000)
PARSER.add_argument("--seconds", type=float, default=3.0)
PARSER.add_argument("--tasks", type=int, default=16)
PARSER.add_argument("--redis-url", default="")
ARGS = PARSER.parse_args()
SERVER = None
if not ARGS.redis_url:
    SERVER, ARGS.redis_url = _own_redis()
# Settings read the environment once, at setup.
os.environ["REDIS_URL"] = os.environ["RATELIMIT_REDIS_URL"] = ARGS.redis_url

import django  # noqa: E402

django.setup()

from prometheus_client import REGISTRY  # noqa: E402

from console.errors import RateLimited  # noqa: E402
from console.redis import get_redis, get_sync_redis  # noqa: E402
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


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


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


async def _admit_latencies(record: KeyRecord, count: int) -> list[float]:
    """admit() alone is timed; each admission is settled (untimed) so leases do not pile up."""
    timings: list[float] = []

    async def timed() -> None:
        started = time.perf_counter()
        admission = await limiter.admit(record, tokens=120)
        timings.append(time.perf_counter() - started)
        await limiter.settle(admission, prompt_tokens=20, completion_tokens=80)

    await _latencies(timed, count)
    return timings[-count:]


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
            admitted.append(admission.decision.now_us)
            await limiter.settle(admission, prompt_tokens=0, completion_tokens=0)

    await asyncio.gather(*(worker() for _ in range(tasks)))
    span = (max(admitted) - min(admitted)) / 1_000_000
    return len(admitted), 60 + math.ceil(10 * span) + 1, 60 + math.floor(10 * span) - 1, span


def _row(name: str, values: list[float]) -> str:
    us = [v * 1e6 for v in values]
    return (
        f"| {name} | {statistics.median(us):.0f} | {_pct(us, 0.99):.0f} | "
        f"{_pct(us, 0.999):.0f} | {len(us)} |"
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
    set_lat = await _latencies(lambda: client.set(key, "1"), args.ops)
    full_lat = await _admit_latencies(FULL, args.ops)
    typical_lat = await _admit_latencies(TYPICAL, args.ops)
    pair_lat = await _latencies(_admit_settle, args.ops)
    set_again = await _latencies(lambda: client.set(key, "1"), args.ops)
    set_rate = await _throughput(lambda: client.set(key, "1"), args.seconds, args.tasks)
    admit_rate = await _throughput(_admit_settle, args.seconds, args.tasks)
    got, upper, lower, span = await _over_admission(args.seconds, args.tasks)
    print(f"redis: {'own server' if SERVER else args.redis_url}; ops {args.ops}; ", end="")
    print(f"tasks {args.tasks}; seconds {args.seconds}")
    print("| measurement | p50 us | p99 us | p99.9 us | calls |\n| --- | --- | --- | --- | --- |")
    print(_row("Redis SET round trip (redis.asyncio, limiter pool)", set_lat))
    print(_row("admit(), typical tenant: 4 limits", typical_lat))
    print(_row("admit(), every limit: 8 limits", full_lat))
    print(_row("admit() + settle(), 8 limits", pair_lat))
    print(_row("Redis SET round trip, measured again last", set_again))
    set_p99 = _pct(set_lat + set_again, 0.99)
    set_p50 = statistics.median(set_lat + set_again)
    for name, lat in (("typical", typical_lat), ("8 limits", full_lat)):
        print(
            f"{name}: admission p99 / SET p99 = {_pct(lat, 0.99) / set_p99:.2f} (goal <= 2.00); ",
            end="",
        )
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
