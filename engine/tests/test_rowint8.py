"""Row-scaled int8 (torch-int8): a row's result does not depend on its batch-mates."""

import asyncio
import gc
from collections.abc import Callable

import pytest
import torch

from engine.rowint8 import FusedRowInt8, RowInt8Linear, RowInt8Slice, RowScale, quantize_rows
from engine.runtime import Engine
from engine.testing import generate

SIZES = (1, 2, 5, 16)


def linear(inputs: int = 256, outputs: int = 192) -> torch.nn.Linear:
    torch.manual_seed(0)
    layer = torch.nn.Linear(inputs, outputs, bias=False)
    layer.weight.data.normal_(0.0, 0.05)
    return layer


def batches(row: torch.Tensor) -> list[torch.Tensor]:
    """row first, with mates of every size in SIZES, ordinary and 8 times larger."""
    generator = torch.Generator().manual_seed(1)
    out = []
    for size in SIZES:
        mates = torch.randn(size - 1, row.shape[-1], generator=generator)
        out += [torch.cat([row[None], mates]), torch.cat([row[None], mates * 8])]
    return out


def row_zero_results(layer: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    row = torch.randn(256, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        return [layer(batch)[0] for batch in batches(row)]


def test_a_rows_output_is_bitwise_the_same_whatever_its_mates_and_batch_size() -> None:
    results = row_zero_results(RowInt8Linear(linear()))
    assert all(torch.equal(result, results[0]) for result in results)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_per_tensor_dynamic_quantization_moves_a_row_with_its_mates() -> None:
    # What torch-int8 was before: the same check fails, so it does check something.
    dynamic = torch.ao.quantization.quantize_dynamic(
        torch.nn.Sequential(linear()), {torch.nn.Linear}, dtype=torch.qint8
    )
    results = row_zero_results(dynamic)
    assert not all(torch.equal(result, results[0]) for result in results)


def test_its_error_against_fp32_is_bounded_even_beside_large_mates() -> None:
    exact, quantized = linear(), RowInt8Linear(linear())
    row = torch.randn(256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = exact(row[None])[0]
        for batch in batches(row):
            error = (quantized(batch)[0] - expected).norm() / expected.norm()
            assert error < 0.03  # 7-bit activations, 8-bit weights


def test_rows_of_any_rank_and_zero_rows_come_out_right() -> None:
    layer = torch.nn.Linear(256, 192)
    quantized = RowInt8Linear(layer)
    hidden = torch.randn(3, 7, 256)
    hidden[1, 2] = 0
    with torch.no_grad():
        out, expected = quantized(hidden), layer(hidden)
    assert out.shape == (3, 7, 192)
    assert torch.equal(out[1, 2], layer.bias)  # a zero row gets the bias alone, no NaN
    assert ((out - expected).norm() / expected.norm()) < 0.03
    assert torch.equal(out[2, 3], quantized(hidden[2, 3][None])[0])


def test_layers_that_read_one_input_share_its_scaling_until_it_is_freed() -> None:
    block = torch.nn.Module()
    block.q, block.k = linear(), linear(256, 64)
    quantize_rows(block)
    assert isinstance(block.q, RowInt8Linear) and block.q.scale is block.k.scale
    hidden = torch.randn(4, 256)
    with torch.inference_mode():
        shared = block.k(hidden), block.q(hidden)
        alone = RowInt8Linear(linear(256, 64))(hidden), RowInt8Linear(linear())(hidden)
    assert all(torch.equal(a, b) for a, b in zip(shared, alone, strict=True))
    scale: RowScale = block.q.scale
    assert scale._scaled is not None
    del hidden
    gc.collect()
    assert scale._scaled is None  # the scaled copy does not outlive its input


def test_a_fused_group_gives_bitwise_what_its_linears_give_apart_whatever_the_mates() -> None:
    parts = [linear(), linear(256, 64), torch.nn.Linear(256, 32)]  # the last one with a bias
    fused, apart = FusedRowInt8(parts), [RowInt8Linear(part) for part in parts]
    row = torch.randn(256, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        for batch in batches(row):
            outputs = fused(batch)
            assert [o.shape[-1] for o in outputs] == [192, 64, 32]
            assert all(torch.equal(o, a(batch)) for o, a in zip(outputs, apart, strict=True))
            assert all(
                torch.equal(o[0], a(row[None])[0]) for o, a in zip(outputs, apart, strict=True)
            )


def test_named_groups_are_fused_and_their_linears_become_slices() -> None:
    block = torch.nn.Module()
    block.attention = torch.nn.Module()
    block.attention.q, block.attention.k, block.attention.o = linear(), linear(), linear(192, 256)
    quantize_rows(block, {"attention": [("q", "k")], "other": [("o",)]})
    q, k, o = block.attention.q, block.attention.k, block.attention.o
    assert isinstance(q, RowInt8Slice) and isinstance(k, RowInt8Slice) and q.group is k.group
    assert isinstance(o, RowInt8Linear)  # not named in a group of its own parent
    hidden = torch.randn(3, 256)
    with torch.inference_mode():
        assert torch.equal(k(hidden), RowInt8Linear(linear())(hidden))
        assert torch.allclose(q.weight(), linear().weight, atol=0.05 / 127 * 4)


async def test_a_greedy_prompt_writes_the_same_tokens_alone_and_among_eight_others(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(quantization="torch-int8", max_wait_ms=300, max_batch=9)
    prompt = "The quiet tenant reads the stream over the river"
    mates = [f"{word} " * (3 * i + 1) + "garden" for i, word in enumerate("abcdefgh")]
    mates[3] = "café " * 40 + "naïve façade déjà brûlée"
    alone = await generate(engine, prompt, max_tokens=40)
    together = await asyncio.gather(
        generate(engine, prompt, max_tokens=40),
        *(generate(engine, mate, max_tokens=40) for mate in mates),
    )
    assert together[0].token_ids == alone.token_ids
    assert [r.token_ids for r in together[1:]] == [
        (await generate(engine, mate, max_tokens=40)).token_ids for mate in mates
    ]
