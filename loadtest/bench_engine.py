"""Engine benchmark: aggregate tokens/s, latency and time to first token through our engine.

A random-weight model with flan-t5-base's exact shape (247,577,856 parameters, untied lm_head)
and a LoRA adapter are built under --workdir (never committed). Every request has a 64-token
prompt and asks for 64 new tokens (greedy, end-of-sequence ignored). Measured in one process:

- our engine, per backend, at 1, 4, 16 and 32 concurrent requests (best of --repeat runs),
  and for the CPU default backend CTranslate2's batch of the same size right after each run;
- at 16 concurrent requests, in interleaved rounds (so all see the same machine load):
  our engine with the CPU default backend; transformers' generate() on the same loaded model
  with the 16 prompts as one batch; CTranslate2 int8 on the same (merged) weights with the 16
  prompts as one batch (when installed: `pip install torch==2.13.0 '.[bench]'`; converted with
  the fix from docs/engine.md); and the baseline, the reference implementation's way:
  bitsandbytes int8, the adapter unmerged (peft), one generate() at a time;
- time to first token of one request, engine and bare generate() alternating.

`--mode open` (or `all`, then the above follows) runs the open loop instead (loadtest/openloop.py):
the static engine's capacity is measured first (closed loop, --max-batch clients, mixed
requests), then Poisson arrivals at --loads times it for --duration seconds each, prompts of
16-256 tokens and max_tokens of 8-128 mixed, the same arrivals through the engine with each
scheduler (in a model process of its own, whose peak RSS is reported) and through CTranslate2
int8 served one batch per arrival window; throughput, time to first token, gap between tokens
and end-to-end percentiles, and the goals at 90% load.

    .venv/bin/python loadtest/bench_engine.py [--backends torch-int8,bf16] [--concurrency 1,16]
    .venv/bin/python loadtest/bench_engine.py --device cuda --backends bnb-int8,bf16 --no-ct2
    .venv/bin/python loadtest/bench_engine.py --mode all --backends torch-int8 \\
        --concurrency 16,32 --no-baseline --duration 60
"""

import argparse
import asyncio
import contextlib
import dataclasses
import os
import random
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import EngineConfig  # noqa: E402
from engine.loading import quiet_libraries  # noqa: E402
from engine.runtime import (  # noqa: E402
    Engine,
    GenerationRequest,
    GenerationResult,
)
from engine.testing import in_process_model  # noqa: E402
from loadtest.openloop import (  # noqa: E402
    SINGLE,
    Planned,
    closed_loop_capacity,
    drive_ct2,
    drive_engine,
    engine_cache_tokens,
    memory_figures,
    mixed_plan,
    open_row,
    peak_rss,
    print_open_loop,
    single_request,
    stream_model,
    summarize,
)

PROMPT_TOKENS = NEW_TOKENS = 64
BACKENDS = ("torch-int8", "bnb-int8", "bf16", "none")
HEADLINE = "torch-int8"  # the CPU default: the ratios are about it
RATIO_LEVEL = 16
Figures = dict[str, float]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--concurrency", default="1,4,16,32")
    parser.add_argument("--repeat", type=int, default=2, help="runs per level; the best counts")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds at 16")
    parser.add_argument("--max-batch", type=int, default=32, help="INFERENCE_MAX_BATCH")
    parser.add_argument("--max-wait-ms", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="0: one per core")
    parser.add_argument(
        "--device", default="cpu", help="our engine's; the baseline and CTranslate2 use the CPU"
    )
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-ct2", action="store_true")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument("--mode", choices=("closed", "open", "all"), default="closed")
    parser.add_argument("--duration", type=float, default=60.0, help="open loop: s per load")
    parser.add_argument("--loads", default="0.6,0.9,1.2", help="open loop: x static capacity")
    parser.add_argument("--capacity-seconds", type=float, default=30.0)
    parser.add_argument(
        "--open-backend", default=HEADLINE, help="open loop: our engine's backend (bf16 on CUDA)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--capacity", type=float, default=0.0, help="open loop: requests/s (0: measure it)"
    )
    parser.add_argument(
        "--variants",
        default="",
        help="open loop: e.g. static,continuous:off,continuous (@N: prefill_step_tokens, "
        ":MODE: prefill_thread)",
    )
    return parser.parse_args()


