"""Loading: the adapter, each quantization on the CPU, CUDA, and models that are missing."""

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from engine import qgemm
from engine.config import EngineConfig
from engine.generation import ModelLoadError
from engine.loading import (
    FusedRMSNorm,
    PassGELU,
    feed_forwards,
    held_bytes,
    load_model,
    resolve_device,
    resolve_quantization,
)
from engine.lora import merge_plain
from engine.rowint8 import RowInt8Slice
from engine.runtime import Engine
from engine.testing import generate, in_process_model, tiny_config

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["Hello café", "The model runs over the river", "quiet garden", "naïve tenant"]


def logits(model: Any, tokenizer: Any, prompt: str) -> torch.Tensor:
    inputs = tokenizer(prompt, return_tensors="pt")
    start = torch.zeros((1, 1), dtype=torch.long)
    with torch.inference_mode():
        last: torch.Tensor = model(**inputs, decoder_input_ids=start).logits[0, -1]
        return last.float()


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_the_adapter_is_merged_in_full_precision_and_equals_the_unmerged_one(
    tiny_model_dir: Path, tokenizer
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    merged = load_model(
        str(tiny_model_dir), adapter=str(tiny_model_dir / "adapter"), quantization="none"
    )
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_model_dir).eval()
    bare = [logits(base, tokenizer, p) for p in PROMPTS]
    unmerged = PeftModel.from_pretrained(base, tiny_model_dir / "adapter").eval()
    assert not any("lora" in name for name, _ in merged.model.named_modules())
    for prompt, bare_logits in zip(PROMPTS, bare, strict=True):
        with_adapter = logits(unmerged, tokenizer, prompt)
        served = logits(merged.model, tokenizer, prompt)
        assert torch.allclose(served, with_adapter, atol=1e-4, rtol=1e-4)
        assert (served - bare_logits).abs().max() > 0.1  # the adapter does change the logits


async def test_the_adapter_changes_what_the_model_writes(
    make_engine: Callable[..., Engine], tiny_model_dir: Path
) -> None:
    bare = make_engine()
    adapted = make_engine(adapter=str(tiny_model_dir / "adapter"))
    bare_out = [(await generate(bare, p, max_tokens=12)).token_ids for p in PROMPTS]
    adapted_out = [(await generate(adapted, p, max_tokens=12)).token_ids for p in PROMPTS]
    assert sum(a != b for a, b in zip(bare_out, adapted_out, strict=True)) >= 3


def first_query_layer(engine: Engine) -> torch.nn.Module:
    query: torch.nn.Module = (
        in_process_model(engine).model.encoder.block[0].layer[0].SelfAttention.q
    )
    return query


@pytest.fixture
def loud_bitsandbytes() -> Iterator[None]:
    """Undo Django's LOGGING for bitsandbytes, so only the engine's own silencing counts."""
    loggers = [logging.getLogger(n) for n in ("bitsandbytes", "bitsandbytes.autograd._functions")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.NOTSET)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.mark.parametrize("quantization", ["torch-int8", "bnb-int8", "bf16", "none"])
async def test_every_quantization_backend_loads_and_generates_on_the_cpu(
    make_engine: Callable[..., Engine],
    tiny_model_dir: Path,
    quantization: str,
    caplog: pytest.LogCaptureFixture,
    loud_bitsandbytes: None,
) -> None:
    engine = make_engine(quantization=quantization, adapter=str(tiny_model_dir / "adapter"))
    assert engine.status()["quantization"] == quantization
    layer = first_query_layer(engine)
    with caplog.at_level(logging.WARNING):
        results = [await generate(engine, p, max_tokens=8) for p in PROMPTS]
    assert all(r.completion_tokens > 0 and r.finish_reason in {"stop", "length"} for r in results)
    if quantization == "torch-int8":
        assert isinstance(layer, RowInt8Slice)  # q, fused with k and v
    elif quantization == "bnb-int8":
        import bitsandbytes as bnb

        assert isinstance(layer, bnb.nn.Linear8bitLt)
        assert layer.weight.dtype == torch.int8
        # bitsandbytes logs one warning per 8-bit matmul unless silenced.
        assert not [r for r in caplog.records if r.name.startswith("bitsandbytes")]
    else:
        expected = torch.bfloat16 if quantization == "bf16" else torch.float32
        assert layer.weight.dtype == expected


