"""loadtest/bench_encoder.py: its sizes are read as written, and its comparison times both
kernels over the same prompts and reports a difference only where the outputs differ."""

from pathlib import Path

import pytest

from engine import qgemm, rowops
from loadtest.bench_encoder import compare, load, parse_sizes


def test_sizes_are_read_as_prompts_by_tokens() -> None:
    assert parse_sizes("1x16, 4x64") == ((1, 16), (4, 64))


def test_the_step_kernel_and_fbgemm_passes_are_timed_and_bitwise_the_same(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if rowops.load() is None or qgemm.load() is None:
        pytest.skip("the kernels cannot be built here")
    monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "auto")  # load() sets it; restored after
    models = {
        "fbgemm": load(tiny_model_dir, None, "fbgemm"),
        "step": load(tiny_model_dir, None, "step"),
    }
    row = compare(models, 2, 9, rounds=2)
    assert row["base"] > 0 and row["other"] > 0
    assert row["ratio"] == pytest.approx(row["base"] / row["other"])
    assert row["diff"] == 0.0
    # A model whose outputs differ is reported as such (the encoder's last norm scaled).
    norm = models["step"].model.get_encoder().final_layer_norm
    norm.weight.data *= 2
    assert compare(models, 2, 9, rounds=1)["diff"] > 0