def uptime() -> str:
    """The load next to the figures: the machine is shared, so they must be read with it."""
    command = ["uptime"]  # a fixed command, no input
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()  # noqa: S603, S607


# --- model and prompts --------------------------------------------------------------------------
def ensure_model(workdir: Path) -> tuple[Path, Path]:
    """The flan-t5-base-shaped random model and its adapter (built once, then reused)."""
    from engine.tiny_model import FLAN_T5_BASE, build_adapter, build_t5, build_tokenizer

    base, adapter = workdir / "base", workdir / "adapter"
    if not (base / "model.safetensors").is_file():
        count = build_t5(base, FLAN_T5_BASE, build_tokenizer(seed=0, vocab_size=1000), seed=0)
        print(f"built {base}: {count:,} parameters", flush=True)
    if not (adapter / "adapter_config.json").is_file():
        # Like a trained adapter: updates 5% of the size of the weights they change.
        build_adapter(base, adapter, seed=0, rank=8, strength=0.05)
    return base, adapter


def make_prompts(base: Path, count: int) -> list[str]:
    """Distinct prompts of exactly 64 tokens (end-of-sequence token included)."""
    from transformers import AutoTokenizer

    from engine.tiny_model import _WORDS

    tokenizer, rng = AutoTokenizer.from_pretrained(base), random.Random(7)
    prompts: list[str] = []
    while len(prompts) < count:
        words: list[str] = []
        while len(tokenizer(" ".join(words)).input_ids) < PROMPT_TOKENS:
            words.append(rng.choice(_WORDS))
        if len(tokenizer(" ".join(words)).input_ids) == PROMPT_TOKENS:
            prompts.append(" ".join(words))
    return prompts


def batch_figures(tokens: int, wall: float) -> Figures:
    return {"tokens_per_s": tokens / wall, "latency_mean": wall, "latency_max": wall}


def best(runs: list[Figures]) -> Figures:
    return max(runs, key=lambda run: run["tokens_per_s"])


# --- our engine ---------------------------------------------------------------------------------
# Any: the options are EngineConfig's fields, each of its own type.
def start_engine(
    args: argparse.Namespace, backend: str, base: Path, adapter: Path, **options: Any
) -> Engine:
    config = EngineConfig(
        model=str(base),
        adapter=str(adapter),
        quantization=backend,
        device=args.device,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        threads=args.threads,
        allow_download=False,
        **options,
    )
    engine = Engine(config)
    engine.start()
    if not engine.wait_ready(900):
        raise SystemExit(f"{backend}: {engine.status()['detail']}")
    return engine


