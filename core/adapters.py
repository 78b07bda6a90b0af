"""Checks a peft LoRA folder against the served base model without torch: the files, the LoRA
settings and every tensor's shape (read from the safetensors header, not loaded), so that an
adapter that would not fit never reaches the model process.

Plain Python: the base model's config.json and the limits are passed in, or read from Django's
settings (INFERENCE_MODEL, INFERENCE_MAX_ADAPTER_RANK) when left out."""

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
# A safetensors header longer than this is not one peft wrote for a T5 (flan-t5-xxl: ~100 kB).
MAX_HEADER_BYTES = 16 * 1024 * 1024
# peft's key of one LoRA matrix of a T5 Linear, e.g.
# base_model.model.decoder.block.0.layer.1.EncDecAttention.k.lora_A.weight
LORA_KEY = re.compile(
    r"^base_model\.model\.(?P<stack>encoder|decoder)\.block\.(?P<block>\d+)\.layer\.\d+\."
    r"(?:\w+\.)?(?P<module>\w+)\.lora_(?P<half>[AB])\.weight$"
)


class AdapterInvalid(ValueError):
    """A folder that is not a LoRA adapter this node can serve; the message says why."""


@dataclass(frozen=True)
class AdapterInfo:
    """What registering an adapter records of its folder."""

    rank: int
    target_modules: tuple[str, ...]


