"""Fairness benchmark: one tenant floods the engine, another's first token should not wait.

The case of docs/engine.md's fairness section (and the continuous-batching issue's item 2), on
a random-weight model with flan-t5-base's shape in torch-int8, served as in production (a
model process of its own, the continuous scheduler, the fair queue, the default queue bound):

1. the engine's capacity: mixed requests (prompts of 16-256 tokens, max_tokens of 8-128) from
   --max-batch closed-loop clients, requests per second (or --capacity);
2. idle: tenant "quiet" alone, Poisson arrivals at --quiet-load x capacity for --duration s;
   its time to first token (TTFT) p50/p95;
3. flood: the same arrivals of "quiet", plus tenant "flood" at --flood-load x capacity (most
   of its requests are refused with QueueFull once the queue is full: that is the bound
   working); once the last "quiet" request ends, the flood's streams are cancelled.

Goal: quiet's TTFT p95 under the flood at most 2x its TTFT p95 on the idle engine. Each
variant of --headrooms (INFERENCE_TENANT_HEADROOM) runs both phases on its own engine, so the
rows past INFERENCE_MAX_BATCH kept for tenants holding none can be compared with none.

    .venv/bin/python loadtest/bench_fairness.py [--duration 60] [--headrooms 2,0] [--per-request]
"""

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.loading import quiet_libraries  # noqa: E402
from loadtest.bench_engine import HEADLINE, ensure_model, start_engine, uptime  # noqa: E402
from loadtest.openloop import (  # noqa: E402
    Planned,
    Record,
    closed_loop_capacity,
    launch,
    mixed_plan,
    stream_model,
    summarize,
)

Figures = dict[str, float]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="s of arrivals per phase")
    parser.add_argument("--quiet-load", type=float, default=0.1, help="x capacity")
    parser.add_argument("--flood-load", type=float, default=5.0, help="x capacity")
    parser.add_argument("--headrooms", default="2,0", help="INFERENCE_TENANT_HEADROOM variants")
    parser.add_argument("--capacity", type=float, default=0.0, help="requests/s (0: measure)")
    parser.add_argument("--capacity-seconds", type=float, default=30.0)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="0: one per core")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--per-request",
        action="store_true",
        help="print each quiet request (arrival, sizes, time to first token) per phase",
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "bench")
    return parser.parse_args()


def tenant_plan(tenant: str, rate: float, duration: float, seed: int) -> list[Planned]:
    return [
        Planned(item.at, item.prompt_tokens, item.max_tokens, tenant)
        for item in mixed_plan(rate, duration, seed)
    ]


async def until_served(
    engine: Any, plan: list[Planned], tokenizer: Any, tenant: str
) -> tuple[list[Record], int]:
    """Drive the plan; once every request of `tenant` has ended, cancel the others' streams
    (a flood left to drain would take minutes and measure nothing). Returns tenant's records
    and how many of the others' requests the queue refused."""
    tasks = await launch(engine, plan, tokenizer)
    mine = [task for task, item in zip(tasks, plan, strict=True) if item.tenant == tenant]
    records = list(await asyncio.gather(*mine))
    for task in tasks:
        task.cancel()
    ended = await asyncio.gather(*tasks, return_exceptions=True)
    refused = sum(isinstance(record, Record) and record.refused for record in ended)
    return records, refused - sum(record.refused for record in records)


def per_request(plan: list[Planned], records: list[Record], tenant: str) -> str:
    """One line per request of `tenant`: its arrival (s after its first), sizes and TTFT."""
    mine = [item for item in plan if item.tenant == tenant]
    first = min(record.arrival for record in records)
    lines = []
    for item, record in zip(mine, records, strict=True):
        ttft = "refused" if record.refused else "no token"
        if record.token_times:
            ttft = f"ttft {(record.token_times[0] - record.arrival) * 1000:6.0f} ms"
        lines.append(
            f"    at {record.arrival - first:6.2f} s  prompt {item.prompt_tokens:3d}  "
            f"max_tokens {item.max_tokens:3d}  {ttft}"
        )
    return "\n".join(lines)


def phase_row(name: str, quiet: Figures, refused: int) -> str:
    return (
        f"  {name:<14} {quiet['requests']:5.0f}  ttft p50 {quiet['ttft_p50']:7.0f}  "
        f"p95 {quiet['ttft_p95']:7.0f}  p99 {quiet['ttft_p99']:7.0f}  "
        f"e2e p50 {quiet['e2e_p50']:7.0f}  flood refused {refused}"
    )


def run_variant(
    args: argparse.Namespace, folder: Path, adapter: Path, tokenizer: Any, headroom: int
) -> tuple[Figures, Figures]:
    engine = start_engine(args, HEADLINE, folder, adapter, process=True, tenant_headroom=headroom)
    try:
        if not args.capacity:
            args.capacity = asyncio.run(
                closed_loop_capacity(
                    engine, tokenizer, args.max_batch, args.capacity_seconds, args.seed
                )
            )
            print(f"capacity {args.capacity:.2f} requests/s (closed loop)", flush=True)
        quiet = tenant_plan("quiet", args.quiet_load * args.capacity, args.duration, args.seed)
        flood = tenant_plan("flood", args.flood_load * args.capacity, args.duration, args.seed + 9)
        alone = asyncio.run(until_served(engine, quiet, tokenizer, "quiet"))[0]
        if args.per_request:
            print(per_request(quiet, alone, "quiet"), flush=True)
        idle = summarize(alone)
        print(phase_row(f"h={headroom} idle", idle, 0), flush=True)
        both = sorted([*quiet, *flood], key=lambda item: item.at)
        records, refused = asyncio.run(until_served(engine, both, tokenizer, "quiet"))
        if args.per_request:
            print(per_request(both, records, "quiet"), flush=True)
        loaded = summarize(records)
        print(phase_row(f"h={headroom} flood", loaded, refused), flush=True)
        return idle, loaded
    finally:
        engine.stop(60)


def main() -> None:
    args = parse_args()
    quiet_libraries()
    from transformers import AutoTokenizer

    print(f"start: {uptime()}", flush=True)
    base, adapter = ensure_model(args.workdir)
    tokenizer = AutoTokenizer.from_pretrained(base)
    folder = stream_model(args.workdir, base)
    results = {
        headroom: run_variant(args, folder, adapter, tokenizer, headroom)
        for headroom in (int(h) for h in args.headrooms.split(","))
    }
    print(
        f"\nquiet at {args.quiet_load:.0%} of capacity, flood at {args.flood_load:.0%}; "
        f"{args.duration:.0f} s of arrivals"
    )
    for headroom, (idle, loaded) in results.items():
        ratio = loaded["ttft_p95"] / idle["ttft_p95"]
        print(
            f"  headroom {headroom}: quiet's ttft p95 flooded / idle "
            f"{loaded['ttft_p95']:.0f} / {idle['ttft_p95']:.0f} ms = {ratio:.2f}x (goal <= 2x)"
        )
    print(f"end:   {uptime()}")


if __name__ == "__main__":
    main()