async def one_request(engine: Engine, prompt: str) -> Figures:
    started = time.perf_counter()
    request = GenerationRequest(prompt, max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    result = await (await engine.submit(request)).complete()
    return {
        "latency": time.perf_counter() - started,
        "ttft": result.first_token_seconds or 0.0,
        "tokens": result.completion_tokens,
    }


async def concurrent(engine: Engine, prompts: list[str]) -> Figures:
    """All prompts submitted at once; aggregate tokens/s and per-request latency."""
    started = time.perf_counter()
    rows = await asyncio.gather(*(one_request(engine, p) for p in prompts))
    wall = time.perf_counter() - started
    latencies = [row["latency"] for row in rows]
    return {
        "tokens_per_s": sum(row["tokens"] for row in rows) / wall,
        "latency_mean": statistics.mean(latencies),
        "latency_max": max(latencies),
        "ttft_mean": statistics.mean(row["ttft"] for row in rows),
    }


def bench_levels(
    args: argparse.Namespace,
    engine: Engine,
    backend: str,
    prompts: list[str],
    ct2: Callable[[int], Figures] | None = None,
) -> dict:
    """Best of --repeat runs at each level; CTranslate2's batch of the same size right after."""
    figures: dict[Any, Any] = {"load_s": engine.status()["load_seconds"]}
    for level in args.levels:
        ours, theirs = [], []
        for _ in range(args.repeat):
            ours.append(asyncio.run(concurrent(engine, prompts[:level])))
            if ct2 is not None:
                theirs.append(ct2(level))
        figures[level] = best(ours)
        print(f"  {backend:<12} c={level:<3} {fmt(figures[level])}", flush=True)
        if theirs:
            print(f"  {'ct2-int8':<12} c={level:<3} {fmt(best(theirs))}", flush=True)
    figures["ttft"] = ttft_pair(engine, prompts[0])
    return figures


def ttft_pair(engine: Engine, prompt: str, runs: int = 5) -> Figures:
    """Median time to first token of one request: engine and bare generate(), alternating."""
    import torch

    loaded = in_process_model(engine)
    inputs = loaded.tokenizer(prompt, return_tensors="pt").to(loaded.device)
    request = GenerationRequest(prompt, max_tokens=1, temperature=0.0)
    ours, bare = [], []
    for _ in range(runs):
        result = asyncio.run(_complete(engine, request))
        ours.append(result.first_token_seconds or 0.0)
        with torch.inference_mode():
            started = time.perf_counter()
            loaded.model.generate(**inputs, max_new_tokens=1, do_sample=False)
            bare.append(time.perf_counter() - started)
    return {"engine": statistics.median(ours), "generate": statistics.median(bare)}


async def _complete(engine: Engine, request: GenerationRequest) -> GenerationResult:
    return await (await engine.submit(request)).complete()


def generate_runner(engine: Engine, prompts: list[str]) -> Callable[[], Figures]:
    """transformers' generate() on the engine's own model, the prompts as one batch."""
    import torch

    loaded = in_process_model(engine)
    inputs = loaded.tokenizer(prompts, return_tensors="pt", padding=True).to(loaded.device)
    options = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}

    def run() -> Figures:
        with torch.inference_mode():
            started = time.perf_counter()
            out = loaded.model.generate(**inputs, **options)
        return batch_figures((out.shape[1] - 1) * len(prompts), time.perf_counter() - started)

    return run


