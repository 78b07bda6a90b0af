"""Loading: find the model offline, merge the LoRA adapter in full precision, then quantize.

No Django imports. Everything here runs on the engine's model thread.
"""

import contextlib
import ctypes
import gc
import logging
import math
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine import attention, native, qgemm, rowint8, rowops
from engine.attention import Kernel
from engine.detokenize import byte_piece_ids, special_ids
from engine.generation import ModelLoadError
from engine.lora import Lora, attach, merge_plain
from engine.model import ServedModel

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("auto", "bnb-int8", "torch-int8", "bf16", "none")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_MAX_INPUT_TOKENS = 512  # flan-t5 was trained on 512-token inputs
_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt"]
# transformers builds models under process-wide patches (the meta device while loading): two
# threads loading at once (the model thread and the adapter host's base loader) break each
# other, so loads in one process take turns.
LOAD_LOCK = threading.Lock()


@dataclass(kw_only=True)
class LoadedModel(ServedModel):
    """A model ready for decoding and the facts the scheduler needs about it."""

    model: Any  # transformers T5ForConditionalGeneration (possibly quantized)
    device: torch.device
    device_type: str = ""  # always device.type (__post_init__): what the status reports
    byte_ids: frozenset[int] = frozenset()  # byte-fallback pieces, held back while streaming
    special_ids: frozenset[int] = frozenset()  # skipped when decoding
    # The per-row adapters' side path (engine/lora.py), on a base loaded without any adapter
    # merged; None: the merged fast path.
    lora: Lora | None = None
    # A decoder step's attention kernel over half-precision caches (engine/attention.py), for
    # an 8-bit model on the CPU; None: torch over the model's own dtype.
    attention: Kernel | None = None

    def __post_init__(self) -> None:
        self.device_type = self.device.type


def quiet_libraries() -> None:
    """Silence bitsandbytes' per-matmul warning (one line per 8-bit matmul) and import noise."""
    # Set before bitsandbytes is first imported (peft and transformers import it indirectly).
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)


def resolve_device(device: str) -> torch.device:
    """auto → cuda when available, else cpu; an explicit cuda without a GPU is an error."""
    if device not in DEVICES:
        raise ModelLoadError(f"device must be one of {', '.join(DEVICES)}; got {device!r}.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for but torch sees no CUDA GPU.")
    return torch.device(device)


def resolve_quantization(quantization: str, device: torch.device) -> str:
    """auto → bnb-int8 on CUDA, torch-int8 on CPU (about 3x fp32 there, see docs/engine.md)."""
    if quantization not in QUANTIZATIONS:
        raise ModelLoadError(
            f"quantization must be one of {', '.join(QUANTIZATIONS)}; got {quantization!r}."
        )
    if quantization == "auto":
        return "bnb-int8" if device.type == "cuda" else "torch-int8"
    if quantization == "torch-int8" and device.type != "cpu":
        raise ModelLoadError(
            "torch-int8 (row-scaled int8) runs on the CPU only; use bnb-int8 or bf16."
        )
    if quantization == "torch-int8" and not rowint8.supported():
        raise ModelLoadError("torch-int8 needs fbgemm (an x86 CPU); use bf16 or none.")
    return quantization


def configure_threads(threads: int) -> int:
    """Set torch's intra-op threads for the calling (model) thread; 0 means one per core."""
    count = threads if threads > 0 else len(os.sched_getaffinity(0))
    # Called on the model thread itself: OpenMP thread counts are per calling thread.
    torch.set_num_threads(count)
    # The one model thread runs one op at a time; inter-op pools would only add contention.
    with contextlib.suppress(RuntimeError):  # can only be set before the first parallel op
        torch.set_num_interop_threads(1)
    return count


