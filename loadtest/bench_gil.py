"""Model thread or model process: what sharing the interpreter lock with the request path costs.

In this one process an event loop answers a steady stream of small requests (--work-ms of pure
Python each, --rate a second: about what refusing a flood costs a replica), while a client asks
the engine for completions of --tokens tokens, one after another. Measured with the engine's
model on a thread of this process (EngineConfig.process off) and in a model process of its own
(on), each first without the request stream:

- generation time of the completions, p50 / p95: how much the request path slows decoding;
- latency of the small requests from when they were due to when they were answered, p50 / p95 /
  p99: how much decoding delays the request path;
- and, with no request stream, the throughput of --batch concurrent 64-token completions (best
  of three): what carrying every step's events between the processes costs.

Model: flan-t5-base's shape with random weights (loadtest/bench_engine.py builds it), torch
dynamic int8, one torch thread, nice 0 in both modes (the lock alone is compared).

    .venv/bin/python loadtest/bench_gil.py [--seconds 20] [--rate 40] [--work-ms 2.5]
"""

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import EngineConfig  # noqa: E402
from engine.loading import quiet_libraries  # noqa: E402
from engine.runtime import Engine  # noqa: E402
from engine.testing import generate, start_ready  # noqa: E402
from loadtest.bench_engine import ensure_model, uptime  # noqa: E402
from loadtest.percentiles import percentile_nearest_rank  # noqa: E402

PROMPTS = [
    "Summarize in one sentence: the quarterly sales report was discussed at length today.",
    "Translate to German: We will send you an update about the contract by Friday.",
    "Answer the question. What are the main risks of a product launch in three markets?",
    "Write a short, polite reply to an email about our data retention policy.",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument("--rate", type=float, default=40.0, help="small requests per second")
    parser.add_argument("--work-ms", type=float, default=2.5, help="Python work per request")
    parser.add_argument("--tokens", type=int, default=12, help="tokens per completion")
    parser.add_argument("--batch", type=int, default=16, help="concurrent, for throughput")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "bench")
    return parser.parse_args()


def busy(seconds: float) -> None:
    """Pure-Python work holding the interpreter lock, like parsing and refusing a request."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(i * i for i in range(100))


async def request_stream(rate: float, work: float, stop: asyncio.Event) -> list[float]:
    latencies, period = [], 1.0 / rate
    due = time.perf_counter()
    while not stop.is_set():
        due += period
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        busy(work)
        latencies.append(time.perf_counter() - due)
    return latencies


async def measure(engine: Engine, args: argparse.Namespace, with_requests: bool) -> dict:
    stop = asyncio.Event()
    requests = (
        asyncio.create_task(request_stream(args.rate, args.work_ms / 1000, stop))
        if with_requests
        else None
    )
    generation, end, index = [], time.perf_counter() + args.seconds, 0
    while time.perf_counter() < end:
        prompt = PROMPTS[index % len(PROMPTS)]
        result = await generate(engine, prompt, max_tokens=args.tokens, ignore_eos=True)
        generation.append(result.generation_seconds * 1000)
        index += 1
    stop.set()
    latencies = [x * 1000 for x in await requests] if requests else []
    return {"generation": generation, "requests": latencies}


def main() -> int:
    args = parse_args()
    quiet_libraries()
    base, adapter = ensure_model(args.workdir)
    config = EngineConfig(
        model=str(base),
        adapter=str(adapter),
        quantization="torch-int8",
        device="cpu",
        threads=1,
        nice=0,
        allow_download=False,
    )
    print(f"machine: {uptime()}")
    print(
        f"{args.tokens}-token completions one after another for {args.seconds:.0f} s; request "
        f"stream: {args.rate:.0f}/s x {args.work_ms} ms of Python on the event loop\n"
    )
    floor = asyncio.run(_floor(args))
    rows, throughput = {}, {}
    for mode in ("thread", "process"):
        engine = start_ready(replace(config, process=mode == "process"), timeout=600)
        try:
            alone = asyncio.run(measure(engine, args, with_requests=False))
            loaded = asyncio.run(measure(engine, args, with_requests=True))
            throughput[mode] = max(asyncio.run(batch_throughput(engine, args)) for _ in range(3))
        finally:
            engine.stop(30)
        rows[mode] = (alone, loaded)
    print("| model on | generation p50 / p95 alone | with the request stream | slowdown (p50) |")
    print("| --- | --- | --- | --- |")
    slow = {}
    for mode, (alone, loaded) in rows.items():
        a, b = alone["generation"], loaded["generation"]
        slow[mode] = statistics.median(b) / statistics.median(a)
        p95_a, p95_b = percentile_nearest_rank(a, 0.95), percentile_nearest_rank(b, 0.95)
        print(
            f"| a {mode} | {statistics.median(a):.0f} / {p95_a:.0f} ms |"
            f" {statistics.median(b):.0f} / {p95_b:.0f} ms | {slow[mode]:.2f}x |"
        )
    print("\n| model on | small requests p50 / p95 / p99 | count |")
    print("| --- | --- | --- |")
    print(f"| (no decoding) | {_quantiles(floor)} | {len(floor)} |")
    tails = {}
    for mode, (_, loaded) in rows.items():
        tails[mode] = percentile_nearest_rank(loaded["requests"], 0.99)
        print(f"| a {mode} | {_quantiles(loaded['requests'])} | {len(loaded['requests'])} |")
    print(f"\n| model on | {args.batch} concurrent 64-token completions, tokens/s |")
    print("| --- | --- |")
    for mode, rate in throughput.items():
        print(f"| a {mode} | {rate:.1f} |")
    print(
        f"\nprocess against thread: {throughput['process'] / throughput['thread']:.2f}x the "
        f"throughput at {args.batch}; decoding slowed {slow['process']:.2f}x against "
        f"{slow['thread']:.2f}x; request p99 {tails['process']:.1f} against "
        f"{tails['thread']:.1f} ms ({tails['thread'] / max(tails['process'], 1e-9):.1f}x lower)"
    )
    return 0


async def batch_throughput(engine: Engine, args: argparse.Namespace) -> float:
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            generate(engine, PROMPTS[i % len(PROMPTS)], max_tokens=64, ignore_eos=True)
            for i in range(args.batch)
        )
    )
    return sum(r.completion_tokens for r in results) / (time.perf_counter() - started)


async def _floor(args: argparse.Namespace) -> list[float]:
    stop = asyncio.Event()
    task = asyncio.create_task(request_stream(args.rate, args.work_ms / 1000, stop))
    await asyncio.sleep(min(5.0, args.seconds))
    stop.set()
    return [x * 1000 for x in await task]


def _quantiles(values: list[float]) -> str:
    figures = (percentile_nearest_rank(values, q) for q in (0.5, 0.95, 0.99))
    return " / ".join(f"{figure:.1f}" for figure in figures) + " ms"


if __name__ == "__main__":
    sys.exit(main())