# --- the reference implementation's way ----------------------------------------------------------
def baseline_runner(base: Path, adapter: Path, prompt: str) -> Callable[[], Figures]:
    """bitsandbytes int8, adapter unmerged, one generate() at a time: its tokens/s is one
    request's at any concurrency (the n-th of n concurrent requests waits n-1 whole runs)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, BitsAndBytesConfig

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSeq2SeqLM.from_pretrained(
        base, quantization_config=BitsAndBytesConfig(load_in_8bit=True)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft on transformers 5 deprecations
        model = PeftModel.from_pretrained(model, adapter).eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    options = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}

    def run() -> Figures:
        with torch.inference_mode():
            started = time.perf_counter()
            out = model.generate(**inputs, **options)
        return batch_figures(out.shape[1] - 1, time.perf_counter() - started)

    run()  # warm-up
    return run


# --- CTranslate2 ---------------------------------------------------------------------------------
@contextlib.contextmanager
def ct2_scale_fix() -> Iterator[None]:
    """The converter scales T5 outputs whenever tie_word_embeddings, which transformers 5
    always reports True; flan-t5 (scale_decoder_outputs False) must not be scaled."""
    from ctranslate2.converters import transformers as loaders
    from ctranslate2.specs import model_spec

    original = loaders.T5Loader.get_model_spec

    def fixed(self: Any, model: Any) -> Any:
        spec = original(self, model)
        if getattr(model.config, "scale_decoder_outputs", True) is False:
            spec.decoder.scale_outputs = model_spec.OPTIONAL
        return spec

    loaders.T5Loader.get_model_spec = fixed
    try:
        yield
    finally:
        loaders.T5Loader.get_model_spec = original


def ct2_model(base: Path, adapter: Path, workdir: Path) -> Path:
    """The adapter merged in fp32 (as our engine serves it), converted to CTranslate2 int8."""
    from ctranslate2.converters import TransformersConverter

    from engine.loading import load_model

    merged, output = workdir / "merged", workdir / "ct2-int8"
    if not (output / "model.bin").is_file():
        model = load_model(str(base), adapter=str(adapter), quantization="none").model
        model.save_pretrained(merged)
        with ct2_scale_fix():
            TransformersConverter(str(merged)).convert(str(output), quantization="int8", force=True)
    return output


def ct2_translator(args: argparse.Namespace, base: Path, adapter: Path) -> Any:
    """CTranslate2 int8 on the merged weights, with as many threads as our engine."""
    import ctranslate2

    threads = args.threads or len(os.sched_getaffinity(0))
    return ctranslate2.Translator(
        str(ct2_model(base, adapter, args.workdir)), compute_type="int8", intra_threads=threads
    )


def ct2_runner(
    args: argparse.Namespace, base: Path, adapter: Path, prompts: list[str]
) -> Callable[[int], Figures]:
    """A function that runs CTranslate2 int8 on the first `level` prompts as one batch."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    translator = ct2_translator(args, base, adapter)
    sources = [tokenizer.convert_ids_to_tokens(tokenizer(p).input_ids) for p in prompts]
    options = {"beam_size": 1, "max_decoding_length": NEW_TOKENS, "min_decoding_length": NEW_TOKENS}
    translator.translate_batch(sources[:1], **options)  # warm-up

    def run(level: int) -> Figures:
        started = time.perf_counter()
        out = translator.translate_batch(sources[:level], max_batch_size=level, **options)
        tokens = sum(len(result.hypotheses[0]) for result in out)
        return batch_figures(tokens, time.perf_counter() - started)

    return run


