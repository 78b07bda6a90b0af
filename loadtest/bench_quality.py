"""Quality benchmark: how far each backend's greedy outputs move from fp32 on a trained model.

Random weights say little about quantization (their logits are close to ties everywhere), so
this script trains a small T5 here, offline, on a synthetic task: write the words of the input
in reverse order (4 to 10 distinct words of engine/tiny_model.py's, one token each). It
trains until the model is nearly perfect on held-out inputs or --train-minutes run out, and
keeps the model with its tokenizer in --model-dir (a re-run skips training, or trains on where
the last run stopped short of --target; --train-minutes 0 never trains on). Then it loads
that folder through the engine's own loader for every backend and decodes the held-out inputs
greedily, one request at a time and in batches of 16, and reports against fp32 alone:

- exact match: the share of requests whose tokens are exactly fp32's;
- token agreement: the share of fp32's token positions where the backend wrote the same token
  (an extra or a missing token counts as a disagreement);
- batch = alone: the share of requests whose tokens in a batch equal the backend's own alone;
- task: the share of answers that are the right reversed sentence.

Goal: every 8-bit backend at least 99% exact match with fp32. `--compare-dynamic` adds torch.ao
dynamic int8 (per-tensor activation scales) on the same weights, the backend it replaced.

    .venv/bin/python loadtest/bench_quality.py [--train-minutes 6] [--examples 512]
    .venv/bin/python loadtest/bench_quality.py --backends none,torch-int8,bf16 --compare-dynamic
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.tiny_model import _WORDS, T5Shape  # noqa: E402

# Bump when the task, the shape or the training changes: a cached model of another version
# is trained again.
TASK_VERSION = 3
MIN_WORDS, MAX_WORDS = 4, 10
HELD_OUT_SHARE = 10  # one source in 10 (by its hash) is held out, never trained on
SHAPE = T5Shape(
    d_model=128,
    d_kv=32,
    d_ff=512,
    num_layers=3,
    num_decoder_layers=3,
    num_heads=4,
    lm_head_std=128**-0.5,  # a trained model's scale, not the tiny test model's peaked one
    eos_scale=1.0,
)
# Measured on this machine: at 2e-3 (no clipping, dropout 0.1) the loss stayed at 2.5 for 1,000
# steps; at 7e-4 with clipping and no dropout it fell to 0.16 in 800 (60% held-out exact).
LEARNING_RATE = 7e-4
BATCH = 16
MAX_NEW_TOKENS = MAX_WORDS + 4  # the answer, end-of-sequence and room for a wrong longer one
BACKENDS = ("none", "torch-int8", "bnb-int8", "bf16")
EIGHT_BIT = ("torch-int8", "bnb-int8", "torch-ao-dynamic")
DYNAMIC = "torch-ao-dynamic"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="a backend that cannot load here is skipped"
    )
    parser.add_argument("--compare-dynamic", action="store_true", help="add torch.ao dynamic")
    parser.add_argument("--examples", type=int, default=512, help="held-out inputs decoded")
    parser.add_argument("--train-minutes", type=float, default=8.0, help="training time cap")
    parser.add_argument("--target", type=float, default=0.995, help="held-out exact match")
    # One thread: on a shared 2-core machine two OpenMP threads made a training step 25x
    # slower than one (measured: 7-16 s against 0.3 s), each spinning while the other waits.
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0: one per core")
    parser.add_argument("--retrain", action="store_true", help="ignore the cached model")
    parser.add_argument("--model-dir", type=Path, default=ROOT / ".cache" / "quality-model")
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda: where the model trains and the engines decode"
    )
    return parser.parse_args()


# --- the task ------------------------------------------------------------------------------------
def is_held_out(source: str) -> bool:
    """Whether a source belongs to the held-out set (by hash: the same on every run)."""
    return zlib.crc32(source.encode()) % HELD_OUT_SHARE == 0


def reverse_words(source: str) -> str:
    """The task's answer: the source's words in reverse order."""
    return " ".join(reversed(source.split()))


def examples(count: int, seed: int, *, held_out: bool) -> list[tuple[str, str]]:
    """`count` (source, answer) pairs, all from the held-out set or all from the training set."""
    rng = random.Random(seed)
    pairs: list[tuple[str, str]] = []
    while len(pairs) < count:
        # Distinct words: the model can find its place in the source by the word it wrote
        # last; with repeats it must count positions, which a first try had not learned after
        # 400 steps (loss 2.3).
        words = rng.sample(_WORDS, rng.randint(MIN_WORDS, MAX_WORDS))
        source = " ".join(words)
        if is_held_out(source) == held_out:
            pairs.append((source, reverse_words(source)))
    return pairs


# --- training ------------------------------------------------------------------------------------
@dataclass
class Trained:
    """What the cached model's marker file records."""

    version: int
    steps: int
    seconds: float
    held_out_exact: float


