"""The step products kernel (engine/qgemm.py, engine/csrc/qgemm.c): bitwise the fbgemm path it
replaces (rows on the grid, fbgemm's product, the rows scaled back, the bias) for every CPU
target this machine runs, at every row count a step has and odd widths; a row's result does
not depend on its batch-mates or the thread count; inputs that do not fit refused; a torch-int8
model's step products take it (cross-attention's keys and values and the encoder only with
INFERENCE_ENCODER_KERNEL=step, its default where the steps take it), with the same logits and
encoder outputs as fbgemm's, and INFERENCE_STEP_KERNEL and INFERENCE_ENCODER_KERNEL choose."""

import threading
from pathlib import Path

import pytest
import torch

from engine import native, qgemm, rowint8, rowops
from engine.generation import ModelLoadError
from engine.loading import encoder_kernel, load_model
from engine.t5_decoder import T5DecoderStep, cross_caches
from engine.testing import alone_and_together, running_engine, tiny_config

pytestmark = pytest.mark.skipif(native.cpu_target() is None, reason="needs AVX2 with F16C")

# (out, in): T5's, widths that are not whole panels (32 for VNNI, 16 for AVX2) or whole groups
# of inputs (4), and inputs that are not whole chunks of AVX2's pass over a panel (64 groups).
SHAPES = [(2304, 768), (768, 2048), (100, 70), (33, 5), (32128, 64), (40, 301)]
# Rows: one, within AVX2's tile of 4 and VNNI's of 12, across them, a large step's, and past
# AVX2's block of 32 rows a pass over a panel.
ROWS = [1, 3, 4, 5, 12, 13, 29, 37]


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> list[qgemm.Kernel]:
    """The library built for each target this CPU runs (an AVX-512 machine runs both, and the
    AVX2 build takes its AVX2 path there too)."""
    folder = tmp_path_factory.mktemp("kernels")
    return [qgemm.Kernel(native.build("qgemm", t, folder), t) for t in native.runnable_targets()]


def _linear(out: int, width: int, seed: int, bias: bool = False) -> torch.nn.Linear:
    torch.manual_seed(seed)
    linear = torch.nn.Linear(width, out, bias=bias)
    linear.weight.data *= 3
    return linear


def _fbgemm(module: rowint8.RowInt8Linear, hidden: torch.Tensor) -> torch.Tensor:
    """The path the kernel replaces, through torch's ops and fbgemm."""
    scaled, peak = rowint8.scale_rows_torch(hidden)
    out: torch.Tensor = rowint8._KERNEL(
        scaled, rowint8.GRID_SCALE, rowint8.GRID_ZERO, module.packed
    )
    out.mul_(peak)
    if module.bias is not None:
        out.add_(module.bias)
    return out