def test_auto_picks_dynamic_int8_on_the_cpu_and_refuses_it_on_cuda() -> None:
    assert resolve_quantization("auto", torch.device("cpu")) == "torch-int8"
    assert resolve_quantization("auto", torch.device("cuda")) == "bnb-int8"
    with pytest.raises(ModelLoadError, match="CPU only"):
        resolve_quantization("torch-int8", torch.device("cuda"))
    with pytest.raises(ModelLoadError, match="one of"):
        resolve_quantization("int4", torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_load_error() -> None:
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        resolve_device("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
async def test_bnb_int8_batches_on_cuda(make_engine: Callable[..., Engine], tiny_model_dir) -> None:
    import asyncio

    from prometheus_client import REGISTRY

    engine = make_engine(
        device="cuda", quantization="auto", adapter=str(tiny_model_dir / "adapter")
    )
    assert engine.status()["device"] == "cuda" and engine.status()["quantization"] == "bnb-int8"
    results = await asyncio.gather(*(generate(engine, p, max_tokens=16) for p in PROMPTS))
    assert all(r.completion_tokens > 0 for r in results)
    cuda_bytes = REGISTRY.get_sample_value("inference_cuda_memory_bytes")
    assert cuda_bytes is not None and cuda_bytes > 0


def failed_status(config: EngineConfig) -> dict[str, Any]:
    engine = Engine(config)
    engine.start()
    assert engine.wait_ready(60) is False
    return engine.status()


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"model": "/nonexistent/flan-t5-base"}, "'/nonexistent/flan-t5-base' does not exist"),
        ({"model": "someone/never-downloaded-t5"}, "is not in the Hugging Face cache"),
        ({"adapter": "/nonexistent/adapter"}, "adapter folder '/nonexistent/adapter'"),
    ],
)
def test_a_model_that_cannot_be_loaded_leaves_the_engine_failed_with_the_reason(
    tiny_model_dir: Path, overrides: dict[str, str], reason: str
) -> None:
    status = failed_status(tiny_config(tiny_model_dir, **overrides))
    assert status["ok"] is False and status["state"] == "failed"
    assert reason in status["detail"]


def test_a_folder_without_a_model_says_what_is_missing(tmp_path: Path) -> None:
    status = failed_status(tiny_config(tmp_path))
    assert status["state"] == "failed" and "has no config.json" in status["detail"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_the_faster_modules_compute_what_they_replace() -> None:
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 64)
    norm = T5LayerNorm(64, eps=1e-6)
    norm.weight.data.normal_()
    fused = FusedRMSNorm(norm.weight, norm.variance_epsilon)
    assert torch.allclose(fused(hidden), norm(hidden), atol=1e-6, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_the_encoders_gelu_is_t5s_tanh_gelu_and_each_rows_own() -> None:
    from transformers.activations import NewGELUActivation

    torch.manual_seed(0)
    values = torch.cat([torch.linspace(-12, 12, 4801), torch.randn(20_000) * 4]).view(3, -1)
    before = values.clone()
    ours, t5s = PassGELU()(values), NewGELUActivation()(values)
    assert torch.allclose(ours, t5s, atol=1e-6, rtol=1e-5)
    assert torch.equal(values, before)  # its in-place steps work on a tensor of its own
    # Elementwise: a row alone gets the very values it gets beside others.
    assert torch.equal(PassGELU()(values[1:2]), ours[1:2])
    # Half precision (and any other device) takes torch's own op.
    half = values.to(torch.bfloat16)
    expected = torch.nn.functional.gelu(half, approximate="tanh")
    assert torch.equal(PassGELU()(half), expected)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("quantization", ["torch-int8", "none"])
def test_the_encoders_passes_take_pass_gelu_and_the_decoders_steps_torchs(
    tiny_model_dir: Path, quantization: str
) -> None:
    model = load_model(str(tiny_model_dir), quantization=quantization, device="cpu").model
    encoder = [feed_forward.act for feed_forward in feed_forwards(model.get_encoder())]
    decoder = [feed_forward.act for feed_forward in feed_forwards(model.get_decoder())]
    assert encoder and all(isinstance(act, PassGELU) for act in encoder)
    assert decoder and all(type(act) is torch.nn.GELU for act in decoder)


def file_mapped_tensors(model: torch.nn.Module) -> list[str]:
    """Names of the model's tensors whose memory lies in a mapping of a .safetensors file."""
    spans = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5].endswith(".safetensors"):
                start, end = (int(bound, 16) for bound in fields[0].split("-"))
                spans.append((start, end))
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [
        name
        for name, tensor in tensors
        if any(start <= tensor.untyped_storage().data_ptr() < end for start, end in spans)
    ]


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads Linux's /proc")
def test_an_int8_model_lets_go_of_the_checkpoint_file_it_was_loaded_from(
    tiny_model_dir: Path,
) -> None:
    # A full-precision load serves straight from the file mapping: the check sees it ...
    assert file_mapped_tensors(load_model(str(tiny_model_dir), quantization="none").model)
    # ... while what stays fp32 after quantizing (embeddings, norms) is copied out of it, so
    # the mapping, mostly fp32 weights nobody reads any more, goes with the last view into it.
    quantized = load_model(str(tiny_model_dir), quantization="torch-int8").model
    assert file_mapped_tensors(quantized) == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("step_kernel", ["off", "on"])