# --- interleaved rounds at 16 --------------------------------------------------------------------
def ratio_rounds(
    args: argparse.Namespace, engine: Engine, prompts: list[str], anchors: dict
) -> dict[str, Figures]:
    """Engine, generate(), CTranslate2 and the baseline at 16, taking turns, best of rounds."""
    batch = prompts[:RATIO_LEVEL]
    runners: dict[str, Callable[[], Figures]] = {
        HEADLINE: lambda: asyncio.run(concurrent(engine, batch)),
        "generate()": generate_runner(engine, batch),
    }
    if "ct2" in anchors:
        runners["ct2-int8"] = lambda: anchors["ct2"](RATIO_LEVEL)
    if "baseline" in anchors:
        runners["baseline"] = anchors["baseline"]
    runs: dict[str, list[Figures]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            runs[name].append(run())
    figures = {name: best(found) for name, found in runs.items()}
    for name, found in figures.items():
        print(f"  {name:<12} c={RATIO_LEVEL:<3} {fmt(found)}", flush=True)
    return figures


def load_anchors(args: argparse.Namespace, base: Path, adapter: Path, prompts: list[str]) -> dict:
    anchors: dict[str, Any] = {}
    if not args.no_baseline:
        anchors["baseline"] = baseline_runner(base, adapter, prompts[0])
    if not args.no_ct2:
        try:
            anchors["ct2"] = ct2_runner(args, base, adapter, prompts)
        except ImportError:
            print("  ct2-int8 not installed (pip install torch==2.13.0 '.[bench]')", flush=True)
    return anchors


# --- open loop ----------------------------------------------------------------------------------
def scheduler_variants() -> list[str]:
    """static first (its capacity sets the loads), then continuous; `engine` alone while
    EngineConfig has no scheduler setting (the engine then batches statically)."""
    if "scheduler" in {option.name for option in dataclasses.fields(EngineConfig)}:
        return ["static", "continuous"]
    return ["engine"]


def open_loop(args: argparse.Namespace, base: Path, adapter: Path) -> None:
    """Poisson arrivals at each load through each scheduler and CTranslate2; the goals."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)  # the prompts' ids: the same in both
    folder = stream_model(args.workdir, base)
    rows: dict[str, dict[float, Figures]] = {}
    singles: dict[str, Figures] = {}
    plans: dict[float, list[Planned]] = {}
    variants = args.variants.split(",") if args.variants else scheduler_variants()
    for variant in variants:
        options = variant_options(variant)
        # The served layout: a model process of its own (its RSS is the model's), no refusals.
        engine = start_engine(
            args, args.open_backend, folder, adapter, process=True, max_queue=100_000, **options
        )
        try:
            if not plans:
                plans = load_plans(args, engine, tokenizer)
            before = single_engine(engine, tokenizer)
            rows[variant] = {}
            for load, plan in plans.items():
                status = engine.status()
                with peak_rss(status["model_process"], engine_cache_tokens) as peak:
                    records = asyncio.run(drive_engine(engine, plan, tokenizer))
                memory = memory_figures(peak, status, engine.config.token_budget)
                rows[variant][load] = {**summarize(records), **memory}
                print(f"  {variant:<12} {open_row(load, rows[variant][load])}", flush=True)
            singles[variant] = quicker(before, single_engine(engine, tokenizer))
        finally:
            engine.stop(60)
    if not args.no_ct2:
        ct2_open_loop(args, base, adapter, tokenizer, plans, rows, singles)
    print_open_loop(rows, singles)


def variant_options(variant: str) -> dict[str, Any]:
    """EngineConfig options of a variant name: a scheduler, then @N for prefill_step_tokens,
    then :MODE for prefill_thread (continuous:off: passes in pauses between the steps)."""
    if variant == "engine":
        return {}
    variant, _, thread = variant.partition(":")
    scheduler, _, step = variant.partition("@")
    options: dict[str, Any] = {"scheduler": scheduler}
    if step:
        options["prefill_step_tokens"] = int(step)
    if thread:
        options["prefill_thread"] = thread
    return options


def quicker(before: Figures, after: Figures) -> Figures:
    """The single request's reference from its runs before and after the loaded ones: the
    quicker of each (the stricter goal). One set alone moved by up to 35% (a single request
    right after the previous variant's model process ended: 136 ms and 12.8 ms per token,
    against 106-118 ms and 8.7-9.8 ms on the same engine later)."""
    return {
        "ttft": min(before["ttft"], after["ttft"]),
        "per_token": min(before["per_token"], after["per_token"]),
        "ttft_before": before["ttft"],
        "ttft_after": after["ttft"],
        "per_token_before": before["per_token"],
        "per_token_after": after["per_token"],
    }


def single_engine(engine: Engine, tokenizer: Any) -> Figures:
    """The single request's figures on the idle engine, after one unmeasured."""
    asyncio.run(drive_engine(engine, [SINGLE], tokenizer))
    return single_request(lambda: asyncio.run(drive_engine(engine, [SINGLE], tokenizer))[0])


def load_plans(
    args: argparse.Namespace, engine: Engine, tokenizer: Any
) -> dict[float, list[Planned]]:
    """The static engine's closed-loop capacity, then one arrival plan per load from it."""
    rate = args.capacity or asyncio.run(
        closed_loop_capacity(engine, tokenizer, args.max_batch, args.capacity_seconds, args.seed)
    )
    print(
        f"open loop: capacity {rate:.2f} requests/s (closed loop, {args.max_batch} clients, "
        f"{args.capacity_seconds:.0f} s); {args.duration:.0f} s per load",
        flush=True,
    )
    loads = [float(load) for load in args.loads.split(",")]
    return {
        load: mixed_plan(load * rate, args.duration, args.seed + index)
        for index, load in enumerate(loads)
    }


def ct2_open_loop(
    args: argparse.Namespace,
    base: Path,
    adapter: Path,
    tokenizer: Any,
    plans: dict[float, list[Planned]],
    rows: dict[str, dict[float, Figures]],
    singles: dict[str, Figures],
) -> None:
    """The same plans through CTranslate2 int8, served one batch per arrival window."""
    try:
        translator = ct2_translator(args, base, adapter)
    except ImportError:
        print("  ct2-int8 not installed (pip install torch==2.13.0 '.[bench]')", flush=True)
        return
    # Runs in this process, which holds torch and the tokenizer too: its RSS is an upper bound.
    singles["ct2-int8"] = single_request(
        lambda: drive_ct2(translator, [SINGLE], tokenizer, args.max_batch)[0]
    )
    rows["ct2-int8"] = {}
    for load, plan in plans.items():
        with peak_rss(os.getpid()) as peak:
            records = drive_ct2(translator, plan, tokenizer, args.max_batch)
        rows["ct2-int8"][load] = {**summarize(records), "rss_mib": peak.rss_mib}
        print(f"  {'ct2-int8':<12} {open_row(load, rows['ct2-int8'][load])}", flush=True)


# --- report --------------------------------------------------------------------------------------
def fmt(row: Figures) -> str:
    ttft = f"  ttft {row['ttft_mean'] * 1000:7.1f} ms" if row.get("ttft_mean") else ""
    return (
        f"{row['tokens_per_s']:7.1f} tok/s  latency mean {row['latency_mean']:6.2f} s  "
        f"max {row['latency_max']:6.2f} s{ttft}"
    )


def print_ratios(rounds: dict[str, Figures], results: dict[str, Any]) -> None:
    print(f"\nratios at {RATIO_LEVEL} concurrent requests (same rounds)")
    ours = rounds.get(HEADLINE, {}).get("tokens_per_s")
    goals = {"baseline": ">= 10x", "ct2-int8": ">= 1.0x", "generate()": ">= 1.0x"}
    for name, goal in goals.items():
        if ours and name in rounds:
            ratio = ours / rounds[name]["tokens_per_s"]
            print(f"  {HEADLINE} / {name:<10} tokens/s: {ratio:6.2f}x (goal {goal})")
    print("time to first token, one request (medians of 5, alternating)")
    for backend in BACKENDS:
        if backend in results:
            ttft = results[backend]["ttft"]
            print(
                f"  {backend:<10} engine {ttft['engine'] * 1000:6.1f} ms / bare generate() "
                f"{ttft['generate'] * 1000:6.1f} ms: {ttft['engine'] / ttft['generate']:4.2f}x "
                "(goal <= 1.3x)"
            )


def main() -> None:
    args = parse_args()
    args.levels = [int(level) for level in args.concurrency.split(",")]
    quiet_libraries()
    print(f"start: {uptime()}", flush=True)
    base, adapter = ensure_model(args.workdir)
    if args.mode != "closed":
        open_loop(args, base, adapter)
    if args.mode != "open":
        closed_loop(args, base, adapter)
    print(f"end:   {uptime()}")


def closed_loop(args: argparse.Namespace, base: Path, adapter: Path) -> None:
    """Every backend at each concurrency, the ratio rounds at 16 and the ratios."""
    defaults = {option.name: option.default for option in dataclasses.fields(EngineConfig)}
    print(f"closed loop, scheduler {defaults.get('scheduler', 'static')}", flush=True)
    prompts = make_prompts(base, max([*args.levels, RATIO_LEVEL]))
    anchors = load_anchors(args, base, adapter, prompts)
    results: dict[str, Any] = {}
    rounds: dict[str, Figures] = {}
    for backend in args.backends.split(","):
        engine = start_engine(args, backend, base, adapter)
        try:
            ct2 = anchors.get("ct2") if backend == HEADLINE else None
            results[backend] = bench_levels(args, engine, backend, prompts, ct2)
            if backend == HEADLINE:
                rounds = ratio_rounds(args, engine, prompts, anchors)
                print(f"  (middle: {uptime()})", flush=True)
        finally:
            engine.stop(60)
    print_ratios(rounds, results)


if __name__ == "__main__":
    main()