def _input(rows: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, width, generator=generator) * 5
    hidden[0, : width // 2] *= 40  # a large peak: most of the row near the grid's zero
    return hidden


def test_products_are_bitwise_the_fbgemm_paths(kernels: list[qgemm.Kernel]) -> None:
    for index, (out, width) in enumerate(SHAPES):
        module = rowint8.RowInt8Linear(_linear(out, width, index, bias=index == 2))
        for kernel in kernels:
            packed = rowint8.StepPacked(module.packed, kernel)
            for rows in ROWS:
                hidden = _input(rows, width, seed=rows)
                got = packed(hidden, module.bias)
                assert torch.equal(got, _fbgemm(module, hidden)), (kernel.target, out, rows)


def _half_way_inputs() -> torch.Tensor:
    """Rows of a peak of 1 then inputs at and a few floats around each half-way point of the
    grid ((k + 0.5) / 63), where rounding the product, then adding the zero point and rounding
    again, falls otherwise than fbgemm's one fused multiply-add."""
    points = torch.tensor([(k + 0.5) / 63 for k in range(-63, 63)], dtype=torch.float32)
    near = [points]
    up, down = points.clone(), points.clone()
    for _ in range(4):
        up, down = torch.nextafter(up, up + 1), torch.nextafter(down, down - 1)
        near += [up, down]
    values = torch.cat(near).clamp(-1, 1)
    width = 67  # whole vectors and a scalar tail
    rows = -(-values.numel() // (width - 1))
    hidden = torch.zeros(rows * (width - 1))
    hidden[: values.numel()] = values
    return torch.cat([torch.ones(rows, 1), hidden.view(rows, width - 1)], dim=1)


def test_rounding_half_way_falls_as_fbgemms(kernels: list[qgemm.Kernel]) -> None:
    module = rowint8.RowInt8Linear(_linear(64, 67, seed=7))
    hidden = _half_way_inputs()
    for kernel in kernels:
        got = rowint8.StepPacked(module.packed, kernel)(hidden)
        assert torch.equal(got, _fbgemm(module, hidden)), kernel.target


def test_a_rows_result_does_not_depend_on_its_mates_or_the_threads(
    kernels: list[qgemm.Kernel],
) -> None:
    module = rowint8.RowInt8Linear(_linear(2304, 768, seed=3))
    hidden = _input(29, 768, seed=4)
    threads = torch.get_num_threads()
    try:
        for kernel in kernels:
            packed = rowint8.StepPacked(module.packed, kernel)
            torch.set_num_threads(2)
            whole = packed(hidden)
            torch.set_num_threads(1)
            for row in (0, 11, 12, 28):
                assert torch.equal(packed(hidden[row : row + 1]), whole[row : row + 1])
            assert torch.equal(packed(hidden[10:15]), whole[10:15])
    finally:
        torch.set_num_threads(threads)


def test_threads_calling_at_once_each_get_their_own_products(
    kernels: list[qgemm.Kernel],
) -> None:
    # Each thread quantizes its rows into a scratch buffer of its own (the model thread and,
    # in tests and benchmarks, others): one shared buffer would mix their rows.
    module = rowint8.RowInt8Linear(_linear(256, 768, seed=10))
    packed = rowint8.StepPacked(module.packed, kernels[0])
    inputs = [_input(5, 768, seed=20 + index) for index in range(2)]
    expected = [packed(hidden) for hidden in inputs]
    wrong: list[int] = []

    def work(index: int) -> None:
        for _ in range(300):
            if not torch.equal(packed(inputs[index]), expected[index]):
                wrong.append(index)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong


def test_a_row_holding_nan_is_nan_and_its_mates_are_untouched(
    kernels: list[qgemm.Kernel],
) -> None:
    module = rowint8.RowInt8Linear(_linear(40, 37, seed=5))
    hidden = _input(3, 37, seed=6)
    hidden[1, 20] = float("nan")
    hidden[2] = 0.0
    for kernel in kernels:
        got = rowint8.StepPacked(module.packed, kernel)(hidden)
        assert got[1].isnan().all()
        assert torch.equal(got[0], _fbgemm(module, hidden[:1])[0])
        assert not got[2].any()  # an all-zero row: zeros out


def test_the_packed_weight_dequantizes_as_fbgemms(kernels: list[qgemm.Kernel]) -> None:
    module = rowint8.RowInt8Linear(_linear(100, 70, seed=8))
    for kernel in kernels:
        packed = rowint8.StepPacked(module.packed, kernel)
        assert torch.equal(packed.dequantized(), rowint8.dequantized(module.packed))


def test_inputs_that_do_not_fit_are_an_error_not_a_stray_read(
    kernels: list[qgemm.Kernel],
) -> None:
    packed = rowint8.StepPacked(rowint8.RowInt8Linear(_linear(40, 36, seed=9)).packed, kernels[0])
    with pytest.raises(ValueError, match="width"):
        packed(torch.randn(2, 44))
    with pytest.raises(ValueError, match="fp32"):
        packed(torch.randn(2, 36).double())
    with pytest.raises(ValueError, match="bias"):
        packed(torch.randn(2, 36), torch.zeros(39))
    with pytest.raises(ValueError, match="int8"):
        kernels[0].pack(torch.zeros(4, 4), torch.ones(4), 1.0)


def _step_logits(loaded: object, ids: torch.Tensor) -> torch.Tensor:
    network = loaded.model  # type: ignore[attr-defined]
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        encoded = network.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        step = T5DecoderStep(network, encoded, mask, 8, loaded.attention)  # type: ignore[attr-defined]
        tokens = torch.zeros((ids.shape[0], 1), dtype=torch.long)
        first = step(tokens)
        return torch.stack([first, step(first.argmax(-1, keepdim=True))])


def _step_kernel_modules(loaded: object) -> tuple[int, int, int]:
    """(step products on the kernel, cross keys/values on it, encoder products on it)."""
    network = loaded.model  # type: ignore[attr-defined]

    def on_kernel(module: torch.nn.Module) -> int:
        packs = [getattr(m, "packed", None) for m in module.modules()]
        return sum(isinstance(packed, rowint8.StepPacked) for packed in packs)

    cross = sum(on_kernel(b.layer[1].EncDecAttention.k) for b in network.get_decoder().block)
    step = on_kernel(network.get_decoder()) + on_kernel(network.lm_head)
    return step - cross, cross, on_kernel(network.get_encoder())


def test_a_torch_int8_models_step_products_take_the_kernel_with_fbgemms_logits(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    if rowops.load() is None or qgemm.load() is None:
        pytest.skip("the kernels cannot be built here")
    monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "fbgemm")  # its own test below
    monkeypatch.setenv("INFERENCE_STEP_KERNEL", "on")
    on = load_model(str(tiny_model_dir), quantization="torch-int8")
    monkeypatch.setenv("INFERENCE_STEP_KERNEL", "off")
    off = load_model(str(tiny_model_dir), quantization="torch-int8")
    layers = len(on.model.get_decoder().block)
    # Per decoder layer: q+k+v, o, cross q, cross o, wi_0+wi_1, wo; then the output layer.
    assert _step_kernel_modules(on) == (6 * layers + 1, 0, 0)
    assert _step_kernel_modules(off) == (0, 0, 0)
    ids = torch.randint(3, 90, (3, 11), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_step_logits(on, ids), _step_logits(off, ids))


def test_the_encoder_and_cross_attentions_keys_can_take_it_with_fbgemms_outputs(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    if rowops.load() is None or qgemm.load() is None:
        pytest.skip("the kernels cannot be built here")
    monkeypatch.setenv("INFERENCE_STEP_KERNEL", "on")
    monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "step")
    on = load_model(str(tiny_model_dir), quantization="torch-int8")
    monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "fbgemm")
    off = load_model(str(tiny_model_dir), quantization="torch-int8")
    layers = len(on.model.get_encoder().block)
    # Per encoder layer: q+k+v, o, wi_0+wi_1, wo; per decoder layer, cross k+v.
    assert _step_kernel_modules(on) == (6 * layers + 1, layers, 4 * layers)
    assert _step_kernel_modules(off) == (6 * layers + 1, 0, 0)
    # Prompts of several lengths in one padded pass: every position of every row, and the
    # cross-attention keys and values made from them, bitwise fbgemm's.
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 90, (3, 37), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 20:], mask[2, 5:] = 0, 0
    with torch.inference_mode():
        outputs = [
            loaded.model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            for loaded in (on, off)
        ]
        caches = [
            cross_caches(loaded.model, output, loaded.attention)
            for loaded, output in zip((on, off), outputs, strict=True)
        ]
    assert torch.equal(outputs[0], outputs[1])
    for (keys, values), (their_keys, their_values) in zip(*caches, strict=True):
        assert torch.equal(keys, their_keys) and torch.equal(values, their_values)
    assert torch.equal(_step_logits(on, ids), _step_logits(off, ids))


