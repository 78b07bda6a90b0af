"""Log-probabilities and groups of rows (a request's prompts times its n choices) on the real
engine: the values are the model's, checked against a direct forward pass of the tiny model."""

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY

from engine.generation import MAX_TOP_LOGPROBS
from engine.runtime import (
    Engine,
    GenerationGroup,
    GenerationRequest,
    InvalidGeneration,
    PromptTooLong,
    QueueFull,
    RowFailed,
)
from engine.testing import generate

PROMPT = "The model runs over the river today"


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path):
    """The tiny model loaded by transformers alone, in float32 on the CPU."""
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    return model.eval()


def forward_logprobs(model, prompt_ids: list[int], tokens: list[int]) -> torch.Tensor:
    """log_softmax of the model's logits at each generated position (teacher forcing)."""
    start = model.config.decoder_start_token_id
    with torch.inference_mode():
        logits = model(
            input_ids=torch.tensor([prompt_ids]),
            decoder_input_ids=torch.tensor([[start, *tokens[:-1]]]),
        ).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


async def collect_group(group: GenerationGroup) -> list[list[str]]:
    texts: list[list[str]] = [[] for _ in group.jobs]
    async for index, delta in group:
        texts[index].append(delta.text)
    return texts


async def run_one(engine: Engine, request: GenerationRequest) -> GenerationGroup:
    group = await engine.submit_group([request])
    await collect_group(group)
    return group


@pytest.mark.parametrize("temperature", [0.0, 1.3])
async def test_logprobs_are_the_log_softmax_of_the_models_logits(
    make_any_engine: Callable[..., Engine], reference, tokenizer, temperature: float
) -> None:
    engine = make_any_engine()
    request = GenerationRequest(
        PROMPT, max_tokens=12, temperature=temperature, seed=7, logprobs=5, ignore_eos=True
    )
    group = await run_one(engine, request)
    result = group.results[0]
    assert result is not None and result.completion_tokens == 12
    entries = group.logprobs[0]
    assert [e.token_id for e in entries] == result.token_ids
    expected = forward_logprobs(reference, tokenizer(PROMPT).input_ids, result.token_ids)
    for position, entry in enumerate(entries):
        # Temperature changes what is drawn, never the reported distribution.
        assert entry.logprob == pytest.approx(float(expected[position, entry.token_id]), abs=1e-4)
        assert len(entry.top) == 5
        values = [alt.logprob for alt in entry.top]
        assert values == sorted(values, reverse=True)
        best = expected[position].topk(5)
        assert [alt.token_id for alt in entry.top] == best.indices.tolist()
        assert values == pytest.approx(best.values.tolist(), abs=1e-4)
        assert all(
            alt.text == tokenizer.convert_ids_to_tokens(alt.token_id).replace("\u2581", " ")
            for alt in entry.top
        )
        if temperature == 0:
            assert entry.top[0].token_id == entry.token_id  # greedy takes the best
    # The tokens' texts add up to the completion's text.
    assert "".join(e.text for e in entries) == result.text


async def test_the_end_of_sequence_gets_no_entry_and_zero_alternatives_give_none(
    engine: Engine,
) -> None:
    group = await run_one(engine, GenerationRequest("a", max_tokens=60, temperature=0, logprobs=0))
    result = group.results[0]
    assert result is not None
    entries = group.logprobs[0]
    eos = result.finish_reason == "stop"
    assert len(entries) == result.completion_tokens - (1 if eos else 0)
    assert all(entry.top == () and entry.logprob <= 0 for entry in entries)


async def test_without_logprobs_deltas_carry_none(engine: Engine) -> None:
    group = await engine.submit_group([GenerationRequest(PROMPT, max_tokens=8, temperature=0)])
    async for _, delta in group:
        assert delta.logprobs == () and delta.text
    assert group.logprobs == [[]]


async def test_logprobs_out_of_range_are_refused(engine: Engine) -> None:
    with pytest.raises(InvalidGeneration) as refused:
        await engine.submit_group([GenerationRequest("a", logprobs=MAX_TOP_LOGPROBS + 1)])
    assert refused.value.param == "logprobs"


