"""A child process for the concurrency tests: `python -m ratelimit.tests.hammer`.

Reads a JSON plan on stdin, prints "ready", waits for a line on stdin, then runs every group's
tasks against the real Redis through the Python API until the deadline and prints one JSON line:
per group, the Redis instants of its admissions (rate groups) or the wall-clock intervals its
leases were held (in-flight groups; each lies inside the true hold, so overlap is a lower bound).
"""

import asyncio
import json
import sys
import time

import django

# What a group reports: a Redis instant (us) per admission, or a lease's (start, end) in s.
Sample = int | tuple[float, float]


async def _rate(record, tokens: int, deadline: float, out: list[Sample]) -> None:
    from core.errors import RateLimited
    from ratelimit import limiter

    while time.monotonic() < deadline:
        try:
            admission = await limiter.admit(record, tokens=tokens)
        except RateLimited:
            await asyncio.sleep(0)
            continue
        assert admission.source == "redis", "the fallback limiter answered"
        assert admission.decision is not None  # Redis's admissions carry its decision
        out.append(admission.decision.now_us)
        await limiter.settle(admission, prompt_tokens=tokens, completion_tokens=0)


async def _inflight(record, hold: float, deadline: float, out: list[Sample]) -> None:
    from core.errors import RateLimited
    from ratelimit import limiter

    while time.monotonic() < deadline:
        try:
            admission = await limiter.admit(record, tokens=1)
        except RateLimited:
            await asyncio.sleep(0.001)
            continue
        assert admission.source == "redis", "the fallback limiter answered"
        start = time.time()
        await asyncio.sleep(hold)
        out.append((start, time.time()))
        await limiter.settle(admission, prompt_tokens=1, completion_tokens=0)


async def _hold(record, count: int) -> None:
    from ratelimit import limiter

    held = [await limiter.admit(record, tokens=1) for _ in range(count)]
    assert held[0].decision is not None  # Redis's admissions carry its decision
    # The first admission's instant: its lease is the first to expire (the last one's would make
    # a slot that comes back on time look early by the time the admissions took).
    print("held", held[0].decision.now_us, flush=True)
    await asyncio.sleep(3600)  # until killed: never settles


async def main() -> None:
    from ratelimit.tests.helpers import make_record

    plan = json.loads(sys.stdin.readline())
    groups = [(make_record(**g["record"]), g) for g in plan["groups"]]
    print("ready", flush=True)
    sys.stdin.readline()
    if plan.get("hold"):
        await _hold(groups[0][0], plan["hold"])
        return
    deadline = time.monotonic() + plan["seconds"]
    results: list[list[Sample]] = [[] for _ in groups]
    tasks = []
    for (record, g), out in zip(groups, results, strict=True):
        for _ in range(g["tasks"]):
            if g.get("hold_seconds"):
                tasks.append(_inflight(record, g["hold_seconds"], deadline, out))
            else:
                tasks.append(_rate(record, g.get("tokens", 0), deadline, out))
    await asyncio.gather(*tasks)
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    django.setup()
    asyncio.run(main())