def ensure_model(args: argparse.Namespace) -> Trained:
    """The cached trained model; trained now (and cached) when there is none, or trained on
    from where the last run stopped when that one ran out of time short of args.target."""
    marker = args.model_dir / "trained.json"
    before = None
    if marker.is_file() and not args.retrain:
        before = Trained(**json.loads(marker.read_text()))
        if before.version != TASK_VERSION:
            before = None
        elif before.held_out_exact >= args.target or args.train_minutes <= 0:
            return before
    trained = train(args, before)
    marker.write_text(json.dumps(trained.__dict__))
    return trained


def train(args: argparse.Namespace, before: Trained | None) -> Trained:
    """Train from random weights (engine/tiny_model.py's build), or on from `before`'s saved
    weights, until args.target or the time cap."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from engine.tiny_model import build_t5, build_tokenizer

    torch.manual_seed(0)
    if before is None:
        build_t5(args.model_dir, SHAPE, build_tokenizer(seed=0, vocab_size=400), seed=0)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    # No dropout: the task is deterministic and the data endless, nothing to regularize.
    model = AutoModelForSeq2SeqLM.from_pretrained(
        args.model_dir, dtype=torch.float32, dropout_rate=0.0
    ).to(args.device)
    done = before.steps if before else 0
    exact = before.held_out_exact if before else 0.0
    step, exact, seconds = train_until(args, model, tokenizer, done + 1, exact)
    model.to("cpu").save_pretrained(args.model_dir)
    return Trained(TASK_VERSION, step, seconds + (before.seconds if before else 0.0), exact)


def train_until(
    args: argparse.Namespace, model: Any, tokenizer: Any, first_step: int, exact: float
) -> tuple[int, float, float]:
    """Optimizer steps until the probe's exact match (`exact` when starting) reaches
    args.target or the time cap; returns the last step, the exact match and the seconds."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    probe = examples(256, seed=2, held_out=True)
    started, step = time.perf_counter(), first_step
    deadline = started + args.train_minutes * 60
    batches = training_batches(seed=first_step)
    for step, (sources, answers) in enumerate(batches, start=first_step):
        # Warm-up after every (re)start: the fresh optimizer has no moment estimates yet. Then
        # smaller steps as the probe's errors get fewer (at a constant rate it hovered at 93-95%).
        warmup = (step - first_step + 1) / 100
        rate = LEARNING_RATE * min(1.0, warmup) * min(1.0, max(0.05, 5 * (1 - exact)))
        loss = train_step(model, tokenizer, optimizer, sources, answers, rate)
        if step % 100 == 0 or time.perf_counter() > deadline:
            exact = probe_exact(model, tokenizer, probe)
            print(f"  step {step:5d}  loss {loss:.4f}  held-out exact {exact:.1%}", flush=True)
            if exact >= args.target or time.perf_counter() > deadline:
                break
    return step, exact, time.perf_counter() - started


def training_batches(seed: int, size: int = 32) -> Iterator[tuple[list[str], list[str]]]:
    """An endless stream of training batches (never a held-out source)."""
    rng = random.Random(seed)
    while True:
        pairs = examples(size, rng.randrange(2**31), held_out=False)
        yield [source for source, _ in pairs], [answer for _, answer in pairs]


def train_step(
    model: Any,
    tokenizer: Any,
    optimizer: Any,
    sources: list[str],
    answers: list[str],
    rate: float,
) -> float:
    """One optimizer step on teacher-forced cross-entropy; returns the loss."""
    import torch

    model.train()
    inputs = tokenizer(sources, return_tensors="pt", padding=True).to(model.device)
    labels = tokenizer(answers, return_tensors="pt", padding=True).input_ids.to(model.device)
    labels[labels == tokenizer.pad_token_id] = -100  # padding is not a target
    for group in optimizer.param_groups:
        group["lr"] = rate
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
    return float(loss.detach())


def probe_exact(model: Any, tokenizer: Any, probe: list[tuple[str, str]]) -> float:
    """Held-out exact match of generate()'s greedy answers (the training's stopping rule)."""
    import torch

    model.eval()
    sources = [source for source, _ in probe]
    with torch.inference_mode():
        inputs = tokenizer(sources, return_tensors="pt", padding=True).to(model.device)
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    return sum(
        text.strip() == answer for text, (_, answer) in zip(texts, probe, strict=True)
    ) / len(probe)


# --- decoding through the engine -----------------------------------------------------------------
Outputs = list[tuple[list[int], str]]  # per request: token ids and text


def decode_backend(
    args: argparse.Namespace, backend: str, sources: list[str]
) -> dict[str, Outputs]:
    """The held-out inputs through an engine on `backend`: alone, then in batches of 16."""
    from engine.config import EngineConfig
    from engine.testing import running_engine

    quantization = "none" if backend == DYNAMIC else backend
    config = EngineConfig(
        model=str(args.model_dir),
        quantization=quantization,
        device=args.device,
        max_batch=BATCH,
        # All 16 of a batch are submitted together; the wait only makes sure they meet.
        max_wait_ms=50,
        threads=args.threads,
        allow_download=False,
    )
    patch = dynamic_int8_loader() if backend == DYNAMIC else contextlib.nullcontext()
    with patch, running_engine(config) as engine:
        return {
            "alone": asyncio.run(alone(engine, sources)),
            "batch": asyncio.run(batched(engine, sources)),
        }


