"""Per-row LoRA adapters (engine/lora.py) against the single merged adapter, torch-int8.

The flan-t5-base-shaped random model (built once under --workdir, shared with bench_engine.py)
and --adapters random LoRA adapters per rank (8 and 16) of q, k, v, o, wi_0, wi_1, wo, built
once too. Two engines in this process: `merged` (INFERENCE_ADAPTER merged into the base, no
registry: today's path) and `per-row` (the same adapter as the default plus the registry: the
base without it, every row's adapter applied per row). Rounds interleave the engines (the
machine is shared): 16 concurrent greedy requests (64-token prompts, --tokens new tokens each)
on the merged engine, then on the per-row engine with 1, 4 and 16 distinct adapters of each
rank; tokens/s per run, the best of the rounds counts, and the ratio per-row / merged. Then an
adapter's load time (engine.lora.load_adapter, the median of 5) and its memory: its tensors'
bytes and the resident-memory (VmRSS) growth of this process per adapter loaded. Each per-row
run follows a merged run (the pair sees the same load): the median of the pairs' ratios is
printed beside the best-of ratio. --torch-side adds a third engine whose side path stays in
torch (INFERENCE_ADAPTER_KERNEL=off: fp32 tables, bmm), run in the same pairs, against the C
kernel (engine/lowrank.py) the per-row engine runs where it can be built.

    .venv/bin/python loadtest/bench_adapters.py [--rounds 3] [--tokens 64] [--ranks 8,16]
        [--distinct 1,4,16] [--threads 1] [--torch-side]   # about 5 minutes with the defaults
    .venv/bin/python loadtest/bench_adapters.py --rounds 1 --tokens 16    # under a minute
"""

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import lowrank  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from engine.generation import GenerationRequest  # noqa: E402
from engine.runtime import Engine  # noqa: E402

CONCURRENT = 16
PROMPT_TOKENS = 64


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best counts")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--ranks", default="8,16")
    parser.add_argument("--distinct", default="1,4,16", help="distinct adapters among the 16")
    parser.add_argument("--adapters", type=int, default=16, help="adapters built per rank")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: all cores)")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument(
        "--torch-side",
        action="store_true",
        help="also run a per-row engine whose side path stays in torch (no kernel), "
        "in the same pairs",
    )
    return parser.parse_args()


def uptime() -> str:
    command = ["uptime"]  # a fixed command, no input
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()  # noqa: S603, S607


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "?"


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def ensure_adapters(
    workdir: Path, ranks: list[int], count: int
) -> tuple[Path, dict[int, list[Path]]]:
    """The base (bench_engine.py's) and `count` adapters per rank, written once."""
    from loadtest.bench_engine import ensure_model

    base, _ = ensure_model(workdir)
    folders: dict[int, list[Path]] = {}
    for rank in ranks:
        folders[rank] = []
        for number in range(1, count + 1):
            folder = workdir / "adapters" / f"r{rank}-{number}"
            if not (folder / "adapter_model.safetensors").is_file():
                write_adapter(base, folder, rank, seed=100 * rank + number)
            folders[rank].append(folder)
    return base, folders


