"""The row-wise kernels of an 8-bit CPU model (engine/rowops.py, engine/csrc/rows.c): the
activation scaling and rescaling bitwise what torch's ops give, T5's layer norm equal to
transformers' within rounding and a row's result bitwise independent of its batch-mates and
the thread count, for every CPU target this machine runs; inputs that do not fit refused; an
8-bit model on the CPU gets the norm, other models and `off` keep torch's."""

from pathlib import Path
from typing import Any

import pytest
import torch

from engine import attention, lowrank, native, qgemm, rowint8, rowops
from engine.loading import FusedRMSNorm, load_model

pytestmark = pytest.mark.skipif(native.cpu_target() is None, reason="needs AVX2 with F16C")

# Widths below, between and at the vector widths (8, 16) and T5's; an encoder pass's many
# positions (past the size that runs on several threads) as well as a step's few rows.
SHAPES = [(3, 1, 5), (16, 1, 768), (2, 9, 37), (4, 128, 768), (1, 1, 2048)]


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> list[rowops.Kernel]:
    """The library built for each target this CPU runs (AVX-512 machines run both)."""
    folder = tmp_path_factory.mktemp("kernels")
    return [rowops.Kernel(native.build("rows", t, folder), t) for t in native.runnable_targets()]


def _input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(shape, generator=generator) * 40
    hidden[0, 0] = 0.0  # an all-zero row: zeros out, not NaN
    return hidden


def test_row_scales_are_bitwise_torchs(kernels: list[rowops.Kernel]) -> None:
    for kernel in kernels:
        for shape in SHAPES:
            hidden = _input(shape)
            scaled, peak = kernel.scale(hidden)
            expected_scaled, expected_peak = rowint8.scale_rows_torch(hidden)
            assert torch.equal(scaled, expected_scaled) and torch.equal(peak, expected_peak)
            assert not scaled[0, 0].any()
            product = torch.randn(*shape[:-1], 24)
            expected = product.clone().mul_(peak)
            kernel.rescale(product, peak)
            assert torch.equal(product, expected)


def test_the_layer_norm_is_t5s(kernels: list[rowops.Kernel]) -> None:
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    for kernel in kernels:
        for shape in SHAPES:
            hidden = _input(shape, seed=1)
            norm = T5LayerNorm(shape[-1], eps=1e-6)
            norm.weight.data = torch.randn(shape[-1], generator=torch.Generator().manual_seed(2))
            expected = norm(hidden).detach()
            got = kernel.rms_norm(hidden, norm.weight.detach(), norm.variance_epsilon)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_rows_result_does_not_depend_on_its_mates_or_the_threads(
    kernels: list[rowops.Kernel],
) -> None:
    hidden, weight = _input((6, 100, 768), seed=3), torch.randn(768)
    threads = torch.get_num_threads()
    try:
        for kernel in kernels:
            torch.set_num_threads(2)
            whole_norm = kernel.rms_norm(hidden, weight, 1e-6)
            whole_scaled, whole_peak = kernel.scale(hidden)
            torch.set_num_threads(1)
            for row in (0, 4):
                at = (slice(row, row + 1), slice(7, 8))
                alone = hidden[at]
                assert torch.equal(kernel.rms_norm(alone, weight, 1e-6), whole_norm[at])
                scaled, peak = kernel.scale(alone)
                assert torch.equal(scaled, whole_scaled[at]) and torch.equal(peak, whole_peak[at])
    finally:
        torch.set_num_threads(threads)


def test_inputs_that_do_not_fit_are_an_error_not_a_stray_read(
    kernels: list[rowops.Kernel],
) -> None:
    kernel, hidden = kernels[0], torch.randn(2, 8)
    with pytest.raises(ValueError, match="fp32"):
        kernel.scale(hidden.half())
    with pytest.raises(ValueError, match="fp32"):
        kernel.rms_norm(hidden.double(), torch.ones(8), 1e-6)
    with pytest.raises(ValueError, match="weight"):
        kernel.rms_norm(hidden, torch.ones(7), 1e-6)
    with pytest.raises(ValueError, match="scales"):
        kernel.rescale(hidden, torch.ones(3, 1))
    with pytest.raises(ValueError, match="scales"):
        kernel.rescale(hidden.t(), torch.ones(8, 1))  # not packed


def test_an_8bit_model_on_the_cpu_gets_the_kernels_norm_and_fp32_keeps_torchs(
    tiny_model_dir: Path,
) -> None:
    int8 = load_model(str(tiny_model_dir), quantization="torch-int8")
    fp32 = load_model(str(tiny_model_dir), quantization="none")
    kinds = {type(m) for m in int8.model.modules()}
    assert rowops.NativeRMSNorm in kinds and FusedRMSNorm not in kinds
    assert rowops.NativeRMSNorm not in {type(m) for m in fp32.model.modules()}


def test_the_kernels_can_be_turned_off(
    kernel_cache: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    monkeypatch.setenv("INFERENCE_ROWS_KERNEL", "off")
    # The model would build these two.
    monkeypatch.setenv("INFERENCE_ATTENTION_KERNEL", "off")
    monkeypatch.setenv("INFERENCE_STEP_KERNEL", "off")
    assert rowops.load() is None
    int8 = load_model(str(tiny_model_dir), quantization="torch-int8")
    assert rowops.NativeRMSNorm not in {type(m) for m in int8.model.modules()}
    hidden = _input((2, 3, 40))
    scaled, peak = rowint8._scale_rows(hidden)  # the torch ops, the same numbers
    assert torch.equal(scaled, rowint8.scale_rows_torch(hidden)[0])
    assert not kernel_cache.exists()  # nothing built


@pytest.mark.parametrize(
    ("module", "setting"),
    [
        (rowops, "INFERENCE_ROWS_KERNEL"),
        (attention, "INFERENCE_ATTENTION_KERNEL"),
        (lowrank, "INFERENCE_ADAPTER_KERNEL"),
        (qgemm, "INFERENCE_STEP_KERNEL"),
    ],
)
def test_each_kernels_switch_is_read_at_every_load_and_only_the_kernel_is_kept(
    monkeypatch: pytest.MonkeyPatch, module: Any, setting: str
) -> None:
    monkeypatch.delenv(setting, raising=False)
    kernel = module.load()
    assert kernel is not None
    monkeypatch.setenv(setting, "off")
    assert module.load() is None  # not the kernel built before
    monkeypatch.delenv(setting)
    assert module.load() is kernel  # not the "off" of the call before


def test_a_row_holding_nan_or_infinity_scales_as_torchs_ops_scale_it(
    kernels: list[rowops.Kernel],
) -> None:
    hidden = torch.randn(4, 37)
    hidden[0, 3], hidden[1, 36], hidden[2, 20] = float("nan"), float("nan"), float("inf")
    expected_scaled, expected_peak = rowint8.scale_rows_torch(hidden)
    for kernel in kernels:
        scaled, peak = kernel.scale(hidden)
        assert peak[:2].isnan().all() and peak[2].isinf().all()
        torch.testing.assert_close(peak, expected_peak, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(scaled, expected_scaled, rtol=0, atol=0, equal_nan=True)