def test_the_encoders_setting_picks_the_kernel_where_it_was_measured(
    monkeypatch: pytest.MonkeyPatch, kernels: list[qgemm.Kernel]
) -> None:
    monkeypatch.setattr(native, "cpu_flags", lambda: {"avx2", "fma", "f16c"})  # no AMX
    monkeypatch.setenv("INFERENCE_STEP_KERNEL", "auto")
    monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "auto")
    for kernel in kernels:
        monkeypatch.setattr(qgemm, "load", lambda kernel=kernel: kernel)
        # Where it was measured faster: the AVX2 build, and the AVX-512 build's VNNI path (the
        # kernels the steps take); not the AVX-512 build's AVX2 path (no VNNI: unmeasured).
        measured = kernel.target == "avx2" or kernel.path_used == qgemm.VNNI
        assert encoder_kernel() == ("step" if measured else "fbgemm")
        monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "step")
        assert encoder_kernel() == "step"
        monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "auto")
    monkeypatch.setattr(qgemm, "load", lambda: None)  # INFERENCE_STEP_KERNEL=off, or no kernel
    assert encoder_kernel() == "fbgemm"
    monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "step")
    with pytest.raises(
        ModelLoadError, match="INFERENCE_ENCODER_KERNEL=step: .* use auto or fbgemm"
    ):
        encoder_kernel()
    monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", "qgemm")
    with pytest.raises(ModelLoadError, match="expected auto, fbgemm, onednn or step"):
        encoder_kernel()


