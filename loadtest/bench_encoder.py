"""The encoder's products on each kernel: one newcomer's pass (the encoder, then its
cross-attention keys and values, as the prefill thread runs it) on fbgemm against another
INFERENCE_ENCODER_KERNEL, in one process, alternating. With --gelu instead: the encoder's
tanh GELU as torch's fused op against engine.loading.PassGELU, on one loaded model.

The flan-t5-base-shaped random model (built once under --workdir, shared with bench_engine.py)
is loaded twice in torch-int8, once per kernel. For each prompt size and thread count the two
take turns, --rounds times; the medians and their ratio are printed, and every output and
cache is checked bitwise equal between the two (the step kernel and fbgemm compute the same
sums; oneDNN's rounding differs at ties, so there the largest difference is printed instead;
the two GELUs round differently too, and an 8-bit model's row scales carry a last-bit change
on to whole quantization steps).

    .venv/bin/python loadtest/bench_encoder.py [--kernel step] [--threads 1,2] [--rounds 7]
    .venv/bin/python loadtest/bench_encoder.py --gelu [--threads 1,2] [--rounds 9]
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine import native  # noqa: E402
from engine.loading import PassGELU, encoder_kernel, feed_forwards, load_model  # noqa: E402
from engine.t5_decoder import cross_caches  # noqa: E402
from engine.t5_encoder import encode  # noqa: E402

# (prompts, tokens each): a short prompt, a mid-sized one (the open loop's single request), a
# long one, and several newcomers in one pass.
SIZES = ((1, 16), (1, 64), (1, 128), (1, 256), (4, 64))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernel", default="step", help="INFERENCE_ENCODER_KERNEL to compare")
    parser.add_argument("--threads", default="1,2", help="torch threads of the pass")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds; medians")
    parser.add_argument("--sizes", default="", help="e.g. 1x16,1x256,4x64 (default: SIZES)")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument("--gelu", action="store_true", help="torch's tanh GELU against PassGELU")
    return parser.parse_args()


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """--sizes: "1x16,4x64" -> ((1, 16), (4, 64))."""
    pairs = []
    for size in text.split(","):
        count, _, tokens = size.strip().partition("x")
        pairs.append((int(count), int(tokens)))
    return tuple(pairs)


def load(base: Path, adapter: Path | None, kernel: str) -> Any:
    """The model in torch-int8 (the adapter merged) with its encoder's products on `kernel`
    (the setting, checked)."""
    os.environ["INFERENCE_ENCODER_KERNEL"] = kernel
    chosen = encoder_kernel()
    if chosen != kernel:
        raise SystemExit(f"INFERENCE_ENCODER_KERNEL={kernel} resolved to {chosen}")
    return load_model(str(base), adapter=str(adapter or ""), quantization="torch-int8")


def one_pass(loaded: Any, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, list[Any]]:
    """One newcomers' pass: seconds, and its outputs (encoder output, then each layer's cache)."""
    with torch.inference_mode():
        started = time.perf_counter()
        output = encode(loaded.model, ids, mask)
        caches = cross_caches(loaded.model, output, loaded.attention)
        seconds = time.perf_counter() - started
    return seconds, [output, *(tensor for pair in caches for tensor in pair)]


def difference(ours: list[Any], theirs: list[Any]) -> float:
    """The largest absolute difference over every output (0.0: bitwise the same)."""
    return max(
        float((a.float() - b.float()).abs().max()) for a, b in zip(ours, theirs, strict=True)
    )


def with_gelu(loaded: Any, gelu: torch.nn.Module) -> Callable[[], Any]:
    """A variant of one loaded model: every encoder block's GELU set to `gelu` first."""

    def ready() -> Any:
        for feed_forward in feed_forwards(loaded.model.get_encoder()):
            feed_forward.act = gelu
        return loaded

    return ready


def compare(
    models: dict[str, Callable[[], Any]], count: int, tokens: int, rounds: int
) -> dict[str, float]:
    """Alternating passes over the same prompts: the median ms of each variant (a callable
    that readies its model and returns it), and the ratio."""
    generator = torch.Generator().manual_seed(count * 1000 + tokens)
    vocab = next(iter(models.values()))().model.config.vocab_size
    ids = torch.randint(5, min(900, vocab), (count, tokens), generator=generator)
    mask = torch.ones_like(ids)
    times: dict[str, list[float]] = {name: [] for name in models}
    outputs: dict[str, list[Any]] = {}
    for ready in models.values():
        one_pass(ready(), ids, mask)  # unmeasured: first-call allocations
    for _ in range(rounds):
        for name, ready in models.items():
            seconds, outputs[name] = one_pass(ready(), ids, mask)
            times[name].append(seconds * 1000)
    base, other = (statistics.median(times[name]) for name in models)
    first, second = models
    return {
        "base": base,
        "other": other,
        "ratio": base / other,
        "diff": difference(outputs[second], outputs[first]),
    }


def main() -> None:
    from loadtest.bench_engine import ensure_model

    args = parse_args()
    sizes = parse_sizes(args.sizes) if args.sizes else SIZES
    flags = native.cpu_flags()
    kinds = sorted(flag for flag in flags if flag.startswith(("avx512_vnni", "avx2", "amx_int8")))
    print(f"CPU flags: {' '.join(kinds) or 'no AVX2'}; {os.cpu_count()} cores", flush=True)
    base, adapter = ensure_model(args.workdir)
    if args.gelu:
        loaded = load_model(str(base), adapter=str(adapter or ""), quantization="torch-int8")
        fused = torch.nn.GELU(approximate="tanh")
        models = {"torch": with_gelu(loaded, fused), "PassGELU": with_gelu(loaded, PassGELU())}
    else:
        first, second = load(base, adapter, "fbgemm"), load(base, adapter, args.kernel)
        models = {"fbgemm": lambda: first, args.kernel: lambda: second}
    names = list(models)
    print(f"\none pass (encoder + cross-attention keys/values), medians of {args.rounds}, ms")
    print(f"  {'threads':>7} {'prompts':>8}  {names[0]:>8} {names[1]:>8}  {'ratio':>6}  max diff")
    previous = torch.get_num_threads()
    try:
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            for count, tokens in sizes:
                row = compare(models, count, tokens, args.rounds)
                times = f"{row['base']:8.1f} {row['other']:8.1f}"
                print(
                    f"  {threads:>7} {count:>3} x{tokens:>3}  {times}"
                    f"  {row['ratio']:5.2f}x  {row['diff']:.3g}",
                    flush=True,
                )
    finally:
        torch.set_num_threads(previous)


if __name__ == "__main__":
    main()
