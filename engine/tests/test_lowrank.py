"""The per-row side path's kernel (engine/lowrank.py, engine/csrc/lowrank.c): equal to torch's
side path on the same half-precision tables for every CPU target this machine runs, a row's
result independent of its batch-mates, its length and the thread count, the tables an 8-bit
base keeps for it, and torch's path wherever the kernel cannot be built."""

import logging
import tempfile
from pathlib import Path

import pytest
import torch

from engine import lora, lowrank, native
from engine.generation import AdapterLoadError
from engine.loading import load_model

needs_kernel = pytest.mark.skipif(native.cpu_target() is None, reason="needs AVX2 with F16C")

# rows, positions, targets (n), rank, in, out: tails in every dimension the C file loops over.
SHAPES = [
    (3, 1, 3, 16, 768, 768),  # a decoder step, fused q+k+v
    (2, 7, 2, 5, 100, 128),  # an odd rank, `in` neither a multiple of 8 nor of 16
    (4, 9, 1, 1, 37, 64),  # rank 1 (the zero rows of a row without an adapter)
    (5, 13, 2, 8, 2048, 768),  # an encoder pass over wo's width
]


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> list[lowrank.Kernel]:
    """The library built for each target this CPU runs (AVX-512 machines run both)."""
    folder = tmp_path_factory.mktemp("kernels")
    return [
        lowrank.Kernel(native.build("lowrank", target, folder), target)
        for target in native.runnable_targets()
    ]


def _tables(rows: int, n: int, rank: int, width_in: int, width: int) -> tuple[torch.Tensor, ...]:
    a = (torch.randn(rows, n * rank, width_in) * 0.2).half()
    b = (torch.randn(rows, n, rank, width) * 0.2).half()
    return a, b


def _reference(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
    """torch's side path (engine/lora.py's bmm) on the same values, in fp32, in place."""
    state = lora.LoraState()
    state.tables = {"unit": (a.float(), b.float())}
    lora._side(state, "unit", x, out)


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_the_kernel_equals_torchs_side_path_on_the_same_tables(
    kernels: list[lowrank.Kernel], shape: tuple[int, ...]
) -> None:
    rows, positions, n, rank, width_in, width = shape
    torch.manual_seed(sum(shape))
    a, b = _tables(rows, n, rank, width_in, width)
    x = torch.randn(rows, positions, width_in)
    out = torch.randn(rows, positions, n * width)
    expected = out.clone()
    _reference(a, b, x, expected)
    assert (expected - out).abs().max() > 0.05  # the update is not negligible
    for kernel in kernels:
        got = out.clone()
        kernel.run(a, lora.block(b), x, got, 2)
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5, msg=kernel.target)


@needs_kernel
def test_a_rows_result_does_not_depend_on_its_batch_mates_length_or_threads(
    kernels: list[lowrank.Kernel],
) -> None:
    torch.manual_seed(7)
    rows, positions, n, rank, width_in, width = 5, 11, 3, 16, 96, 128
    a, b = _tables(rows, n, rank, width_in, width)
    blocked = lora.block(b)
    x = torch.randn(rows, positions, width_in)
    out = torch.randn(rows, positions, n * width)
    for kernel in kernels:
        batch = out.clone()
        kernel.run(a, blocked, x, batch, 2)
        # Row 2 alone, on one thread, and only its first 6 positions (a shorter prompt).
        alone = out[2:3, :6].clone()
        kernel.run(a[2:3], blocked[2:3], x[2:3, :6].contiguous(), alone, 1)
        assert torch.equal(alone, batch[2:3, :6]), kernel.target
        # Other mates around it.
        mates_a, mates_b = _tables(rows, n, rank, width_in, width)
        mates_a[2], mates_b[2] = a[2], b[2]
        other = out.clone()
        other[[0, 1, 3, 4]] = torch.randn(4, positions, n * width)
        mates_x = torch.randn(rows, positions, width_in)
        mates_x[2] = x[2]
        kernel.run(mates_a, lora.block(mates_b), mates_x, other, 2)
        assert torch.equal(other[2], batch[2]), kernel.target


@needs_kernel
def test_an_8_bit_base_keeps_half_precision_blocked_tables_a_float_base_does_not(
    tiny_adapters: Path,
) -> None:
    adapter = str(tiny_adapters / "adapters" / "1")
    compact = load_model(str(tiny_adapters), quantization="torch-int8", per_row=True)
    exact = load_model(str(tiny_adapters), quantization="none", per_row=True)
    assert compact.lora is not None and exact.lora is not None
    assert compact.lora.state.kernel is not None and exact.lora.state.kernel is None
    half = lora.load_adapter("t1", adapter, compact.lora, 64)
    full = lora.load_adapter("t1", adapter, exact.lora, 64)
    assert half.nbytes * 2 == full.nbytes
    a, b = next(iter(compact.lora.gather([half, None], "decoder.").values()))
    assert a.dtype == b.dtype == torch.float16 and b.dim() == 5
    a, b = next(iter(exact.lora.gather([full, None], "decoder.").values()))
    assert a.dtype == b.dtype == torch.float32 and b.dim() == 4