def test_auto_takes_the_kernel_only_where_its_path_was_measured(
    monkeypatch: pytest.MonkeyPatch, kernels: list[qgemm.Kernel]
) -> None:
    monkeypatch.setenv("INFERENCE_STEP_KERNEL", "auto")
    for kernel in kernels:
        # The VNNI path, or the AVX2 build (what an AVX2-only CPU loads); not the AVX-512
        # build's AVX2 path (an AVX-512 CPU without VNNI: fbgemm there is AVX-512's).
        measured = kernel.path_used == qgemm.VNNI or kernel.target == "avx2"
        assert qgemm.wanted(kernel) == measured
    monkeypatch.setenv("INFERENCE_STEP_KERNEL", "on")
    assert all(qgemm.wanted(kernel) for kernel in kernels)
    assert not qgemm.wanted(None)
    avx2 = [k for k in kernels if k.target == "avx2"]
    assert all(k.path_used == qgemm.AVX2 for k in avx2)  # the AVX2 build never takes VNNI


def test_a_bad_setting_is_a_clear_load_error_and_off_builds_nothing(
    kernel_cache: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    for name in ("INFERENCE_ROWS_KERNEL", "INFERENCE_ATTENTION_KERNEL"):
        monkeypatch.setenv(name, "off")  # the model would build those
    monkeypatch.setenv("INFERENCE_STEP_KERNEL", "fast")
    with pytest.raises(ModelLoadError, match="INFERENCE_STEP_KERNEL='fast': expected auto"):
        load_model(str(tiny_model_dir), quantization="torch-int8")
    monkeypatch.setenv("INFERENCE_STEP_KERNEL", "off")
    assert qgemm.load() is None
    loaded = load_model(str(tiny_model_dir), quantization="torch-int8")
    assert _step_kernel_modules(loaded) == (0, 0, 0)
    assert not kernel_cache.exists()


def test_through_the_engine_the_encoders_kernel_answers_as_fbgemm_alone_and_together(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    if rowops.load() is None or qgemm.load() is None:
        pytest.skip("the kernels cannot be built here")
    # Passes on the prefill thread beside the steps (two torch threads), each with its own
    # scratch in the kernel, while the steps call it too.
    prompts = ["reverse: a b c d e", "reverse: f g", "reverse: h i j k l m n o p q r s t"]
    config = tiny_config(
        tiny_model_dir, quantization="torch-int8", max_batch=8, threads=2, prefill_thread="on"
    )
    answers: dict[str, tuple[list[str], list[str]]] = {}
    for setting in ("step", "fbgemm"):
        monkeypatch.setenv("INFERENCE_ENCODER_KERNEL", setting)
        with running_engine(config) as engine:
            answers[setting] = alone_and_together(engine, prompts, max_tokens=12)
    assert answers["step"] == answers["fbgemm"]
    assert answers["step"][0] == answers["step"][1]
    assert len(set(answers["step"][0])) > 1  # the prompts answer differently