def write_adapter(base: Path, folder: Path, rank: int, seed: int) -> None:
    """A peft LoRA folder of every q, k, v, o, wi_0, wi_1, wo, written directly (peft's file
    layout, without loading the base: 32 adapters in seconds); random A and B whose update is
    about 5% of a weight's size, as a trained adapter's."""
    import json

    import torch
    from safetensors.torch import save_file

    from engine.tiny_model import ALL_T5_LINEARS

    config = json.loads((base / "config.json").read_text())
    d_model, d_ff, inner = config["d_model"], config["d_ff"], config["num_heads"] * config["d_kv"]
    shapes = {"q": (d_model, inner), "k": (d_model, inner), "v": (d_model, inner)}
    shapes |= {"o": (inner, d_model), "wi_0": (d_model, d_ff), "wi_1": (d_model, d_ff)}
    shapes["wo"] = (d_ff, d_model)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    layers: dict[str, tuple[tuple[str, str], ...]] = {
        "encoder": (("0", "SelfAttention"), ("1", "DenseReluDense"))
    }
    layers["decoder"] = (("0", "SelfAttention"), ("1", "EncDecAttention"), ("2", "DenseReluDense"))
    for stack, parts in layers.items():
        for block in range(config["num_layers"]):
            for layer, module in parts:
                names = ("wi_0", "wi_1", "wo") if module == "DenseReluDense" else "qkvo"
                for name in names:
                    fan_in, fan_out = shapes[name]
                    prefix = f"base_model.model.{stack}.block.{block}.layer.{layer}.{module}.{name}"
                    a = torch.randn((rank, fan_in), generator=generator) / fan_in**0.5
                    b = torch.randn((fan_out, rank), generator=generator) * 0.05 / rank**0.5
                    tensors[f"{prefix}.lora_A.weight"] = a
                    tensors[f"{prefix}.lora_B.weight"] = b / 2  # lora_alpha / r = 2
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "SEQ_2_SEQ_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": list(ALL_T5_LINEARS),
        "base_model_name_or_path": str(base),
    }
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    print(f"wrote {folder}", flush=True)


def prompts(base: Path) -> list[str]:
    from loadtest.bench_engine import make_prompts

    return make_prompts(base, CONCURRENT)


def start(base: Path, args: argparse.Namespace, **options: Any) -> Engine:
    config = EngineConfig(
        model=str(base),
        quantization="torch-int8",
        device="cpu",
        max_batch=CONCURRENT,
        threads=args.threads,
        allow_download=False,
        **options,
    )
    engine = Engine(config)
    engine.start()
    if not engine.wait_ready(900):
        raise SystemExit(f"engine: {engine.status()['detail']}")
    return engine


async def run(engine: Engine, texts: list[str], names: list[str], tokens: int) -> float:
    """16 concurrent greedy requests; aggregate generated tokens/s."""

    async def one(prompt: str, name: str) -> int:
        request = GenerationRequest(
            prompt, max_tokens=tokens, temperature=0.0, ignore_eos=True, adapter=name
        )
        return (await (await engine.submit(request)).complete()).completion_tokens

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(p, n) for p, n in zip(texts, names, strict=True)))
    return sum(counts) / (time.perf_counter() - started)


def throughput(args: argparse.Namespace, base: Path, folders: dict[int, list[Path]]) -> None:
    ranks, distinct = sorted(folders), [int(d) for d in args.distinct.split(",")]
    default = folders[ranks[0]][0]
    texts = prompts(base)
    merged = start(base, args, adapter=str(default))
    registry = {f"r{r}-{i}": str(f) for r in ranks for i, f in enumerate(folders[r], 1)}
    per_row = start(base, args, adapter=str(default), max_adapters=len(registry))
    per_row.set_adapters(registry)
    engines = {"": per_row}
    loop = asyncio.new_event_loop()
    # Warm both (and load every adapter into the per-row engine's bank).
    loop.run_until_complete(run(merged, texts, [""] * CONCURRENT, 4))
    for rank in ranks:
        names = [f"r{rank}-{i % args.adapters + 1}" for i in range(CONCURRENT)]
        loop.run_until_complete(run(per_row, texts, names, 4))
    if args.torch_side:  # started once the per-row engine's base has loaded with the kernel
        engines[" (torch)"] = start_torch_side(base, args, default, registry)
        for rank in ranks:
            names = [f"r{rank}-{i % args.adapters + 1}" for i in range(CONCURRENT)]
            loop.run_until_complete(run(engines[" (torch)"], texts, names, 4))
    results: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    for number in range(args.rounds):
        print(f"round {number + 1}: {uptime()}", flush=True)
        for rank in ranks:
            for count in distinct:
                # Each per-row run right after a merged one: a pair sees the same load.
                names = [f"r{rank}-{i % count + 1}" for i in range(CONCURRENT)]
                for suffix, engine in engines.items():
                    label = f"rank {rank}, {count} distinct{suffix}"
                    before = loop.run_until_complete(
                        run(merged, texts, [""] * CONCURRENT, args.tokens)
                    )
                    figure = loop.run_until_complete(run(engine, texts, names, args.tokens))
                    results.setdefault("merged", []).append(before)
                    results.setdefault(label, []).append(figure)
                    ratios.setdefault(label, []).append(figure / before)
    merged.stop(30)
    for engine in engines.values():
        engine.stop(30)
    loop.close()
    best_merged = max(results["merged"])
    print(
        f"\n16 concurrent, {args.tokens} new tokens, {args.rounds} rounds: best tokens/s, "
        "best / best merged, median of the per-pair ratios"
    )
    for label, figures in results.items():
        best = max(figures)
        pairs = ratios.get(label)
        paired = f"  pairs x{statistics.median(pairs):.2f}" if pairs else ""
        runs = ", ".join(f"{f:.0f}" for f in figures)
        print(f"  {label:30} {best:6.1f}  x{best / best_merged:.2f}{paired}   (runs: {runs})")