@needs_kernel
def test_an_adapter_beyond_half_precisions_range_is_refused(
    tiny_adapters: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    source = tiny_adapters / "adapters" / "1"
    folder = tmp_path / "huge"
    folder.mkdir()
    (folder / "adapter_config.json").write_text((source / "adapter_config.json").read_text())
    weights = load_file(str(source / "adapter_model.safetensors"))
    key = next(k for k in weights if k.endswith("lora_B.weight"))
    weights[key] = torch.full_like(weights[key], 1e6)
    save_file(weights, str(folder / "adapter_model.safetensors"))
    loaded = load_model(str(tiny_adapters), quantization="torch-int8", per_row=True)
    assert loaded.lora is not None
    with pytest.raises(AdapterLoadError, match="half precision's range"):
        lora.load_adapter("huge", str(folder), loaded.lora, 64)


@needs_kernel
def test_a_built_library_is_kept_and_reused(
    kernel_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = lowrank.load()
    assert first is not None and first.path.parent == kernel_cache
    built = first.path.stat().st_mtime_ns
    assert [p.name for p in kernel_cache.iterdir()] == [first.path.name]  # no partial file left
    lowrank._found.cache_clear()
    monkeypatch.setenv("CC", str(kernel_cache / "no-compiler"))  # a second build would fail
    again = lowrank.load()
    assert again is not None and again.path == first.path
    assert again.path.stat().st_mtime_ns == built


def test_without_a_compiler_the_side_path_stays_in_torch(
    kernel_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tiny_adapters: Path,
) -> None:
    monkeypatch.setenv("CC", str(kernel_cache / "no-compiler"))
    with caplog.at_level(logging.WARNING, logger="engine.native"):
        loaded = load_model(str(tiny_adapters), quantization="torch-int8", per_row=True)
    assert loaded.lora is not None and loaded.lora.state.kernel is None
    if native.cpu_target() is not None:
        assert "no C compiler" in caplog.text
    assert loaded.lora.table_dtype == torch.float32
    # ... and it still adapts: the side path changes the logits.
    adapter = lora.load_adapter("t1", str(tiny_adapters / "adapters" / "1"), loaded.lora, 64)
    ids = torch.tensor([[5, 6, 7, 1]])
    start = torch.full((1, 1), loaded.decoder_start_id)
    with torch.inference_mode():
        plain = loaded.model(input_ids=ids, decoder_input_ids=start).logits
        with loaded.lora.using(loaded.lora.gather([adapter], "")):
            adapted = loaded.model(input_ids=ids, decoder_input_ids=start).logits
    assert (adapted - plain).abs().max() > 1e-3


def test_the_kernel_can_be_turned_off(kernel_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_ADAPTER_KERNEL", "off")
    assert lowrank.load() is None
    assert not kernel_cache.exists()  # nothing built


def test_the_cpu_target_follows_the_cpus_flags() -> None:
    assert native.cpu_target({"avx512f", "avx2", "fma", "f16c"}) == "avx512"
    assert native.cpu_target({"avx2", "fma", "f16c"}) == "avx2"
    assert native.cpu_target({"avx2", "fma"}) is None  # no F16C: no half-precision loads
    assert native.cpu_target(set()) is None


@pytest.fixture(scope="module")
def tiny_adapters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.loading import quiet_libraries
    from engine.tiny_model import make_tiny_model

    quiet_libraries()
    return make_tiny_model(tmp_path_factory.mktemp("tiny-lowrank"), seed=0, adapters=1)


@needs_kernel
def test_a_prebuilt_library_is_used_without_a_compiler(
    kernel_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What deploy/Dockerfile's build stage runs; the runtime image has no compiler.
    assert native.main(["--build", str(tmp_path / "prebuilt")]) == 0
    monkeypatch.setenv("CC", str(tmp_path / "no-compiler"))
    kernel = lowrank.load()
    assert kernel is not None and kernel.path.parent == tmp_path / "prebuilt"
    assert not kernel_cache.exists()


@needs_kernel
def test_tables_that_do_not_fit_the_input_are_an_error_not_a_stray_read(
    kernels: list[lowrank.Kernel],
) -> None:
    a, b = _tables(2, 1, 4, 64, 64)
    x, out = torch.randn(2, 3, 64), torch.zeros(2, 3, 64)
    kernel = kernels[0]
    with pytest.raises(ValueError, match="do not fit"):
        kernel.run(a, lora.block(b), x[:1].contiguous(), out, 1)  # one row of input, two of tables
    with pytest.raises(ValueError, match="do not fit"):
        kernel.run(a, lora.block(b), x, torch.zeros(2, 3, 128), 1)  # a wider output
    with pytest.raises(ValueError, match="do not fit"):
        kernel.run(a.float(), lora.block(b), x, out, 1)  # fp32 tables
    kernel.run(a, lora.block(b), x, out, 1)
    assert out.abs().max() > 0


def test_a_decoder_step_runs_on_one_thread_and_a_long_pass_on_torchs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert lora._threads(torch.empty(32, 1, 8)) == 1  # 32 rows, one position each
    assert lora._threads(torch.empty(16, 64, 8)) == 8  # an encoder pass of 16 x 64
    assert lora._threads(torch.empty(1, lora.PARALLEL_POSITIONS, 8)) == 8


def test_without_a_home_the_library_is_kept_under_the_temporary_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("INFERENCE_KERNEL_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    folders = native._cache_folders()
    assert len(folders) == 1 and folders[0].parent == Path(tempfile.gettempdir())


def test_a_changed_shared_header_names_every_kernel_anew(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "csrc"
    shutil.copytree(native.CSRC, copy)
    monkeypatch.setattr(native, "CSRC", copy)
    before = {stem: native.library_name(stem, "avx2") for stem in native.STEMS}
    (copy / "simd.h").write_text((copy / "simd.h").read_text() + "\n/* changed */\n")
    after = {stem: native.library_name(stem, "avx2") for stem in native.STEMS}
    assert all(before[stem] != after[stem] for stem in native.STEMS)