def locate_model(model: str, *, allow_download: bool) -> Path:
    """A local folder with the model: the folder itself, or a hub id's snapshot in the cache."""
    path = Path(model).expanduser()
    if path.is_dir() or model.startswith(("/", ".", "~")) or model.count("/") > 1:
        return _check_folder(path, what="model", marker="config.json")
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(model, allow_patterns=_HUB_FILES, local_files_only=True))
    except Exception as cached_exc:
        if not allow_download or constants.HF_HUB_OFFLINE:
            off = " Downloads are off (HF_HUB_OFFLINE is set)." if allow_download else ""
            raise ModelLoadError(_not_cached(model, cached_exc) + off) from cached_exc
    try:
        return Path(snapshot_download(model, allow_patterns=_HUB_FILES))
    except Exception as exc:
        raise ModelLoadError(
            f"{_not_cached(model, exc)} Downloading it failed too ({type(exc).__name__})."
        ) from exc


def _not_cached(model: str, exc: Exception) -> str:
    from huggingface_hub import constants

    return (
        f"Model {model!r} is not a folder on this machine and is not in the Hugging Face "
        f"cache ({constants.HF_HUB_CACHE}): {type(exc).__name__}."
    )


def _check_folder(path: Path, *, what: str, marker: str) -> Path:
    if not path.is_dir():
        raise ModelLoadError(f"The {what} folder {str(path)!r} does not exist.")
    if not (path / marker).is_file():
        raise ModelLoadError(f"The {what} folder {str(path)!r} has no {marker}.")
    return path


@contextlib.contextmanager
def _known_warnings() -> Iterator[None]:
    # Deprecation notices from torch.ao/peft/transformers that say nothing about this model.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        warnings.filterwarnings("ignore", message=".*embeddings are no longer tied.*")
        yield


def load_model(
    model: str,
    *,
    adapter: str = "",
    quantization: str = "auto",
    device: str = "auto",
    max_input_tokens: int = 0,
    allow_download: bool = True,
    per_row: bool = False,
) -> LoadedModel:
    """Load tokenizer and model, merge the adapter (fp32), quantize, move to the device.
    per_row: the base without the adapter, with the per-row side path (engine/lora.py)."""
    started = time.perf_counter()
    quiet_libraries()
    target = resolve_device(device)
    scheme = resolve_quantization(quantization, target)
    folder = locate_model(model, allow_download=allow_download)
    adapter_folder = (
        _check_folder(Path(adapter).expanduser(), what="adapter", marker="adapter_config.json")
        if adapter
        else None
    )
    if per_row:
        adapter_folder = None  # applied per row instead (AdapterHost loads it)
    from transformers import AutoTokenizer

    with LOAD_LOCK:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        with _known_warnings():
            network = _build(folder, adapter_folder, scheme, target)
    _tune(network, target)
    loaded = _describe(network.eval(), tokenizer, target, scheme)
    eight_bit_cpu = scheme in ("torch-int8", "bnb-int8") and target.type == "cpu"
    if eight_bit_cpu:
        loaded.attention = attention.load()
        _native_norms(network, rowops.load())
    if per_row:
        loaded.lora = attach(network, compact=eight_bit_cpu)
    loaded.max_input_tokens = max_input_tokens or loaded.max_input_tokens
    loaded.model_bytes = held_bytes(network)
    loaded.cache_token_bytes = cache_token_bytes(network, half=loaded.attention is not None)
    loaded.load_seconds = time.perf_counter() - started
    return loaded


def _describe(network: Any, tokenizer: Any, device: torch.device, scheme: str) -> LoadedModel:
    config = network.config
    return LoadedModel(
        model=network,
        tokenizer=tokenizer,
        device=device,
        quantization=scheme,
        decoder_start_id=int(config.decoder_start_token_id),
        eos_id=int(config.eos_token_id),
        pad_id=int(config.pad_token_id),
        max_input_tokens=_tokenizer_limit(tokenizer),
        load_seconds=0.0,
        byte_ids=byte_piece_ids(tokenizer.get_vocab()),
        special_ids=special_ids(tokenizer.backend_tokenizer),
    )


def _tune(network: Any, device: torch.device) -> None:
    """Same functions, faster kernels (about +15% tokens/s on the CPU, docs/benchmarks.md)."""
    if device.type == "cpu":
        # Transformers' encoder takes its slow SDPA route with T5's float position-bias mask.
        network.set_attn_implementation("eager")
    for parent in list(network.modules()):
        for name, child in parent.named_children():
            faster = _faster(child)
            if faster is not None:
                setattr(parent, name, faster)
    if device.type == "cpu":
        _encoder_gelu(network)


