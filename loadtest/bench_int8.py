"""torch-int8 before and after issue 14: per-tensor dynamic int8 against row-scaled int8.

Three parts, all in this one process except the memory one (a fresh process per variant):

- kernels: flan-t5-base's Linear shapes (768x768, 768x2048, 2048x768) at 1 and 16 rows;
  today's kernel (`quantized::linear_dynamic` called directly, as torch-int8 did) against
  `engine.rowint8.RowInt8Linear`, alone and as a q/k/v group sharing one row scaling; µs per
  call, the minimum over interleaved rounds, the ratio row/today, the largest change of row 0
  when its 15 mates change (Δmates) and the relative error against fp64;
- model: the flan-t5-base-shaped random model (built once under --workdir, shared with
  bench_engine.py) quantized three ways: today, row-scaled Linear by Linear (`row`), and
  row-scaled with q/k/v, cross k/v and wi_0/wi_1 fused as torch-int8 loads it (`fused`); the
  encoder over 16 prompts of 64 tokens, and one engine decoder step (`T5DecoderStep`, column 8)
  at 1 and 16 rows; `now` is `fused` with the step's attention kernel over half-precision
  caches (engine/attention.py), the CPU backend as it decodes now;
- memory: resident memory (VmRSS) of a process that loaded that model in torch-int8, the way
  torch-int8 loaded before (quantize_dynamic in place, fp32 file still mapped) and now
  (`engine.loading.load_model`), against the quantized model's own bytes.

    .venv/bin/python loadtest/bench_int8.py [--parts kernels,model,memory] [--threads 1]
"""

import argparse
import contextlib
import ctypes
import gc
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.rowint8 import RowInt8Linear, RowScale  # noqa: E402

SHAPES = ((768, 768), (768, 2048), (2048, 768))
ROWS = (1, 16)
Timed = Callable[[], object]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="kernels,model,memory")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: all cores)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; min counts")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument("--memory-child", choices=("before", "now"), help=argparse.SUPPRESS)
    return parser.parse_args()


def cpu_line() -> str:
    flags = set()
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f in flags]
    return f"{model}; {', '.join(simd)}; torch {torch.__version__}"


