"""An int8 model's encoder products on oneDNN (engine/rowint8.py OnednnPacked, AMX where the CPU
has it): a row's output bitwise the same whatever its mates, the batch size and the thread
count; within the grid's rounding of fbgemm's; the encoder and cross-attention's keys and values
repacked, the decoder's step left on fbgemm; INFERENCE_ENCODER_KERNEL read and refused as
documented; through the engine, a request's tokens the same alone and beside others; a pass's
rows padded so that nearby row counts share one compiled product."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import native, qgemm, rowint8, rowops
from engine.generation import ModelLoadError
from engine.loading import encoder_kernel, load_model
from engine.rowint8 import FusedRowInt8, OnednnPacked, RowInt8Linear
from engine.testing import alone_and_together, running_engine, tiny_config

pytestmark = pytest.mark.skipif(
    not rowint8.onednn_supported() or native.cpu_target() is None,
    reason="needs torch's oneDNN int8 ops and the row kernels",
)


def _weights(outputs: int = 192, inputs: int = 256) -> tuple[torch.Tensor, OnednnPacked, object]:
    weight = torch.randn(outputs, inputs, generator=torch.Generator().manual_seed(0)) * 0.05
    packed = rowint8.pack_weight(weight)
    return weight, OnednnPacked(packed), packed


def test_a_rows_output_is_bitwise_the_same_whatever_its_mates_batch_and_threads() -> None:
    _, onednn, _ = _weights()
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 130, 256, generator=generator)
    hidden[1] *= 50  # loud mates
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        whole = rowint8._row_int8(hidden, onednn, None)
        torch.set_num_threads(1)
        for batch, start, length in ((0, 0, 1), (0, 7, 17), (2, 3, 127), (2, 129, 1)):
            part = hidden[batch : batch + 1, start : start + length]
            alone = rowint8._row_int8(part, onednn, None)
            assert torch.equal(alone, whole[batch : batch + 1, start : start + length])
    finally:
        torch.set_num_threads(threads)


def test_it_is_fbgemms_product_within_the_grids_rounding() -> None:
    weight, onednn, fbgemm = _weights()
    hidden = torch.randn(9, 256, generator=torch.Generator().manual_seed(2))
    hidden[4] = 0.0
    exact = hidden @ weight.t()
    ours, theirs = rowint8._row_int8(hidden, onednn, None), rowint8._row_int8(hidden, fbgemm, None)
    assert not ours[4].any()
    assert (ours - exact).abs().max() < 0.06 and (ours - theirs).abs().max() < 0.02
    bias = torch.randn(192)
    assert torch.equal(rowint8._row_int8(hidden, onednn, bias), ours + bias)
    assert torch.allclose(onednn.dequantized(), rowint8.dequantized(fbgemm), atol=1e-6)
    hidden[2, 5] = float("nan")
    out = rowint8._row_int8(hidden, onednn, None)
    assert out[2].isnan().all() and torch.isfinite(out[torch.arange(9) != 2]).all()


# A child process: oneDNN reads ONEDNN_VERBOSE once, when it starts.
_PASSES = """
import torch
from engine import rowint8
weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
packed = rowint8.OnednnPacked(rowint8.pack_weight(weight))
print("passes", flush=True)
for rows in range(17, 33):
    packed(torch.randn(rows, 128))
"""


def test_passes_of_nearby_row_counts_share_one_compiled_product() -> None:
    # oneDNN compiles (and keeps) a primitive per shape: rows padded to ROW_BUCKET make the
    # 16 passes of 17 to 32 rows one shape, compiled once (a new one each without padding).
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "ONEDNN_VERBOSE": "profile_create", "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", _PASSES], env=env, capture_output=True, text=True, check=True
    ).stdout
    lines = out.split("passes", 1)[1].splitlines()
    compiled = [line for line in lines if ",matmul," in line and "cache_miss" in line]
    assert len(compiled) == 1, compiled
    assert ",32x128:128x64," in compiled[0]  # 17 to 32 rows: 32 (ROW_BUCKET 16)


def test_a_padded_passs_rows_are_the_unpadded_products() -> None:
    _, onednn, _ = _weights()
    hidden = torch.randn(2, 21, 256, generator=torch.Generator().manual_seed(3))
    out = rowint8._row_int8(hidden, onednn, None)
    assert out.shape == (2, 21, 192)
    for row in range(0, 42, 5):  # each row alone pads to 16 rows of which 15 are the grid's 0
        alone = rowint8._row_int8(hidden.view(42, 256)[row : row + 1], onednn, None)
        assert torch.equal(alone[0], out.view(42, 192)[row])


def test_only_the_products_that_read_the_prompt_are_repacked(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "onednn")
    model = load_model(str(tiny_model_dir), quantization="torch-int8").model

    def kinds(network: torch.nn.Module) -> set[type]:
        modules = network.modules()
        return {type(m.packed) for m in modules if isinstance(m, RowInt8Linear | FusedRowInt8)}

    assert kinds(model.get_encoder()) == {OnednnPacked}
    for block in model.get_decoder().block:
        assert isinstance(block.layer[1].EncDecAttention.k.group.packed, OnednnPacked)
        assert not isinstance(block.layer[0].SelfAttention.q.group.packed, OnednnPacked)
        assert OnednnPacked not in kinds(block.layer[2])
    assert not isinstance(model.lm_head.packed, OnednnPacked)


def test_the_setting_picks_and_refuses_as_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the step kernel (its share of auto is engine/tests/test_qgemm.py's).
    monkeypatch.setattr(qgemm, "load", lambda: None)
    monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "fbgemm")
    assert encoder_kernel() == "fbgemm"
    monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "auto")
    monkeypatch.setattr(native, "cpu_flags", lambda: {"avx512f", "fma", "f16c"})
    assert encoder_kernel() == "fbgemm"  # no AMX: fbgemm
    monkeypatch.setattr(native, "cpu_flags", lambda: {"avx512f", "amx_int8", "amx_tile"})
    assert encoder_kernel() == "onednn"
    monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "amx please")
    with pytest.raises(ModelLoadError, match="expected auto, fbgemm, onednn or step"):
        encoder_kernel()
    monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "onednn")
    monkeypatch.setattr(rowint8, "onednn_supported", lambda: False)
    with pytest.raises(ModelLoadError, match="use auto or fbgemm"):
        encoder_kernel()
    monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "auto")
    assert encoder_kernel() == "fbgemm"  # auto falls back quietly
    monkeypatch.setattr(rowops, "load", lambda: None)
    monkeypatch.setattr(rowint8, "onednn_supported", lambda: True)
    assert encoder_kernel() == "fbgemm"  # no row kernels, no oneDNN path


def test_a_requests_tokens_are_the_same_alone_and_beside_others(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "onednn")
    prompts = ["reverse: a b c d e", "reverse: f g", "reverse: h i j k l m n o p q r s t"]
    config = tiny_config(tiny_model_dir, quantization="torch-int8", max_batch=8)
    with running_engine(config) as engine:
        alone, together = alone_and_together(engine, prompts, max_tokens=12)
        assert together == alone
        assert len(set(alone)) > 1  # the prompts answer differently: the rows are told apart