def _faster(module: torch.nn.Module) -> torch.nn.Module | None:
    # Imported here, as the loaders import transformers: importing this module stays cheap.
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    if type(module).__name__ == "NewGELUActivation":
        # The tanh approximation T5 v1.1 uses, as one fused op instead of five.
        return torch.nn.GELU(approximate="tanh")
    if isinstance(module, T5LayerNorm) and module.weight.dtype == torch.float32:
        return FusedRMSNorm(module.weight, module.variance_epsilon)
    return None


def feed_forwards(stack: Any) -> list[torch.nn.Module]:
    """Each block's feed-forward module (T5's DenseReluDense, its activation `act`) of an
    encoder or decoder stack."""
    return [block.layer[-1].DenseReluDense for block in stack.block]


def _encoder_gelu(network: Any) -> None:
    """The encoder's tanh GELU as PassGELU (the decoder's steps keep torch's one fused op)."""
    for feed_forward in feed_forwards(network.get_encoder()):
        act = getattr(feed_forward, "act", None)
        if isinstance(act, torch.nn.GELU) and act.approximate == "tanh":
            feed_forward.act = PassGELU()


# PassGELU's constants: 2u = GELU_LINEAR x + GELU_CUBIC x^3, u = sqrt(2 / pi) (x + 0.044715 x^3).
GELU_LINEAR = 2.0 * (2.0 / math.pi) ** 0.5
GELU_CUBIC = GELU_LINEAR * 0.044715


class PassGELU(torch.nn.Module):
    """T5 v1.1's tanh GELU, 0.5 x (1 + tanh u), written as x sigmoid(2u) (tanh u = 2 sigmoid(2u)
    - 1: the same function). torch 2.13's fp32 tanh on the CPU made the tanh GELU over an
    encoder layer's 256 x 2048 values take 1.3-1.9 ms here, against 0.5 ms in this form, which
    costs five operations where torch's is one: worth it over a pass's hundreds of token rows,
    not at a decoder step's few (docs/engine.md). Elementwise, so a row's values never depend
    on its batch-mates. Other types and devices: torch's op."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.dtype != torch.float32 or hidden.device.type != "cpu":
            return torch.nn.functional.gelu(hidden, approximate="tanh")
        inner = hidden * hidden
        inner.mul_(GELU_CUBIC).add_(GELU_LINEAR).mul_(hidden)
        return inner.sigmoid_().mul_(hidden)


def _native_norms(network: torch.nn.Module, kernel: rowops.Kernel | None) -> None:
    """The fp32 layer norms through the C kernel (an 8-bit CPU model: engine/rowops.py)."""
    if kernel is None:
        return
    for parent in list(network.modules()):
        for name, child in parent.named_children():
            if isinstance(child, FusedRMSNorm):
                setattr(parent, name, rowops.NativeRMSNorm(child.weight, child.eps, kernel))


class FusedRMSNorm(torch.nn.Module):
    """T5LayerNorm (RMS norm, no bias, no mean) as torch's single fused op (fp32 only)."""

    def __init__(self, weight: torch.nn.Parameter, eps: float) -> None:
        super().__init__()
        self.weight, self.eps = weight, eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.rms_norm(hidden, (hidden.shape[-1],), self.weight, self.eps)


def _tokenizer_limit(tokenizer: Any) -> int:
    limit = getattr(tokenizer, "model_max_length", 0) or 0
    # Tokenizers without a limit report a huge sentinel (int(1e30)).
    return int(limit) if 0 < limit <= 1_000_000 else DEFAULT_MAX_INPUT_TOKENS


def _build(folder: Path, adapter: Path | None, scheme: str, device: torch.device) -> Any:
    if scheme == "bnb-int8":
        return _load_bnb_int8(folder, adapter, device)
    network = _load_full_precision(folder, adapter)
    if scheme == "torch-int8":
        return _quantize_rows_int8(network)
    if scheme == "bf16":
        return network.to(device=device, dtype=torch.bfloat16)
    return network.to(device)


