"""Engine benchmark: aggregate tokens/s, latency and time to first token through our engine.

A random-weight model with flan-t5-base's exact shape (247,577,856 parameters, untied lm_head)
and a LoRA adapter are built under --workdir (never committed). Every request has a 64-token
prompt and asks for 64 new tokens (greedy, end-of-sequence ignored). Compared in one process:

- our engine per backend at 1, 4, 16 and 32 concurrent requests;
- the baseline, the reference implementation's way: bitsandbytes int8 with the adapter
  unmerged (peft), one generate() at a time;
- CTranslate2 int8 on the same weights, each level as one batch (when it is installed:
  `pip install torch==2.13.0 '.[bench]'`); converted with the fix from docs/engine.md.

    .venv/bin/python loadtest/bench_engine.py [--backends torch-int8,bf16] [--concurrency 1,16]
"""

import argparse
import asyncio
import contextlib
import gc
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.engine import Engine, EngineConfig, GenerationRequest  # noqa: E402
from inference.loading import quiet_libraries  # noqa: E402

PROMPT_TOKENS = NEW_TOKENS = 64
BACKENDS = ("torch-int8", "bnb-int8", "bf16", "none")
HEADLINE = "torch-int8"  # the CPU default, used for the ratios


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--concurrency", default="1,4,16,32")
    parser.add_argument("--repeat", type=int, default=2, help="runs per level; the best counts")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="0: one per core")
    parser.add_argument("--baseline-requests", type=int, default=4)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-ct2", action="store_true")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "bench")
    return parser.parse_args()


def uptime() -> str:
    """The load next to the figures: the machine is shared, so they must be read with it."""
    command = ["uptime"]  # a fixed command, no input
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()  # noqa: S603, S607


# --- model and prompts --------------------------------------------------------------------------
def ensure_model(workdir: Path) -> tuple[Path, Path]:
    """The flan-t5-base-shaped random model and its adapter (built once, then reused)."""
    from inference.tiny_model import FLAN_T5_BASE, build_adapter, build_t5, build_tokenizer

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

    from inference.tiny_model import _WORDS

    tokenizer, rng, prompts = AutoTokenizer.from_pretrained(base), random.Random(7), []
    while len(prompts) < count:
        words: list[str] = []
        while len(tokenizer(" ".join(words)).input_ids) < PROMPT_TOKENS:
            words.append(rng.choice(_WORDS))
        if len(tokenizer(" ".join(words)).input_ids) == PROMPT_TOKENS:
            prompts.append(" ".join(words))
    return prompts