async def alone(engine: Any, sources: list[str]) -> Outputs:
    """One request at a time: each decodes in a batch of its own."""
    return [await answer(engine, source) for source in sources]


async def batched(engine: Any, sources: list[str]) -> Outputs:
    """16 requests submitted together, so they decode as one batch of mixed lengths."""
    outputs: Outputs = []
    for start in range(0, len(sources), BATCH):
        chunk = sources[start : start + BATCH]
        outputs += await asyncio.gather(*(answer(engine, source) for source in chunk))
    return outputs


async def answer(engine: Any, source: str) -> tuple[list[int], str]:
    from engine.testing import generate

    result = await generate(engine, source, max_tokens=MAX_NEW_TOKENS)
    return result.token_ids, result.text


@contextlib.contextmanager
def dynamic_int8_loader() -> Iterator[None]:
    """The engine's loader (as engine.worker calls it) swapped for one that loads fp32 and
    quantizes with torch.ao's dynamic int8: per-tensor activation scales, the backend before
    per-row scales. Only for this benchmark's own engine, on its own thread, inside the block."""
    from unittest import mock

    import torch

    from engine.loading import load_model

    def load_dynamic(*args: Any, **options: Any) -> Any:
        loaded = load_model(*args, **{**options, "quantization": "none"})
        with warnings.catch_warnings():
            # torch.ao's notice that it moves to torchao: this is the old backend on purpose.
            warnings.simplefilter("ignore")
            # In place, as the loader did before per-row scales.
            torch.ao.quantization.quantize_dynamic(
                loaded.model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
            )
        loaded.quantization = DYNAMIC
        return loaded

    with mock.patch("engine.worker.load_model", load_dynamic):
        yield


# --- report --------------------------------------------------------------------------------------
def exact_share(outputs: Outputs, reference: Outputs) -> float:
    return sum(ids == ref for (ids, _), (ref, _) in zip(outputs, reference, strict=True)) / len(
        reference
    )


def token_agreement(outputs: Outputs, reference: Outputs) -> float:
    """Matching positions over the longer of each pair, summed over all requests."""
    same = total = 0
    for (ids, _), (ref, _) in zip(outputs, reference, strict=True):
        same += sum(a == b for a, b in zip(ids, ref, strict=False))
        total += max(len(ids), len(ref))
    return same / total if total else 1.0


def task_share(outputs: Outputs, answers: list[str]) -> float:
    return sum(
        text.strip() == want for (_, text), want in zip(outputs, answers, strict=True)
    ) / len(answers)


def report(results: dict[str, dict[str, Outputs]], answers: list[str]) -> None:
    reference = results["none"]["alone"]
    print(f"\nheld-out inputs: {len(answers)}; reference: fp32 (none), alone")
    print(f"  {'backend':<17}{'mode':<7}{'exact':>8}{'tokens':>9}{'batch=alone':>13}{'task':>8}")
    for backend, runs in results.items():
        for mode, outputs in runs.items():
            own = exact_share(outputs, runs["alone"])
            print(
                f"  {backend:<17}{mode:<7}{exact_share(outputs, reference):8.1%}"
                f"{token_agreement(outputs, reference):9.2%}{own:13.1%}"
                f"{task_share(outputs, answers):8.1%}"
            )
    print("goal: every 8-bit backend >= 99% exact match with fp32 (alone and in batches)")
    for backend in (name for name in results if name in EIGHT_BIT):
        worst = min(exact_share(outputs, reference) for outputs in results[backend].values())
        verdict = "met" if worst >= 0.99 else "NOT met"
        print(f"  {backend:<17} worst exact match {worst:6.1%}: {verdict}")


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    trained = ensure_model(args)
    print(
        f"model: {args.model_dir} (trained {trained.steps} steps in {trained.seconds:.0f} s, "
        f"held-out exact {trained.held_out_exact:.1%} with generate())",
        flush=True,
    )
    pairs = examples(args.examples, seed=3, held_out=True)
    sources, answers = [source for source, _ in pairs], [answer for _, answer in pairs]
    backends = [name for name in args.backends.split(",") if name]
    if "none" not in backends:
        backends.insert(0, "none")  # the reference
    if args.compare_dynamic:
        backends.append(DYNAMIC)
    results: dict[str, dict[str, Outputs]] = {}
    for backend in backends:
        started = time.perf_counter()
        try:
            results[backend] = decode_backend(args, backend, sources)
        except RuntimeError as exc:  # start_ready's: the backend cannot load here
            print(f"  {backend} skipped: {exc}", flush=True)
            continue
        print(f"  decoded with {backend} in {time.perf_counter() - started:.0f} s", flush=True)
    report(results, answers)


if __name__ == "__main__":
    main()
