"""The decoder step's attention kernel (engine/attention.py, engine/csrc/attend.c): equal to
softmax attention in float64 on the same half-precision caches for every CPU target this
machine runs, a row's result bitwise independent of its batch-mates, where its columns sit and
the thread count, shapes that do not fit refused, and torch's path where it is turned off."""

from pathlib import Path

import pytest
import torch

from engine import attention, native
from engine.loading import load_model

needs_kernel = pytest.mark.skipif(native.cpu_target() is None, reason="needs AVX2 with F16C")

# rows, heads, head width, capacity: head widths below, at and between the vector widths (8,
# 16), T5's 64; capacities that leave tails in every block of 8, 16 and 64 columns.
SHAPES = [(3, 2, 8, 37), (5, 12, 64, 130), (2, 3, 20, 17), (4, 4, 16, 64), (1, 1, 64, 1)]


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> list[attention.Kernel]:
    """The library built for each target this CPU runs (AVX-512 machines run both)."""
    folder = tmp_path_factory.mktemp("kernels")
    return [
        attention.Kernel(native.build("attend", t, folder), t) for t in native.runnable_targets()
    ]


def _case(rows: int, heads: int, width: int, cap: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lo = torch.randint(0, max(1, cap // 2), (rows,), generator=generator)
    hi = torch.maximum(torch.randint(cap // 2, cap + 1, (rows,), generator=generator), lo + 1)
    return {
        "query": torch.randn(rows, heads, width, generator=generator),
        "keys": torch.randn(rows, heads, width, cap, generator=generator).half(),
        "values": torch.randn(rows, heads, cap, width, generator=generator).half(),
        "bias": torch.randn(heads, cap, generator=generator),
        "lo": lo,
        "hi": hi.clamp(max=cap),
    }


def _reference(case: dict[str, torch.Tensor], bias: bool) -> torch.Tensor:
    """Softmax attention in float64 over each row's columns lo..hi."""
    keys, values = case["keys"].double(), case["values"].double()
    scores = torch.einsum("rhd,rhdj->rhj", case["query"].double(), keys)
    if bias:
        scores = scores + case["bias"].double()
    columns = torch.arange(keys.shape[-1])
    outside = (columns < case["lo"][:, None]) | (columns >= case["hi"][:, None])
    scores = scores.masked_fill(outside[:, None, :], float("-inf"))
    return torch.einsum("rhj,rhjd->rhd", torch.softmax(scores, -1), values).float()


def _in_blocks(kernel: attention.Kernel, case: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The case's caches in the kernel's layout: the columns padded to whole blocks (with
    values no column reads), the keys in blocks (Kernel.blocked)."""
    keys, values = case["keys"], case["values"]
    bias = case.get("bias", torch.zeros(keys.shape[1], keys.shape[-1]))
    missing = -keys.shape[-1] % kernel.key_block
    if missing:
        keys = torch.cat([keys, torch.full((*keys.shape[:-1], missing), 1e4).to(keys.dtype)], -1)
        junk = torch.full((values.shape[0], values.shape[1], missing, values.shape[3]), 1e4)
        values = torch.cat([values, junk.to(values.dtype)], 2)
        bias = torch.cat([bias, torch.full((bias.shape[0], missing), 1e4)], 1)
    return case | {"keys": kernel.blocked(keys), "values": values, "bias": bias}


def _run(kernel: attention.Kernel, case: dict[str, torch.Tensor], bias: bool, threads: int = 2):
    slot = case.get("slot", torch.arange(case["query"].shape[0]))
    case = _in_blocks(kernel, case)
    return kernel.run(
        case["query"],
        case["keys"],
        case["values"],
        case["bias"] if bias else None,
        slot,
        case["lo"],
        case["hi"],
        threads,
    )


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [False, True], ids=["cross", "self"])
def test_the_kernel_is_softmax_attention_over_each_rows_columns(
    kernels: list[attention.Kernel], shape: tuple[int, int, int, int], bias: bool
) -> None:
    case = _case(*shape)
    expected = _reference(case, bias)
    for kernel in kernels:
        got = _run(kernel, case, bias)
        assert (got - expected).abs().max() < 2e-5, kernel.target


@needs_kernel
def test_a_rows_result_does_not_depend_on_its_mates_its_columns_or_the_threads(
    kernels: list[attention.Kernel],
) -> None:
    for kernel in kernels:
        case = _case(6, 12, 64, 150, seed=3)
        batched = _run(kernel, case, bias=True)
        for row in range(6):
            first, last = int(case["lo"][row]), int(case["hi"][row])
            # The row alone, its columns moved to 0.. (a fresh clock), on one thread.
            alone = {
                "query": case["query"][row : row + 1].contiguous(),
                "keys": case["keys"][row : row + 1, :, :, first:last].contiguous(),
                "values": case["values"][row : row + 1, :, first:last].contiguous(),
                "bias": case["bias"][:, first:last].contiguous(),
                "lo": torch.tensor([0]),
                "hi": torch.tensor([last - first]),
            }
            assert torch.equal(_run(kernel, alone, bias=True, threads=1)[0], batched[row])


@needs_kernel
def test_each_row_reads_the_slot_it_is_given(kernels: list[attention.Kernel]) -> None:
    case = _case(4, 3, 16, 40, seed=5)
    # The same caches in a pool of 7 slots, rows in slots 5, 0, 3, 6 (the others hold junk).
    order = torch.tensor([5, 0, 3, 6])
    pooled = dict(case)
    for name in ("keys", "values"):
        pool = torch.full((7, *case[name].shape[1:]), 1e4, dtype=torch.float16)
        pool[order] = case[name]
        pooled[name] = pool
    pooled["slot"] = order
    for kernel in kernels:
        assert torch.equal(_run(kernel, pooled, bias=True), _run(kernel, case, bias=True))


@needs_kernel
def test_rows_read_their_own_cross_caches_where_their_passes_made_them(
    kernels: list[attention.Kernel],
) -> None:
    # Three passes of 2, 1 and 3 rows, 30, 17 and 45 columns wide, joined; row r attends to its
    # prompt's first hi[r] columns: each row's result is the slot kernel's over the same caches
    # (bitwise: the same operations), whichever rows joined or left.
    generator = torch.Generator().manual_seed(9)
    layers, heads, width = 2, 3, 16

    def made(rows: int, columns: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            (
                torch.randn(rows, heads, width, columns, generator=generator).half(),
                torch.randn(rows, heads, columns, width, generator=generator).half(),
            )
            for _ in range(layers)
        ]

    passes = [made(2, 30), made(1, 17), made(3, 45)]
    caches = attention.RowCaches.made(passes[0])
    for cross in passes[1:]:
        caches = caches.joined(attention.RowCaches.made(cross))
    hi = torch.tensor([30, 12, 17, 1, 45, 20])
    where = [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1), (2, 2)]  # (pass, row) of each row
    query = torch.randn(6, heads, width, generator=generator)
    for kernel in kernels:
        for layer in range(layers):
            got = kernel.run_rows(query, caches, layer, hi, threads=2)
            for row, (index, place) in enumerate(where):
                keys, values = passes[index][layer]
                alone = {
                    "query": query[row : row + 1].contiguous(),
                    "keys": keys[place : place + 1].contiguous(),
                    "values": values[place : place + 1].contiguous(),
                    "lo": torch.tensor([0]),
                    "hi": hi[row : row + 1],
                }
                assert torch.equal(got[row], _run(kernel, alone, bias=False, threads=1)[0])
        # Rows 1 and 3 leave; the others keep their own caches (and the widest is 45 still).
        kept = caches.kept(torch.tensor([0, 2, 4, 5]))
        got = kernel.run_rows(query[[0, 2, 4, 5]].contiguous(), kept, 1, hi[[0, 2, 4, 5]], 1)
        full = kernel.run_rows(query, caches, 1, hi, threads=1)
        assert torch.equal(got, full[[0, 2, 4, 5]])
        assert kept.widest == 45 and len(kept.owners) == 4


@needs_kernel
def test_cross_caches_or_columns_that_do_not_fit_are_an_error_not_a_stray_read(
    kernels: list[attention.Kernel],
) -> None:
    keys, values = torch.zeros(2, 3, 8, 10).half(), torch.zeros(2, 3, 10, 8).half()
    caches = attention.RowCaches.made([(keys, values)])
    query, hi = torch.zeros(2, 3, 8), torch.tensor([10, 4])
    kernel = kernels[0]
    wrong = [
        (query, caches, 0, torch.tensor([11, 4])),  # a column past the row's caches
        (query, caches, 0, torch.tensor([-1, 4])),
        (query, caches, 1, hi),  # a layer the caches do not have
        (query[:1].contiguous(), caches, 0, hi),  # one query for two rows
        (torch.zeros(2, 3, 4), caches, 0, hi),  # another head width
        (query, caches, 0, hi.int()),
    ]
    for args in wrong:
        with pytest.raises(ValueError, match="do not fit"):
            kernel.run_rows(*args, threads=1)
    for cross in (
        [(keys.float(), values.float())],  # fp32
        [(keys, values[:, :, :9])],  # values narrower than the keys
        [(keys.transpose(2, 3), values)],  # not contiguous
    ):
        with pytest.raises(ValueError, match="do not fit"):
            attention.RowCaches.made(cross)


@needs_kernel
def test_self_caches_trimmed_in_place_move_each_slots_columns_to_the_front(
    kernels: list[attention.Kernel],
) -> None:
    generator = torch.Generator().manual_seed(4)
    slots = torch.tensor([3, 0, 4])
    for kernel in kernels:
        cap = 3 * kernel.key_block  # the moved columns cross blocks, from and to
        keys = torch.randn(5, 2, 8, cap, generator=generator).half()
        values = torch.randn(5, 2, cap, 8, generator=generator).half()
        blocked, moved_values = kernel.blocked(keys), values.clone()
        kernel.shift(blocked, moved_values, slots, 5, cap - 20)
        moved_keys = kernel.plain(blocked)
        assert torch.equal(moved_keys[slots, :, :, : cap - 20], keys[slots, :, :, 5 : cap - 15])
        assert torch.equal(moved_values[slots, :, : cap - 20], values[slots, :, 5 : cap - 15])
        # The other slots, and the columns past the moved ones, are untouched.
        assert torch.equal(moved_keys[[1, 2]], keys[[1, 2]])
        assert torch.equal(moved_keys[slots, :, :, cap - 20 :], keys[slots, :, :, cap - 20 :])
        wrong = [(slots, cap - 5, 6), (torch.tensor([5]), 1, 2), (slots, -1, 3)]
        for args in wrong:
            with pytest.raises(ValueError, match="do not fit"):
                kernel.shift(blocked, moved_values, *args)
        with pytest.raises(ValueError, match="do not fit"):  # keys not in blocks
            kernel.shift(keys.clone(), moved_values, slots, 5, 6)


@needs_kernel
def test_caches_and_columns_that_do_not_fit_are_an_error_not_a_stray_read(
    kernels: list[attention.Kernel],
) -> None:
    kernel = kernels[0]
    case = _case(2, 3, 16, 2 * kernel.key_block)  # whole blocks: the columns stay the case's
    wrong = {
        "a column past the cache": {"hi": torch.tensor([5, 2 * kernel.key_block + 1])},
        "a negative first column": {"lo": torch.tensor([-1, 0])},
        "fp32 keys": {"keys": case["keys"].float()},
        "one row of query for two of keys": {"query": case["query"][:1].contiguous()},
        "a bias narrower than the columns": {"bias": case["bias"][:, :10].contiguous()},
        "int32 columns": {"lo": case["lo"].int()},
        "transposed keys": {"keys": case["keys"].transpose(2, 3).contiguous()},
        "a slot past the buffers": {"slot": torch.tensor([0, 2])},
        "a negative slot": {"slot": torch.tensor([-1, 0])},
    }
    for change in wrong.values():
        with pytest.raises(ValueError, match="do not fit"):
            _run(kernel, case | change, bias=True)
    slot = torch.arange(2)
    with pytest.raises(ValueError, match="do not fit"):  # keys not in blocks
        kernel.run(
            case["query"], case["keys"], case["values"], None, slot, case["lo"], case["hi"], 1
        )


@needs_kernel
def test_rows_leave_and_join_the_kernels_caches_without_copying_the_others(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine import t5_decoder
    from engine.t5_decoder import T5DecoderStep, cross_caches

    monkeypatch.setattr(t5_decoder, "SLOTS", 3)  # as many slots as rows at first

    loaded = load_model(str(tiny_model_dir), quantization="torch-int8")
    inputs = loaded.tokenizer(["a b c", "d e", "f g h i"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        encoded = loaded.model.get_encoder()(**inputs)[0]
        step = T5DecoderStep(loaded.model, encoded, inputs.attention_mask, 8, loaded.attention)
        tokens = torch.zeros((3, 1), dtype=torch.long)
        step(tokens)
        buffers = [t.data_ptr() for t in (*step.keys, *step.values)]
        step.keep(torch.tensor([0, 2]))  # the middle row leaves
        assert step.slot.tolist() == [0, 2] and step.free == [1]
        step(tokens[:2])
        # A newcomer takes slot 1; its cross-attention caches are read where they were made.
        made = cross_caches(loaded.model, encoded[1:2], loaded.attention)
        step.extend(encoded[1:2], inputs.attention_mask[1:2], made)
        assert step.slot.tolist() == [0, 2, 1] and step.free == []
        assert step.cross_rows is not None
        assert int(step.cross_rows.keys[1, 2]) == made[1][0].data_ptr()
        assert int(step.cross_rows.values[1, 2]) == made[1][1].data_ptr()
        step(tokens)
    assert [t.data_ptr() for t in (*step.keys, *step.values)] == buffers  # never copied
    # One more row than the slots: the buffers double once, the new slots free.
    with torch.inference_mode():
        step.extend(encoded[:1], inputs.attention_mask[:1])
        step(torch.zeros((4, 1), dtype=torch.long))
    assert step.keys[0].shape[0] == 6 and sorted(step.free) == [4, 5]


@needs_kernel
def test_decoder_caches_are_half_precision_clamped_to_its_range(tiny_model_dir: Path) -> None:
    from engine.t5_decoder import T5DecoderStep

    loaded = load_model(str(tiny_model_dir), quantization="torch-int8")
    assert loaded.attention is not None
    inputs = loaded.tokenizer(["a b c"], return_tensors="pt")
    with torch.inference_mode():
        encoded = loaded.model.get_encoder()(**inputs)[0] * 1e6  # keys and values far past 65504
        step = T5DecoderStep(loaded.model, encoded, inputs.attention_mask, 4, loaded.attention)
        logits = step(torch.zeros((1, 1), dtype=torch.long))
    assert step.cross_rows is not None
    (cross,) = step.cross_rows.owners  # the row's own cross-attention caches, as made
    keys = cross[0][0]
    assert step.keys[0].dtype == keys.dtype == torch.float16
    assert keys.abs().max() == attention.HALF_MAX  # clamped, not infinite
    assert torch.isfinite(logits).all()


def test_an_8bit_model_on_the_cpu_gets_the_kernel_and_fp32_does_not(
    tiny_model_dir: Path,
) -> None:
    int8 = load_model(str(tiny_model_dir), quantization="torch-int8")
    fp32 = load_model(str(tiny_model_dir), quantization="none")
    assert fp32.attention is None
    assert (int8.attention is not None) == (native.cpu_target() is not None)


def test_the_kernel_can_be_turned_off(kernel_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_ATTENTION_KERNEL", "off")
    assert attention.load() is None
    assert not kernel_cache.exists()  # nothing built


@needs_kernel
def test_the_image_build_prebuilds_the_attention_library(
    kernel_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert native.main(["--build", str(tmp_path / "prebuilt")]) == 0
    monkeypatch.setenv("CC", str(tmp_path / "no-compiler"))
    kernel = attention.load()
    assert kernel is not None and kernel.path.parent == tmp_path / "prebuilt"
    assert not kernel_cache.exists()


@needs_kernel
def test_a_steps_keys_and_values_are_stored_as_torchs_indexed_assignment_stores_them(
    kernels: list[attention.Kernel],
) -> None:
    generator = torch.Generator().manual_seed(3)
    slots, heads, width = 6, 3, 20
    key = torch.randn(4, heads, width, generator=generator) * 300
    value = torch.randn(4, heads, width, generator=generator) * 300
    key[0, 0, :3] = torch.tensor([1e6, -1e6, 1.0 + 2**-11])  # clamped; a tie rounds to even
    value[1, 2, :2] = torch.tensor([-7e4, 65519.0])
    slot = torch.tensor([4, 0, 5, 2])
    for kernel in kernels:
        cap, column = 2 * kernel.key_block, kernel.key_block + 7  # in the second block
        keys = torch.randn(slots, heads, width, cap, generator=generator).half()
        values = torch.randn(slots, heads, cap, width, generator=generator).half()
        expected_keys, expected_values = keys.clone(), values.clone()
        stored = key.clamp(-attention.HALF_MAX, attention.HALF_MAX).half()
        expected_keys[slot, :, :, column] = stored
        expected_values[slot, :, column] = value.clamp(
            -attention.HALF_MAX, attention.HALF_MAX
        ).half()
        blocked = kernel.blocked(keys)
        kernel.store(key, value, blocked, values, slot, column)
        assert torch.equal(kernel.plain(blocked), expected_keys)
        assert torch.equal(values, expected_values)


@needs_kernel
def test_a_store_that_does_not_fit_is_an_error_not_a_stray_write(
    kernels: list[attention.Kernel],
) -> None:
    kernel = kernels[0]
    cap = kernel.key_block
    keys = kernel.blocked(torch.zeros(3, 2, 8, cap).half())
    values = torch.zeros(3, 2, cap, 8).half()
    key = value = torch.zeros(2, 2, 8)
    slot = torch.tensor([0, 2])
    wrong = [
        (key, value, keys, values, torch.tensor([0, 3]), 1),  # a slot past the buffers
        (key, value, keys, values, torch.tensor([-1, 0]), 1),  # a negative slot
        (key, value, keys, values, slot, cap),  # a column past the caches
        (key, value, kernel.plain(keys), values, slot, 1),  # keys not in blocks
        (key, value, keys, values, slot, -1),
        (key.half(), value, keys, values, slot, 1),  # half-precision input
        (key, value, keys.float(), values, slot, 1),  # fp32 caches
        (key[:1], value, keys, values, slot, 1),  # one key for two rows
        (key, value, keys, values, slot[:1], 1),
    ]
    for args in wrong:
        with pytest.raises(ValueError, match="do not fit"):
            kernel.store(*args)
    assert not keys.any() and not values.any()