class TodayLinear(torch.nn.Module):
    """torch-int8 before issue 14: quantize_dynamic's weights, its kernel called directly."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dynamic = torch.ao.quantization.quantize_dynamic(
                torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8
            )[0]
        self.packed = dynamic._packed_params._packed_params

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # reduce_range=True, as torch.ao's module passes (7-bit activations on x86).
        out: torch.Tensor = torch.ops.quantized.linear_dynamic.default(hidden, self.packed, True)
        return out

    def weight(self) -> torch.Tensor:
        # transformers' T5 feed-forward probes `wo.weight`; a method leaves it alone.
        return torch.ops.quantized.linear_unpack(self.packed)[0].dequantize()


def clock() -> float:
    """At one thread the process's CPU time: what other processes take of the core is left out
    (this machine is shared); with more, wall time (idle OpenMP threads spin on the CPU)."""
    return time.process_time() if torch.get_num_threads() == 1 else time.perf_counter()


def best_us(calls: dict[str, Timed], rounds: int, repeat: int = 200) -> dict[str, float]:
    """µs per call of each, the minimum over interleaved rounds (same machine load for all)."""
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(3):
                call()
            started = clock()
            for _ in range(repeat):
                call()
            best[name] = min(best[name], (clock() - started) / repeat * 1e6)
    return best


# --- kernels ------------------------------------------------------------------------------------
# How many layers of each shape read one input in T5: q/k/v; wi_0/wi_1; wo alone.
READERS = {(768, 768): 3, (768, 2048): 2, (2048, 768): 1}


def random_linear(inputs: int, outputs: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    layer = torch.nn.Linear(inputs, outputs, bias=False)
    layer.weight.data.normal_(0.0, 0.05)
    return layer


def kernel_row(inputs: int, outputs: int, rows: int, rounds: int) -> str:
    """One shape: its T5 readers of one input (distinct weights) called in turn, µs a call."""
    layers = [random_linear(inputs, outputs, seed) for seed in range(READERS[inputs, outputs])]
    today, alone = [TodayLinear(x) for x in layers], [RowInt8Linear(x) for x in layers]
    scale = RowScale()
    shared = [RowInt8Linear(x, scale) for x in layers]
    hidden = torch.randn(rows, inputs)

    def each(group: Sequence[torch.nn.Module]) -> Timed:
        # A fresh input each time, as in a decoder step (the copy costs all three the same).
        return lambda: [layer(fresh) for fresh in [hidden.clone()] for layer in group]

    calls = {"today": each(today), "row": each(alone), "shared": each(shared)}
    us = {k: v / len(layers) for k, v in best_us(calls, rounds).items()}
    quality = f"Δmates {mates_change(today[0], inputs):.3f}/{mates_change(alone[0], inputs):.3f}"
    quality += f"  err {error(today[0], layers[0], hidden):.1e}/"
    quality += f"{error(alone[0], layers[0], hidden):.1e}"
    sharing = f"  shared by {len(layers)}: {us['shared']:6.1f} ({us['shared'] / us['today']:.2f}x)"
    return (
        f"{inputs}x{outputs} r{rows:<2}  today {us['today']:6.1f}  row {us['row']:6.1f} "
        f"({us['row'] / us['today']:.2f}x){sharing if len(layers) > 1 else ' ' * len(sharing)}"
        f"  {quality}"
    )


def mates_change(layer: torch.nn.Module, inputs: int) -> float:
    batch = torch.randn(16, inputs)
    other = batch.clone()
    other[1:] = torch.randn(15, inputs) * 8
    with torch.inference_mode():
        return float((layer(batch)[0] - layer(other)[0]).abs().max())


def error(layer: torch.nn.Module, exact: torch.nn.Linear, hidden: torch.Tensor) -> float:
    with torch.inference_mode():
        expected = hidden.double() @ exact.weight.double().T
        return float((layer(hidden).double() - expected).norm() / expected.norm())


def bench_kernels(args: argparse.Namespace) -> None:
    print("kernels, µs per call (today/row for Δmates and err):", flush=True)
    for inputs, outputs in SHAPES:
        for rows in ROWS:
            print("  " + kernel_row(inputs, outputs, rows, args.rounds), flush=True)


# --- the whole model ----------------------------------------------------------------------------
def ensure_base(workdir: Path) -> Path:
    """The flan-t5-base-shaped random model bench_engine.py uses (built once, then reused)."""
    from engine.tiny_model import FLAN_T5_BASE, build_t5, build_tokenizer

    base = workdir / "base"
    if not (base / "model.safetensors").is_file():
        count = build_t5(base, FLAN_T5_BASE, build_tokenizer(seed=0, vocab_size=1000), seed=0)
        print(f"built {base}: {count:,} parameters", flush=True)
    return base


def load_fp32(base: Path) -> Any:
    from transformers import AutoModelForSeq2SeqLM, logging

    logging.set_verbosity_error()  # the tied-weights notice, once per load
    return AutoModelForSeq2SeqLM.from_pretrained(base, dtype=torch.float32).eval()


def swap_linears(network: torch.nn.Module, make: Callable[[torch.nn.Linear], Any]) -> Any:
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(parent, name, make(child))
    return network


def model_calls(network: Any, rows: tuple[int, ...], kernel: Any = None) -> dict[str, Timed]:
    """The encoder over 16 prompts of 64 tokens, and one T5DecoderStep (the engine's) at
    column 8 of a batch of `rows`, its clock set back before each call (same work each time);
    kernel: the attention kernel over half-precision caches (engine/attention.py), or torch."""
    from engine.t5_decoder import T5DecoderStep

    prompts = torch.randint(2, 1000, (16, 64))
    encoded = network.encoder(input_ids=prompts).last_hidden_state
    mask = torch.ones(prompts.shape, dtype=torch.long)

    def step(count: int) -> Timed:
        decoder = T5DecoderStep(network, encoded[:count], mask[:count], 16, kernel)
        tokens = torch.zeros((count, 1), dtype=torch.long)
        for _ in range(8):
            decoder(tokens)

        def call() -> object:
            decoder.length = 8
            return decoder(tokens)

        return call

    calls = {"encoder 16x64": lambda: network.encoder(input_ids=prompts)}
    return calls | {f"decoder step r{count}": step(count) for count in rows}


def bench_model(args: argparse.Namespace) -> None:
    from engine.loading import FUSED_T5
    from engine.rowint8 import quantize_rows

    base = ensure_base(args.workdir)
    from engine import attention

    networks = {
        "today": swap_linears(load_fp32(base), TodayLinear),
        "row": quantize_rows(load_fp32(base)),
        "fused": quantize_rows(load_fp32(base), FUSED_T5),
    }
    # "now": the fused network with the step's attention kernel, as torch-int8 decodes today
    # (the encoder is the same as fused's); torch's attention where the kernel cannot run.
    kernel = attention.load()
    print(
        "model (flan-t5-base shape), ms per call (ratios to today, torch-int8 before issue 14;"
        f" now = fused + attention kernel: {'on' if kernel else 'unavailable'}):",
        flush=True,
    )
    with torch.inference_mode():
        calls = {name: model_calls(network, ROWS) for name, network in networks.items()}
        calls["now"] = model_calls(networks["fused"], ROWS, kernel)
        for case in calls["today"]:
            us = best_us({name: of[case] for name, of in calls.items()}, args.rounds, repeat=3)
            ratios = "  ".join(
                f"{name} {us[name] / 1e3:7.2f} ({us[name] / us['today']:.2f}x)"
                for name in ("row", "fused", "now")
            )
            print(f"  {case:16} today {us['today'] / 1e3:7.2f}  {ratios}", flush=True)


# --- memory -------------------------------------------------------------------------------------
def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_child(variant: str, workdir: Path) -> None:
    """Load the model one way in this fresh process and print what it holds."""
    import transformers.models.t5.modeling_t5  # noqa: F401 (counted in `bare`)

    from engine.loading import cache_token_bytes, held_bytes, load_model

    base = ensure_base(workdir)
    bare = resident_bytes()  # the interpreter, torch and transformers, before any model
    if variant == "now":
        loaded = load_model(str(base), quantization="torch-int8")
        network, per_token = loaded.model, loaded.cache_token_bytes
    else:  # torch-int8 before: quantize_dynamic in place, the fp32 file still mapped
        network = swap_linears(load_fp32(base), TodayLinear)
        per_token = cache_token_bytes(network, half=False)  # fp32 caches then
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    print(f"{variant} {resident_bytes()} {held_bytes(network)} {bare} {per_token}", flush=True)


def bench_memory(args: argparse.Namespace) -> None:
    mib = 2**20
    print("memory after loading torch-int8 (flan-t5-base shape), MiB:", flush=True)
    ensure_base(args.workdir)
    for variant in ("before", "now"):
        command = [sys.executable, __file__, "--memory-child", variant, "--workdir"]
        out = subprocess.run([*command, str(args.workdir)], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"the {variant} child failed:\n{out.stderr[-2000:]}")
        name, *figures = out.stdout.split()[-5:]
        rss, held, bare, per_token = (int(figure) for figure in figures)
        print(
            f"  {name:6}  resident {rss / mib:5.0f} ({rss / held:.2f}x the model)  "
            f"model's own bytes {held / mib:4.0f}  python, torch and transformers before "
            f"loading {bare / mib:4.0f}  loading added {(rss - bare) / mib:5.0f} "
            f"({(rss - bare) / held:.2f}x the model)  caches {per_token / 1024:.0f} KiB a "
            "token (a prompt token's cross-attention keys and values, as a generated "
            "token's self-attention ones)",
            flush=True,
        )


def main() -> None:
    args = parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.workdir)
        return
    torch.set_num_threads(args.threads or torch.get_num_threads())
    print(f"cpu: {cpu_line()}; {torch.get_num_threads()} thread(s)", flush=True)
    parts = args.parts.split(",")
    for part, run in (("kernels", bench_kernels), ("model", bench_model), ("memory", bench_memory)):
        if part in parts:
            run(args)


if __name__ == "__main__":
    main()