async def test_a_group_matches_its_rows_submitted_alone_in_order(
    make_any_engine: Callable[..., Engine],
) -> None:
    engine = make_any_engine(max_wait_ms=0, max_batch=8)
    prompts = ["Hello café", PROMPT, "Hello café", "naïve"]
    requests = [GenerationRequest(p, max_tokens=10, temperature=0) for p in prompts]
    batches = REGISTRY.get_sample_value("inference_batch_size_count") or 0.0
    group = await engine.submit_group(requests)
    texts = await collect_group(group)
    # Queued together: one batch even without any wait for company (max_wait_ms=0).
    assert REGISTRY.get_sample_value("inference_batch_size_count") == batches + 1
    alone = [await generate(engine, p, max_tokens=10) for p in prompts]
    assert [r.token_ids for r in group.results if r] == [r.token_ids for r in alone]
    assert ["".join(t) for t in texts] == [r.text for r in alone]
    assert group.tokens_streamed == sum(r.completion_tokens for r in alone)


async def test_sampled_rows_of_one_prompt_differ(engine: Engine) -> None:
    requests = [
        GenerationRequest(PROMPT, max_tokens=12, temperature=1.0, seed=seed, ignore_eos=True)
        for seed in (1, 2, 3)
    ]
    group = await engine.submit_group(requests)
    await collect_group(group)
    tokens = [r.token_ids for r in group.results if r]
    assert len(tokens) == 3 and len({tuple(t) for t in tokens}) == 3
    # Each row is its own seeded draw, whatever its batch-mates (shared encoder pass included).
    again = await generate(engine, PROMPT, max_tokens=12, temperature=1.0, seed=2, ignore_eos=True)
    assert again.token_ids == tokens[1]


async def test_a_group_that_does_not_fit_the_queue_is_refused_whole(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(max_batch=1, max_queue=2, max_wait_ms=0)
    busy = await engine.submit(GenerationRequest("busy", max_tokens=400, ignore_eos=True))
    iterator = aiter(busy)
    await anext(iterator)  # running: the queue is empty
    try:
        with pytest.raises(QueueFull):
            await engine.submit_group([GenerationRequest("a", max_tokens=2)] * 3)
        assert engine.status()["queue_depth"] == 0  # nothing of it was queued
        group = await engine.submit_group([GenerationRequest("a", max_tokens=2)] * 2)
        assert engine.status()["queue_depth"] == 2
    finally:
        busy.cancel()
        async for _ in iterator:  # ends once the cancel reaches the row
            pass
    await collect_group(group)
    assert all(r is not None and r.finish_reason != "cancelled" for r in group.results)


async def test_cancelling_a_group_cancels_every_row(engine: Engine) -> None:
    group = await engine.submit_group(
        [GenerationRequest(PROMPT, max_tokens=400, ignore_eos=True)] * 3
    )
    iterator = aiter(group)
    await anext(iterator)
    await iterator.aclose()  # the consumer went away
    end = time.monotonic() + 60
    while not all(job.finished for job in group.jobs):
        assert time.monotonic() < end, "rows still running"
        await asyncio.sleep(0.05)


async def test_token_prompts_are_checked_and_fed_as_ids(engine: Engine, tokenizer) -> None:
    ids = tokenizer(PROMPT, add_special_tokens=False).input_ids
    prompt = engine.token_prompt(ids)
    assert prompt == tokenizer(PROMPT).input_ids  # the end of sequence added, as for text
    assert engine.token_prompt(prompt) == prompt  # not twice
    as_ids = await generate(engine, "", max_tokens=8, prompt_ids=tuple(prompt))
    as_text = await generate(engine, PROMPT, max_tokens=8)
    assert as_ids.token_ids == as_text.token_ids
    size = tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True)
    for bad in ([size], [-1], []):
        with pytest.raises(InvalidGeneration) as refused:
            engine.token_prompt(bad)
        assert refused.value.param == "prompt"
    with pytest.raises(PromptTooLong):
        engine.token_prompt([5] * (engine.max_input_tokens + 1))


async def test_a_row_that_fails_fails_its_group_and_cancels_the_others(engine: Engine) -> None:
    from engine.tests.test_row_isolation import ExplodingStop

    good = GenerationRequest(PROMPT, max_tokens=400, temperature=0, ignore_eos=True)
    stop = (ExplodingStop("never here"),)
    bad = GenerationRequest("Hello", max_tokens=12, temperature=0, stop=stop, ignore_eos=True)
    group = await engine.submit_group([good, bad, good])
    with pytest.raises(RowFailed, match="RuntimeError"):
        await collect_group(group)
    end = time.monotonic() + 60
    while not all(job.finished for job in group.jobs):
        assert time.monotonic() < end, "the other rows still run"
        await asyncio.sleep(0.05)
    assert engine.is_ready and len(engine._scheduler) == 0