def start_torch_side(
    base: Path, args: argparse.Namespace, default: Path, registry: dict[str, str]
) -> Engine:
    """A per-row engine without the side path's kernel (INFERENCE_ADAPTER_KERNEL=off while it
    loads; a model process reads it when it starts)."""
    previous = os.environ.get("INFERENCE_ADAPTER_KERNEL")
    os.environ["INFERENCE_ADAPTER_KERNEL"] = "off"
    try:
        engine = start(base, args, adapter=str(default), max_adapters=len(registry))
        engine.set_adapters(registry)
        loop = asyncio.new_event_loop()  # the per-row base loads on the first adapter request
        loop.run_until_complete(run(engine, prompts(base)[:1], [next(iter(registry))], 1))
        loop.close()
    finally:
        if previous is None:
            del os.environ["INFERENCE_ADAPTER_KERNEL"]
        else:
            os.environ["INFERENCE_ADAPTER_KERNEL"] = previous
    return engine


def load_and_memory(folders: dict[int, list[Path]]) -> None:
    from engine.loading import load_model
    from engine.lora import Adapter, load_adapter

    base = folders[sorted(folders)[0]][0].parents[1] / "base"
    model = load_model(str(base), quantization="torch-int8", device="cpu", per_row=True)
    assert model.lora is not None
    print("\nadapter load and memory (torch-int8 per-row base)")
    for rank, paths in sorted(folders.items()):
        seconds = []
        for _ in range(5):
            started = time.perf_counter()
            load_adapter("bench", str(paths[0]), model.lora, 64)
            seconds.append(time.perf_counter() - started)
        gc.collect()
        before = rss_bytes()
        held: list[Adapter] = [load_adapter(p.name, str(p), model.lora, 64) for p in paths]
        grown = (rss_bytes() - before) / len(held)
        size = held[0].nbytes
        print(
            f"  rank {rank:2}: load {statistics.median(seconds) * 1000:.0f} ms (median of 5); "
            f"{size / 2**20:.1f} MiB tensors, RSS +{grown / 2**20:.1f} MiB per adapter "
            f"({len(held)} held)"
        )
        del held
        gc.collect()


def main() -> None:
    args = parse_args()
    print(f"CPU: {cpu_model()}; threads {args.threads}; {uptime()}", flush=True)
    kernel = lowrank.load()
    side = f"the C kernel ({kernel.target})" if kernel else "torch (no kernel)"
    print(f"per-row side path: {side}", flush=True)
    ranks = [int(r) for r in args.ranks.split(",")]
    base, folders = ensure_adapters(args.workdir, ranks, args.adapters)
    throughput(args, base, folders)
    load_and_memory(folders)


if __name__ == "__main__":
    main()