def _load_full_precision(folder: Path, adapter: Path | None) -> Any:
    from transformers import AutoModelForSeq2SeqLM

    network = AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=torch.float32)
    if adapter is None or merge_plain(network, adapter):
        return network
    from peft import PeftModel  # an adapter merge_plain does not take (DoRA, extra weights)

    # Merged in fp32, before any quantization: the served model pays nothing for the adapter
    # and the LoRA delta is rounded once, together with the base weight.
    return PeftModel.from_pretrained(network, adapter).merge_and_unload()


def _quantize_rows_int8(network: Any) -> Any:
    """Every Linear to row-scaled int8 in place, then let go of the checkpoint's file."""
    rowint8.quantize_rows(network, FUSED_T5)
    chosen = encoder_kernel()
    if chosen == "onednn":
        _encoder_to(network, rowint8.OnednnPacked)
    elif chosen == "step" and (kernel := _step_kernel()) is not None:
        _encoder_to(network, lambda packed: rowint8.StepPacked(packed, kernel))
    _step_to_qgemm(network)
    own_memory(network)
    gc.collect()
    # Hand the freed fp32 pages back to the OS.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return network


ENCODER_KERNELS = ("auto", "fbgemm", "onednn", "step")


def encoder_kernel() -> str:
    """Which kernel a torch-int8 model's encoder products run on (INFERENCE_ENCODER_KERNEL):
    `onednn` where oneDNN takes AMX for them (auto: a CPU with AMX's int8 instructions),
    `step` on the step products kernel wherever the decoder's steps take it (auto: the AVX2
    build, and the AVX-512 build's VNNI path; measured faster than fbgemm at the encoder's
    sizes on both), else `fbgemm`, as the decoder's do without the step kernel (docs/engine.md,
    "The encoder's products")."""
    wanted = os.environ.get("INFERENCE_ENCODER_KERNEL", "auto").strip().lower() or "auto"
    if wanted not in ENCODER_KERNELS:
        raise ModelLoadError(
            f"INFERENCE_ENCODER_KERNEL={wanted!r}: expected auto, fbgemm, onednn or step."
        )
    if wanted == "fbgemm":
        return "fbgemm"
    if wanted == "step":
        if _step_kernel() is None:
            raise ModelLoadError(
                "INFERENCE_ENCODER_KERNEL=step: the step products kernel is off "
                "(INFERENCE_STEP_KERNEL) or cannot be built here; use auto or fbgemm."
            )
        return "step"
    usable = rowint8.onednn_supported() and rowops.load() is not None
    if wanted == "onednn":
        if not usable:
            raise ModelLoadError(
                "INFERENCE_ENCODER_KERNEL=onednn: this torch build has no oneDNN int8 ops "
                "or the row kernels cannot be built here; use auto or fbgemm."
            )
        return "onednn"
    if usable and "amx_int8" in native.cpu_flags():
        return "onednn"
    kernel = _step_kernel()
    return "step" if qgemm.wanted(kernel) else "fbgemm"


def _step_kernel() -> qgemm.Kernel | None:
    """The step products kernel, or None where it is off, cannot run, or its setting is not
    one of its own (that error is the step's, raised by _step_to_qgemm)."""
    try:
        return qgemm.load()
    except ValueError:
        return None


def _encoder_to(network: Any, wrap: Callable[[Any], Any]) -> None:
    """The products that read the prompt's positions (the encoder's, and cross-attention's
    keys and values in each decoder block) repacked as wrap(fbgemm's packed weight): for
    oneDNN, or for the step kernel. The decoder's step is _step_to_qgemm's."""
    rowint8.repack(network.get_encoder(), wrap)
    for module in _prompt_side(network):
        rowint8.repack(module, wrap)