@dataclass(frozen=True)
class BaseShape:
    """The sizes of the served T5 that an adapter's matrices must match."""

    d_model: int
    inner: int  # num_heads x d_kv: the width of q, k, v (and o's input)
    d_ff: int
    gated: bool
    encoder_blocks: int
    decoder_blocks: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "BaseShape":
        if config.get("model_type") != "t5":
            raise AdapterInvalid(
                f"the served base is a {config.get('model_type')!r} model; adapters need a T5"
            )
        layers = int(config["num_layers"])
        return cls(
            d_model=int(config["d_model"]),
            inner=int(config["num_heads"]) * int(config["d_kv"]),
            d_ff=int(config["d_ff"]),
            gated=str(config.get("feed_forward_proj", "relu")).startswith("gated-"),
            encoder_blocks=layers,
            decoder_blocks=int(config.get("num_decoder_layers") or layers),
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """Every Linear of a block LoRA may adapt: name -> (in features, out features)."""
        feed = {"wi_0": self.d_ff, "wi_1": self.d_ff} if self.gated else {"wi": self.d_ff}
        return {
            **{name: (self.d_model, self.inner) for name in ("q", "k", "v")},
            "o": (self.inner, self.d_model),
            **{name: (self.d_model, out) for name, out in feed.items()},
            "wo": (self.d_ff, self.d_model),
        }


def check_adapter_folder(
    path: str | Path, *, base_config: dict[str, Any] | None = None, max_rank: int | None = None
) -> AdapterInfo:
    """The rank and target modules of the LoRA folder at `path`, if the served base can take
    it; AdapterInvalid with the reason otherwise."""
    if base_config is None:
        base_config = served_base_config()
    if max_rank is None:
        from django.conf import settings

        max_rank = int(settings.INFERENCE_MAX_ADAPTER_RANK)
    folder = Path(path)
    if not folder.is_absolute():
        raise AdapterInvalid(f"the adapter folder must be an absolute path, not {str(path)!r}")
    if not folder.is_dir():
        raise AdapterInvalid(f"the adapter folder {str(folder)!r} does not exist")
    shape = BaseShape.from_config(base_config)
    info = _check_config(_read_json(folder / CONFIG), shape, max_rank)
    _check_weights(folder / WEIGHTS, info, shape)
    return info


def served_base_config() -> dict[str, Any]:
    """INFERENCE_MODEL's config.json: from its folder, or from the Hugging Face cache."""
    from django.conf import settings

    model = str(settings.INFERENCE_MODEL)
    folder = Path(model).expanduser()
    if folder.is_dir() or model.startswith(("/", ".", "~")):
        return _read_json(folder / "config.json", what="the served model's config.json")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json")
    if not isinstance(cached, str):
        raise AdapterInvalid(
            f"the served model {model!r} is not on this machine yet (no config.json in the "
            "Hugging Face cache): start the node once so it loads, then register adapters"
        )
    return _read_json(Path(cached), what="the served model's config.json")


def _read_json(path: Path, what: str = CONFIG) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterInvalid(f"{what} is missing ({path.parent}/ has no {path.name})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterInvalid(f"{what} cannot be read: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise AdapterInvalid(f"{what} is not a JSON object")
    return data


def _check_config(config: dict[str, Any], shape: BaseShape, max_rank: int) -> AdapterInfo:
    if config.get("peft_type") != "LORA":
        raise AdapterInvalid(f"peft_type is {config.get('peft_type')!r}; only LORA is served")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterInvalid(f"the rank r must be a positive integer, not {rank!r}")
    if rank > max_rank:
        raise AdapterInvalid(f"rank {rank} is above this node's maximum ({max_rank})")
    # What the per-row LoRA of the engine does not apply: refused rather than served wrong.
    for field, plain in (
        ("use_dora", False),
        ("bias", "none"),
        ("rank_pattern", {}),
        ("alpha_pattern", {}),
        ("modules_to_save", None),
        ("layers_to_transform", None),
        ("layer_replication", None),
    ):
        if config.get(field) not in (plain, None, [], {}):
            raise AdapterInvalid(f"{field}={config[field]!r} is not supported (LoRA only)")
    return AdapterInfo(rank=rank, target_modules=_targets(config.get("target_modules"), shape))


def _targets(targets: object, shape: BaseShape) -> tuple[str, ...]:
    allowed = shape.linears()
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise AdapterInvalid(
            "target_modules must be a list of module names (a pattern is not supported); "
            f"this base has {', '.join(allowed)}"
        )
    unknown = sorted(set(targets) - set(allowed))
    if unknown:
        raise AdapterInvalid(
            f"target module(s) {', '.join(unknown)} are not Linears of the served T5 "
            f"({', '.join(allowed)})"
        )
    return tuple(name for name in allowed if name in targets)


def _check_weights(path: Path, info: AdapterInfo, shape: BaseShape) -> None:
    header = _safetensors_header(path)
    linears, seen = shape.linears(), set()
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        match = LORA_KEY.match(key)
        if not match or match["module"] not in info.target_modules:
            raise AdapterInvalid(f"{WEIGHTS} holds {key!r}, which is not LoRA of a target module")
        blocks = shape.encoder_blocks if match["stack"] == "encoder" else shape.decoder_blocks
        if int(match["block"]) >= blocks:
            raise AdapterInvalid(f"{key!r} is past the served base's {blocks} blocks")
        fan_in, fan_out = linears[match["module"]]
        want = [info.rank, fan_in] if match["half"] == "A" else [fan_out, info.rank]
        got = entry.get("shape") if isinstance(entry, dict) else None
        if got != want:
            raise AdapterInvalid(f"{key!r} has shape {got}, the served base needs {want}")
        seen.add(match["module"])
    missing = sorted(set(info.target_modules) - seen)
    if missing:
        raise AdapterInvalid(f"{WEIGHTS} has no weights for target module(s) {', '.join(missing)}")


def _safetensors_header(path: Path) -> dict[str, Any]:
    # Only safetensors: a pickled adapter_model.bin would run code when loaded.
    if not path.is_file():
        bin_only = (path.parent / "adapter_model.bin").is_file()
        hint = " (only adapter_model.bin: save it with safe_serialization=True)" if bin_only else ""
        raise AdapterInvalid(f"the weights file {WEIGHTS} is missing{hint}")
    try:
        with path.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            if length > MAX_HEADER_BYTES:
                raise AdapterInvalid(f"{WEIGHTS} is not a safetensors file (header too long)")
            header = json.loads(file.read(length))
    except (OSError, struct.error, UnicodeDecodeError, json.JSONDecodeError):
        raise AdapterInvalid(f"{WEIGHTS} is not a readable safetensors file") from None
    if not isinstance(header, dict) or len(header) <= int("__metadata__" in header):
        raise AdapterInvalid(f"{WEIGHTS} holds no tensors")
    return header
