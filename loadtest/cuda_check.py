"""The CUDA path's smoke check: every CUDA backend loads, decodes, and decodes the same alone
and in a batch (loadtest/cuda_run.sh runs it first on a GPU machine, before the benchmarks).

On the tiny random-weight model with its adapter (engine/tiny_model.py), per backend (bnb-int8,
bf16, none) on `--device cuda`, in a thread engine and then in a model process: 8 greedy prompts
one at a time, then the same 8 submitted together (one batch of mixed lengths), with joins and a
cancellation while they run; prints how many rows answered exactly as alone. For bitsandbytes
this measures the limit docs/engine.md describes (its fp16 outlier columns are chosen over the
whole batch).

    python3 loadtest/cuda_check.py [--device cuda] [--backends bnb-int8,bf16,none]
"""

import argparse
import asyncio
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.runtime import Engine, GenerationRequest  # noqa: E402
from engine.testing import generate, start_ready, tiny_config  # noqa: E402
from engine.tiny_model import make_tiny_model  # noqa: E402

PROMPTS = [
    "translate English to German: the house is small",
    "summarize: a quick brown fox jumps over the lazy dog again and again",
    "question: what is the capital of France?",
    "the weather today",
    "write a long sentence about " + "many things " * 12,
    "a",
    "list three colours",
    "answer yes or no: is water wet?",
]
NEW_TOKENS = 24


async def alone(engine: Engine) -> list[list[int]]:
    return [(await generate(engine, p, max_tokens=NEW_TOKENS)).token_ids for p in PROMPTS]


async def together(engine: Engine) -> list[list[int]]:
    """All 8 at once, the second half arriving a little later (they join a running batch),
    plus a ninth request cancelled while the others run (a row that leaves)."""
    first = [generate(engine, p, max_tokens=NEW_TOKENS) for p in PROMPTS[:4]]
    tasks = [asyncio.ensure_future(job) for job in first]
    extra = await engine.submit(GenerationRequest("cancel me " * 20, max_tokens=64))
    await asyncio.sleep(0.02)
    tasks += [
        asyncio.ensure_future(generate(engine, p, max_tokens=NEW_TOKENS)) for p in PROMPTS[4:]
    ]
    extra.cancel()
    return [result.token_ids for result in await asyncio.gather(*tasks)]


def check(model: Path, backend: str, device: str, process: bool) -> None:
    config = tiny_config(
        model, adapter=str(model / "adapter"), quantization=backend, device=device, threads=4
    )
    config = replace(config, process=process, max_batch=16)
    started = time.perf_counter()
    engine = start_ready(config, timeout=300)
    try:
        loaded = time.perf_counter() - started
        single = asyncio.run(alone(engine))
        batch = asyncio.run(together(engine))
        same = sum(a == b for a, b in zip(single, batch, strict=True))
        where = "model process" if process else "thread"
        print(
            f"  {backend:<9} {where:<13} loaded in {loaded:5.1f} s; "
            f"{same}/{len(PROMPTS)} rows in a batch equal to alone; "
            f"tokens {sum(map(len, single))}",
            flush=True,
        )
        for index, (a, b) in enumerate(zip(single, batch, strict=True)):
            if a != b:
                diverged = next(
                    (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a)
                )
                print(f"    row {index}: differs from token {diverged} of {len(a)}")
    finally:
        engine.stop(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backends", default="bnb-int8,bf16,none")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = make_tiny_model(Path(folder) / "tiny")
        for backend in args.backends.split(","):
            for process in (False, True):
                try:
                    check(model, backend, args.device, process)
                except Exception:  # one backend's failure must not hide the others'
                    print(f"  {backend} process={process} FAILED:", flush=True)
                    traceback.print_exc()


if __name__ == "__main__":
    main()
