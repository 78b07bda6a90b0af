"""Peft-shaped LoRA folders written by hand (no torch): a real safetensors file of zeros with the
keys and shapes peft writes for a T5, and the base config.json they are checked against."""

import json
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# The shape of engine/tiny_model.py's T5 (make_tiny_model): what the tests' adapters fit.
TINY_BASE: dict[str, Any] = {
    "model_type": "t5",
    "d_model": 64,
    "d_kv": 16,
    "num_heads": 4,
    "d_ff": 128,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "feed_forward_proj": "gated-gelu",
}
ALL_LINEARS = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
# Where each Linear sits in a T5 block: (layer index, sub-module) per stack.
_PLACES = {
    "encoder": {"attn": ["0.SelfAttention"], "ff": "1.DenseReluDense"},
    "decoder": {"attn": ["0.SelfAttention", "1.EncDecAttention"], "ff": "2.DenseReluDense"},
}


def write_base(folder: Path, **changes: Any) -> Path:
    """A model folder holding only config.json (the tiny T5's, with `changes`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**TINY_BASE, **changes}))
    return folder


def _sizes(base: dict[str, Any]) -> dict[str, tuple[int, int]]:
    d, inner, ff = base["d_model"], base["num_heads"] * base["d_kv"], base["d_ff"]
    return {
        **{m: (d, inner) for m in "qkv"},
        "o": (inner, d),
        **{m: (d, ff) for m in ("wi", "wi_0", "wi_1")},
        "wo": (ff, d),
    }


def lora_shapes(
    rank: int, targets: Iterable[str], base: dict[str, Any] = TINY_BASE
) -> dict[str, list[int]]:
    """peft's tensor names and shapes for a LoRA of `targets` on `base`."""
    shapes, sizes = {}, _sizes(base)
    for stack, places in _PLACES.items():
        for block in range(base["num_layers"]):
            for target in targets:
                parents = [places["ff"]] if target.startswith("w") else places["attn"]
                for parent in parents:
                    stem = f"base_model.model.{stack}.block.{block}.layer.{parent}.{target}"
                    fan_in, fan_out = sizes[target]
                    shapes[f"{stem}.lora_A.weight"] = [rank, fan_in]
                    shapes[f"{stem}.lora_B.weight"] = [fan_out, rank]
    return shapes


def write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    """A valid safetensors file of float32 zeros with these tensors."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = 4 * shape[0] * shape[1]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def write_adapter(
    folder: Path,
    *,
    rank: int = 4,
    targets: Iterable[str] = ("q", "v"),
    base: dict[str, Any] = TINY_BASE,
    shapes: dict[str, list[int]] | None = None,
    **config: Any,
) -> Path:
    """A peft LoRA folder (adapter_config.json and adapter_model.safetensors); `config` changes
    the adapter_config.json, `shapes` replaces the tensors."""
    targets = list(targets)
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "peft_type": "LORA",
        "task_type": "SEQ_2_SEQ_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": targets,
        "bias": "none",
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": None,
        **config,
    }
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    tensors = shapes if shapes is not None else lora_shapes(rank, targets, {**TINY_BASE, **base})
    write_safetensors(folder / "adapter_model.safetensors", tensors)
    return folder