def _prompt_side(network: Any) -> list[torch.nn.Module]:
    """Each decoder block's cross-attention keys and values: their fused group, or the two
    Linears where they are not fused (their products read the prompt's positions)."""
    modules: dict[int, torch.nn.Module] = {}
    for block in network.get_decoder().block:
        attention = block.layer[1].EncDecAttention
        for linear in (attention.k, attention.v):
            module = getattr(linear, "group", linear)
            modules[id(module)] = module
    return list(modules.values())


def _step_to_qgemm(network: Any) -> int:
    """The products a decoder step makes (the decoder's, but cross-attention's keys and values,
    which read the prompt's positions once, and the output layer) repacked for the step kernel
    (engine/qgemm.py, INFERENCE_STEP_KERNEL); how many (0: they stay on fbgemm)."""
    try:
        qgemm.mode()
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    kernel = qgemm.load()
    if kernel is None or not qgemm.wanted(kernel):
        return 0

    def wrap(packed: Any) -> rowint8.StepPacked:
        return rowint8.StepPacked(packed, kernel)

    skip = _prompt_side(network)
    return rowint8.repack(network.get_decoder(), wrap, skip) + rowint8.repack(network.lm_head, wrap)


# T5's Linears that read one input, fused into one packed matrix each (about 10% faster, see
# docs/engine.md): cross-attention's q reads the decoder's state, its k and v the encoder's.
FUSED_T5: dict[str, list[tuple[str, ...]]] = {
    "SelfAttention": [("q", "k", "v")],
    "EncDecAttention": [("k", "v")],
    "DenseReluDense": [("wi_0", "wi_1")],
}


def held_bytes(network: torch.nn.Module) -> int:
    """The model's own bytes: every parameter and buffer once (shared ones once), and every
    packed int8 matrix a module holds as `packed` (fbgemm's, oneDNN's or the step kernel's:
    rowint8.packed_bytes)."""
    tensors = {id(tensor): tensor for tensor in [*network.parameters(), *network.buffers()]}
    total = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    held = (getattr(module, "packed", None) for module in network.modules())
    packed = {id(matrix): matrix for matrix in held if matrix is not None}
    return total + sum(rowint8.packed_bytes(matrix) for matrix in packed.values())


def cache_token_bytes(network: Any, *, half: bool) -> int:
    """Bytes one token takes in a row's caches: a key and a value in each decoder layer, for
    a prompt token (cross-attention) as for a generated one (self-attention); half precision
    where the step's attention kernel holds them (`half`), else the model's own dtype."""
    config = network.config
    layers = int(getattr(config, "num_decoder_layers", None) or config.num_layers)
    width = int(config.num_heads) * int(config.d_kv)
    size = 2 if half else network.get_input_embeddings().weight.element_size()
    return 2 * layers * width * size


def own_memory(network: torch.nn.Module) -> None:
    """Copy every parameter and buffer into memory of its own, out of the checkpoint's mapping.

    transformers loads safetensors through a file mapping and leaves the tensors that need no
    conversion as views into it; one such view (an embedding, a norm's weight) keeps the whole
    mapping alive, and after quantizing most of its pages are fp32 weights nobody reads
    (850 MiB resident for flan-t5-base). `.data` is swapped, so shared parameters stay shared.
    """
    for tensor in [*network.parameters(), *network.buffers()]:
        tensor.data = tensor.data.clone()


def _load_bnb_int8(folder: Path, adapter: Path | None, device: torch.device) -> Any:
    from transformers import AutoModelForSeq2SeqLM, BitsAndBytesConfig

    # transformers leaves BitsAndBytesConfig's __init__ unannotated.
    config = BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
    options: dict[str, Any] = {"quantization_config": config}
    if device.type == "cuda":
        options["device_map"] = {"": device.index or 0}
    if adapter is None:
        return AutoModelForSeq2SeqLM.from_pretrained(folder, **options)
    # bitsandbytes quantizes while loading; merging into the 8-bit model would dequantize,
    # add and requantize (two roundings). Merge in fp32, save, then load that 8-bit.
    with tempfile.TemporaryDirectory(prefix="merged-") as merged:
        _load_full_precision(folder, adapter).save_pretrained(merged)
        return AutoModelForSeq2SeqLM.from_pretrained(merged, **options)
