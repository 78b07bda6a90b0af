"""loadtest/bench_encoder.py: its sizes are read as written, its comparison times both
kernels over the same prompts and reports a difference only where the outputs differ, and
--gelu's variants put their GELU in every encoder block before each pass."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from engine import qgemm, rowops
from engine.loading import PassGELU, feed_forwards, load_model
from loadtest.bench_encoder import compare, load, parse_sizes, with_gelu


def _ready(model: Any) -> Callable[[], Any]:
    """A kernel's variant for compare(): its model, as loaded."""
    return lambda: model


def test_sizes_are_read_as_prompts_by_tokens() -> None:
    assert parse_sizes("1x16, 4x64") == ((1, 16), (4, 64))


def test_the_step_kernel_and_fbgemm_passes_are_timed_and_bitwise_the_same(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if rowops.load() is None or qgemm.load() is None:
        pytest.skip("the kernels cannot be built here")
    monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "auto")  # load() sets it; restored after
    loaded = {
        "fbgemm": load(tiny_model_dir, None, "fbgemm"),
        "step": load(tiny_model_dir, None, "step"),
    }
    models = {name: _ready(model) for name, model in loaded.items()}
    row = compare(models, 2, 9, rounds=2)
    assert row["base"] > 0 and row["other"] > 0
    assert row["ratio"] == pytest.approx(row["base"] / row["other"])
    assert row["diff"] == 0.0
    # A model whose outputs differ is reported as such (the encoder's last norm scaled).
    norm = loaded["step"].model.get_encoder().final_layer_norm
    norm.weight.data *= 2
    assert compare(models, 2, 9, rounds=1)["diff"] > 0


def test_the_gelu_variants_each_put_their_own_gelu_in_every_encoder_block(
    tiny_model_dir: Path,
) -> None:
    loaded = load_model(str(tiny_model_dir), quantization="torch-int8", device="cpu")
    fused, ours = torch.nn.GELU(approximate="tanh"), PassGELU()
    variants = {"torch": with_gelu(loaded, fused), "PassGELU": with_gelu(loaded, ours)}
    encoder = feed_forwards(loaded.model.get_encoder())
    for gelu, ready in zip((fused, ours), variants.values(), strict=True):
        assert ready() is loaded
        assert encoder and all(feed_forward.act is gelu for feed_forward in encoder)
    row = compare(variants, 2, 9, rounds=2)
    assert row["base"] > 0 and row["other"] > 0
    assert row["ratio"] == pytest.approx(row["base"] / row["other"])