def test_the_models_bytes_count_each_int8_weight_once_whichever_kernel_holds_it(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, step_kernel: str
) -> None:
    if step_kernel == "on" and qgemm.load() is None:
        pytest.skip("the step products kernel cannot be built here")
    monkeypatch.setenv("INFERENCE_STEP_KERNEL", step_kernel)
    monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "step" if step_kernel == "on" else "fbgemm")
    full = load_model(str(tiny_model_dir), quantization="none").model
    weights = sum(m.weight.numel() for m in full.modules() if isinstance(m, torch.nn.Linear))
    loaded = load_model(str(tiny_model_dir), quantization="torch-int8")
    kinds = {type(m.packed).__name__ for m in loaded.model.modules() if hasattr(m, "packed")}
    assert ("StepPacked" in kinds) == (step_kernel == "on")
    tensors = {id(t): t for t in [*loaded.model.parameters(), *loaded.model.buffers()]}
    rest = sum(t.numel() * t.element_size() for t in tensors.values())  # embeddings, norms
    packed = loaded.model_bytes - rest
    # A byte a weight, plus per-channel scales and the step kernel's padding: never the
    # fp32 weights' four bytes, never nothing.
    assert weights <= packed <= 1.5 * weights
    assert held_bytes(loaded.model) == loaded.model_bytes


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize(("quantization", "size"), [("torch-int8", 2), ("none", 4), ("bf16", 2)])
def test_a_cache_tokens_bytes_are_a_key_and_a_value_in_every_decoder_layer(
    tiny_model_dir: Path, quantization: str, size: int
) -> None:
    loaded = load_model(str(tiny_model_dir), quantization=quantization)
    config = loaded.model.config
    # torch-int8's attention kernel holds its caches in half precision; the others in the
    # model's dtype (and torch-int8 too where that kernel cannot be built: fp32).
    if quantization == "torch-int8" and loaded.attention is None:
        size = 4
    width = config.num_heads * config.d_kv
    assert loaded.cache_token_bytes == 2 * config.num_decoder_layers * width * size


def test_the_engines_status_reports_what_its_model_holds(
    make_engine: Callable[..., Engine],
) -> None:
    # A model process sends the same two facts (engine/tests/test_heap.py).
    engine = make_engine(quantization="torch-int8")
    loaded = in_process_model(engine)
    status = engine.status()
    assert status["model_bytes"] == held_bytes(loaded.model) > 0
    assert status["cache_token_bytes"] == loaded.cache_token_bytes > 0
    assert status["device"] == loaded.device_type == "cpu"


def fp32_t5(folder: Path) -> Any:
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=torch.float32)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_a_plain_lora_adapter_is_merged_into_the_weights_peft_merges_bitwise(
    tiny_model_dir: Path,
) -> None:
    from peft import PeftModel

    adapter = tiny_model_dir / "adapter"
    ours = fp32_t5(tiny_model_dir)
    assert merge_plain(ours, adapter)
    theirs = PeftModel.from_pretrained(fp32_t5(tiny_model_dir), adapter).merge_and_unload()
    bare = fp32_t5(tiny_model_dir).state_dict()
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert ours_state.keys() == theirs_state.keys()
    assert all(torch.equal(ours_state[key], theirs_state[key]) for key in ours_state)
    assert [key for key in ours_state if not torch.equal(ours_state[key], bare[key])]  # merged


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_an_adapter_beyond_plain_lora_is_left_to_peft_to_merge(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model

    dora = get_peft_model(
        fp32_t5(tiny_model_dir), LoraConfig(r=4, target_modules=["q", "v"], use_dora=True)
    )
    for name, parameter in dora.named_parameters():
        if "lora_B" in name:  # zeros at first: no change to merge
            torch.nn.init.normal_(parameter, std=0.5, generator=torch.Generator().manual_seed(1))
    dora.save_pretrained(str(tmp_path / "dora"))
    untouched = fp32_t5(tiny_model_dir)
    assert not merge_plain(untouched, tmp_path / "dora")
    bare = fp32_t5(tiny_model_dir).state_dict()
    assert all(torch.equal(tensor, bare[key]) for key, tensor in untouched.state_dict().items())
    served = load_model(str(tiny_model_dir), adapter=str(tmp_path / "dora"), quantization="none")
    peft_merged = PeftModel.from_pretrained(fp32_t5(tiny_model_dir), tmp_path / "dora")
    expected = peft_merged.merge_and_unload().state_dict()
    queries = [key for key in expected if key.endswith("SelfAttention.q.weight")]
    served_state = served.model.state_dict()
    assert queries and all(torch.equal(served_state[key], expected[key]) for key in queries)
    assert not torch.equal(served_state[queries[0]], bare[queries[0]])


def test_a_model_process_merging_a_plain_adapter_never_imports_peft(tiny_model_dir: Path) -> None:
    load = (
        "import sys\n"
        "from engine.loading import load_model\n"
        f"load_model({str(tiny_model_dir)!r}, adapter={str(tiny_model_dir / 'adapter')!r},"
        " quantization='torch-int8')\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'peft'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", load],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