# --- our engine ---------------------------------------------------------------------------------
async def one_request(engine: Engine, prompt: str) -> dict[str, float]:
    started = time.perf_counter()
    request = GenerationRequest(prompt, max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    result = await (await engine.submit(request)).complete()
    return {
        "latency": time.perf_counter() - started,
        "ttft": result.first_token_seconds or 0.0,
        "tokens": result.completion_tokens,
    }


async def run_level(engine: Engine, prompts: list[str], level: int) -> dict[str, float]:
    started = time.perf_counter()
    rows = await asyncio.gather(*(one_request(engine, p) for p in prompts[:level]))
    wall = time.perf_counter() - started
    return summarize(rows, wall)


def summarize(rows: list[dict[str, float]], wall: float) -> dict[str, float]:
    latencies = [row["latency"] for row in rows]
    return {
        "tokens_per_s": sum(row["tokens"] for row in rows) / wall,
        "latency_mean": statistics.mean(latencies),
        "latency_max": max(latencies),
        "ttft_mean": statistics.mean(row.get("ttft", 0.0) for row in rows),
    }


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    return max(runs, key=lambda run: run["tokens_per_s"])


def bench_backend(args: argparse.Namespace, backend: str, base: Path, adapter: Path, prompts, ct2):
    """Figures for one backend at every level, plus TTFT against a bare generate(). When ct2
    is given, its batch at the same level runs right after ours, so both see the same load."""
    engine = start_engine(args, backend, base, adapter)
    try:
        figures: dict[Any, Any] = {"load_s": engine.status()["load_seconds"]}
        anchor: dict[int, list] = {level: [] for level in args.levels}
        for level in args.levels:
            runs = []
            for _ in range(args.repeat):
                runs.append(asyncio.run(run_level(engine, prompts, level)))
                if ct2 is not None:
                    anchor[level].append(ct2(level))
            figures[level] = best(runs)
            print(f"  {backend:<10} c={level:<3} {fmt(figures[level])}", flush=True)
            if ct2 is not None:
                print(f"  {'ct2-int8':<10} c={level:<3} {fmt(best(anchor[level]))}", flush=True)
        figures["ttft"] = ttft_against_generate(engine, prompts[0])
        anchors = {level: best(runs) for level, runs in anchor.items()} if ct2 else None
        return figures, anchors
    finally:
        engine.stop(60)


def start_engine(args: argparse.Namespace, backend: str, base: Path, adapter: Path) -> Engine:
    config = EngineConfig(
        model=str(base),
        adapter=str(adapter),
        quantization=backend,
        device="cpu",
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        threads=args.threads,
        allow_download=False,
    )
    engine = Engine(config)
    engine.start()
    if not engine.wait_ready(900):
        raise SystemExit(f"{backend}: {engine.status()['detail']}")
    return engine


def ttft_against_generate(engine: Engine, prompt: str, runs: int = 5) -> dict[str, float]:
    """Median time to first token: one request through the engine vs a bare generate()."""
    import torch

    async def first_token() -> float:
        request = GenerationRequest(prompt, max_tokens=1, temperature=0.0)
        return (await (await engine.submit(request)).complete()).first_token_seconds or 0.0

    ours = statistics.median(asyncio.run(first_token()) for _ in range(runs))
    loaded = engine._loaded()
    inputs = loaded.tokenizer(prompt, return_tensors="pt")
    bare = []
    with torch.inference_mode():
        for _ in range(runs):
            started = time.perf_counter()
            loaded.model.generate(**inputs, max_new_tokens=1, do_sample=False)
            bare.append(time.perf_counter() - started)
    return {"engine": ours, "generate": statistics.median(bare)}


# --- the reference implementation's way ----------------------------------------------------------
def bench_baseline(base: Path, adapter: Path, prompts: list[str], requests: int) -> dict:
    """bitsandbytes int8, the adapter unmerged, one generate() at a time (any concurrency)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, BitsAndBytesConfig

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSeq2SeqLM.from_pretrained(
        base, quantization_config=BitsAndBytesConfig(load_in_8bit=True)
    )
    model = PeftModel.from_pretrained(model, adapter).eval()
    options = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
    rows, started = [], time.perf_counter()
    with torch.inference_mode():
        model.generate(**tokenizer(prompts[0], return_tensors="pt"), max_new_tokens=2)
        started = time.perf_counter()
        for prompt in prompts[:requests]:
            out = model.generate(**tokenizer(prompt, return_tensors="pt"), **options)
            rows.append({"latency": time.perf_counter() - started, "tokens": out.shape[1] - 1})
    return summarize(rows, time.perf_counter() - started)


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

    from inference.loading import load_model

    merged, output = workdir / "merged", workdir / "ct2-int8"
    if not (output / "model.bin").is_file():
        load_model(str(base), adapter=str(adapter), quantization="none").model.save_pretrained(
            merged
        )
        with ct2_scale_fix():
            TransformersConverter(str(merged)).convert(str(output), quantization="int8", force=True)
    return output


def ct2_runner(args: argparse.Namespace, base: Path, adapter: Path, prompts: list[str]):
    """A function that runs CTranslate2 int8 on `level` prompts as one batch."""
    import ctranslate2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    threads = args.threads or len(os.sched_getaffinity(0))
    translator = ctranslate2.Translator(
        str(ct2_model(base, adapter, args.workdir)), compute_type="int8", intra_threads=threads
    )
    sources = [tokenizer.convert_ids_to_tokens(tokenizer(p).input_ids) for p in prompts]
    options = {"beam_size": 1, "max_decoding_length": NEW_TOKENS, "min_decoding_length": NEW_TOKENS}
    translator.translate_batch(sources[:1], **options)  # warm-up

    def run(level: int) -> dict[str, float]:
        started = time.perf_counter()
        out = translator.translate_batch(sources[:level], max_batch_size=level, **options)
        wall = time.perf_counter() - started
        tokens = sum(len(result.hypotheses[0]) for result in out)
        return {"tokens_per_s": tokens / wall, "latency_mean": wall, "latency_max": wall}

    return run


# --- report --------------------------------------------------------------------------------------
def fmt(row: dict[str, float]) -> str:
    ttft = f"  ttft {row['ttft_mean'] * 1000:7.1f} ms" if row.get("ttft_mean") else ""
    return (
        f"{row['tokens_per_s']:7.1f} tok/s  latency mean {row['latency_mean']:6.2f} s  "
        f"max {row['latency_max']:6.2f} s{ttft}"
    )


def print_ratios(results: dict[str, Any], levels: list[int]) -> None:
    head = results.get(HEADLINE)
    if head is None:
        return
    at = 16 if 16 in levels else max(levels)
    print("\nratios")
    if "baseline" in results:
        ratio = head[at]["tokens_per_s"] / results["baseline"]["tokens_per_s"]
        print(f"  {HEADLINE} tokens/s at {at} concurrent / baseline: {ratio:5.1f}x (goal >= 10x)")
    if "ct2-int8" in results:
        ratio = head[at]["tokens_per_s"] / results["ct2-int8"][at]["tokens_per_s"]
        print(
            f"  {HEADLINE} tokens/s at {at} concurrent / CTranslate2 int8: {ratio:5.2f}x (>= 1.0)"
        )
    for backend in BACKENDS:
        if backend in results:
            ttft = results[backend]["ttft"]
            ratio = ttft["engine"] / ttft["generate"]
            print(
                f"  {backend} TTFT at 1 request {ttft['engine'] * 1000:6.1f} ms / bare generate() "
                f"{ttft['generate'] * 1000:6.1f} ms: {ratio:4.2f}x (goal <= 1.3x)"
            )


def main() -> None:
    args = parse_args()
    args.levels = [int(level) for level in args.concurrency.split(",")]
    quiet_libraries()
    print(f"start: {uptime()}", flush=True)
    base, adapter = ensure_model(args.workdir)
    prompts = make_prompts(base, max([*args.levels, args.baseline_requests]))
    results: dict[str, Any] = {}
    if not args.no_baseline:
        results["baseline"] = bench_baseline(base, adapter, prompts, args.baseline_requests)
        print(f"  {'baseline':<10} any c  {fmt(results['baseline'])}", flush=True)
        gc.collect()
    ct2 = None
    if not args.no_ct2:
        try:
            ct2 = ct2_runner(args, base, adapter, prompts)
        except ImportError:
            print("  ct2-int8   not installed (pip install torch==2.13.0 '.[bench]')")
    for backend in args.backends.split(","):
        companion = ct2 if backend == HEADLINE else None
        results[backend], anchors = bench_backend(args, backend, base, adapter, prompts, companion)
        if anchors:
            results["ct2-int8"] = anchors
        gc.collect()
    print_ratios(results, args.levels)
    print(f"end:   {uptime()}")


if __name__ == "__main__":
    main()
