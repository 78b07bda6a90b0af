"""A fault in one request's own work fails that request alone, never its batch-mates (both
modes: the model on a thread, and in a model process whose error events travel back)."""

import asyncio
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from engine.generation import SEED_MAX, SEED_MIN
from engine.runtime import (
    Engine,
    GenerationRequest,
    GenerationResult,
    GenerationStream,
    InvalidGeneration,
    RowFailed,
)
from engine.testing import collect, generate

GOOD = ["Hello café", "The model runs over the river", "naïve", "Quiet green garden"]


class ExplodingStop(str):
    """A stop string whose prefix check raises: a stand-in for a bug in one row's stop filter.
    Defined at module level so the model process can unpickle it (it imports this module)."""

    __slots__ = ()

    def startswith(self, *args: object) -> bool:
        raise RuntimeError("a fault in this row's stop filter")


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _one_batch_with(
    engine: Engine, bad: GenerationRequest
) -> tuple[list[tuple[list[str], GenerationResult]], GenerationStream]:
    """Four good greedy rows and one bad row, submitted together so they share one batch."""
    batches = metric("inference_batch_size_count")
    good = [GenerationRequest(p, max_tokens=12, temperature=0) for p in GOOD]
    streams = [await engine.submit(request) for request in good[:2]]
    bad_stream = await engine.submit(bad)
    streams += [await engine.submit(request) for request in good[2:]]
    results = await asyncio.wait_for(asyncio.gather(*map(collect, streams)), timeout=120)
    assert metric("inference_batch_size_count") == batches + 1  # really one batch of five
    return results, bad_stream


async def _assert_good_rows_as_alone(
    engine: Engine, together: list[tuple[list[str], GenerationResult]]
) -> None:
    alone = [await generate(engine, prompt, max_tokens=12) for prompt in GOOD]
    assert [r.token_ids for _, r in together] == [r.token_ids for r in alone]
    assert ["".join(deltas) for deltas, _ in together] == [r.text for r in alone]


async def test_a_seed_torch_refuses_fails_its_row_alone(
    make_any_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_any_engine(max_batch=8, max_wait_ms=500)
    # A caller that skips validate(): the seed reaches torch.Generator.manual_seed, which raises.
    bad = GenerationRequest("Hello", max_tokens=12, temperature=1.0, seed=SEED_MAX + 1)
    with monkeypatch.context() as patch:
        patch.setattr(GenerationRequest, "validate", lambda self, limit: None)
        failed = metric("inference_requests_total", result="failed")
        together, bad_stream = await _one_batch_with(engine, bad)
    with pytest.raises(InvalidGeneration) as invalid:
        await asyncio.wait_for(bad_stream.complete(), timeout=120)
    assert invalid.value.param == "seed"
    assert metric("inference_requests_total", result="failed") == failed + 1
    await _assert_good_rows_as_alone(engine, together)


async def test_a_stop_filter_that_raises_mid_decoding_fails_its_row_alone(
    make_any_engine: Callable[..., Engine],
) -> None:
    engine = make_any_engine(max_batch=8, max_wait_ms=500)
    stop = (ExplodingStop("never here"),)
    bad = GenerationRequest("Hello", max_tokens=12, temperature=0, stop=stop, ignore_eos=True)
    together, bad_stream = await _one_batch_with(engine, bad)
    with pytest.raises(RowFailed, match="RuntimeError"):
        await asyncio.wait_for(bad_stream.complete(), timeout=120)
    await _assert_good_rows_as_alone(engine, together)
    assert len(engine._scheduler) == 0 and engine.is_ready  # the engine serves on


async def test_the_seed_range_is_exactly_what_torch_takes(engine: Engine) -> None:
    for seed in (SEED_MIN, -1, SEED_MAX):
        result = await generate(engine, "Hello", max_tokens=3, temperature=1.0, seed=seed)
        assert result.completion_tokens >= 1
    for seed in (SEED_MIN - 1, SEED_MAX + 1):
        with pytest.raises(InvalidGeneration) as invalid:
            await engine.submit(GenerationRequest("Hello", temperature=1.0, seed=seed))
        assert invalid.value.param == "seed"
