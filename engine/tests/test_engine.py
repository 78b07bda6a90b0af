"""The real engine on the tiny model (fp32 on the CPU unless a test says otherwise)."""

import asyncio
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from engine.runtime import (
    Engine,
    GenerationRequest,
    InvalidGeneration,
    ModelNotReady,
    PromptTooLong,
    QueueFull,
)
from engine.testing import collect, deltas, finish, generate, in_process_model

PROMPTS = [
    "Hello café",
    "The model runs over the river today and tomorrow, again and again",
    "🙂 東京",
    "a",
    "Quiet green garden; the tenant waits before the queue starts",
    "naïve",
]
LONG = 400  # tokens: far more than any short test needs, so cancellation is what ends it


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_concurrent_greedy_requests_each_match_the_request_alone(
    make_any_engine: Callable[..., Engine],
) -> None:
    engine = make_any_engine(max_wait_ms=300, max_batch=8)
    limits = [5 + 9 * i for i in range(len(PROMPTS))]
    batches_before = metric("inference_batch_size_count")
    together = await asyncio.gather(
        *(generate(engine, p, max_tokens=n) for p, n in zip(PROMPTS, limits, strict=True))
    )
    # They really ran as one batch of six ...
    assert metric("inference_batch_size_count") == batches_before + 1
    alone = [await generate(engine, p, max_tokens=n) for p, n in zip(PROMPTS, limits, strict=True)]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert [r.text for r in together] == [r.text for r in alone]
    # ... of different lengths: some rows ended early (end of sequence), others at max_tokens.
    reasons = {r.finish_reason for r in together}
    assert reasons == {"stop", "length"}
    assert len({r.completion_tokens for r in together}) >= 4


async def test_stream_deltas_add_up_to_the_text_and_counts_match_the_tokenizer(
    any_engine: Engine, tokenizer
) -> None:
    for prompt in PROMPTS:
        stream = await any_engine.submit(GenerationRequest(prompt, max_tokens=30, temperature=0))
        deltas, result = await collect(stream)
        assert "".join(deltas) == result.text
        ids = result.token_ids
        assert result.text == tokenizer.backend_tokenizer.decode(ids, skip_special_tokens=True)
        assert (
            result.prompt_tokens
            == len(tokenizer(prompt).input_ids)
            == any_engine.count_tokens(prompt)
        )
        assert result.completion_tokens == len(ids) <= 30
        if result.finish_reason == "length":
            assert result.completion_tokens == 30
        else:
            assert ids[-1] == tokenizer.eos_token_id


async def test_a_stop_string_ends_the_row_and_is_trimmed_from_text_and_stream(
    any_engine: Engine,
) -> None:
    full = await generate(any_engine, PROMPTS[1], max_tokens=40)
    stop = full.text[12:15]
    assert len(stop) == 3 and stop.strip()
    stream = await any_engine.submit(
        GenerationRequest(PROMPTS[1], max_tokens=40, temperature=0, stop=("zzzz", stop))
    )
    deltas, result = await collect(stream)
    assert result.finish_reason == "stop"
    assert result.text == full.text[: full.text.index(stop)] == "".join(deltas)
    assert result.completion_tokens < full.completion_tokens


async def test_a_seeded_request_is_reproducible_whatever_its_batch_mates(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(max_wait_ms=200)
    params = {"max_tokens": 25, "temperature": 0.9, "top_p": 0.95, "seed": 1234}
    alone = await generate(engine, PROMPTS[0], **params)
    mates = [generate(engine, p, max_tokens=25, temperature=1.0) for p in PROMPTS[1:4]]
    with_mates, *_ = await asyncio.gather(generate(engine, PROMPTS[0], **params), *mates)
    assert with_mates.token_ids == alone.token_ids
    other_seed = await generate(engine, PROMPTS[0], **{**params, "seed": 99})
    assert other_seed.token_ids != alone.token_ids
    greedy = await generate(engine, PROMPTS[0], max_tokens=25)
    assert alone.token_ids != greedy.token_ids


async def test_a_tiny_top_p_keeps_only_the_most_likely_token(engine: Engine) -> None:
    greedy = await generate(engine, PROMPTS[4], max_tokens=20)
    nucleus = await generate(engine, PROMPTS[4], max_tokens=20, temperature=1.5, top_p=1e-6)
    assert nucleus.token_ids == greedy.token_ids
    # Found by schemathesis: a top_p that float32 rounds to 0 once dropped every token.
    denormal = await generate(engine, PROMPTS[4], max_tokens=20, temperature=1.0, top_p=5e-324)
    assert denormal.token_ids == greedy.token_ids


async def test_a_vanishing_temperature_decodes_greedily(engine: Engine) -> None:
    greedy = await generate(engine, PROMPTS[4], max_tokens=20)
    tiny = await generate(engine, PROMPTS[4], max_tokens=20, temperature=1e-300)
    assert tiny.token_ids == greedy.token_ids


async def test_a_full_queue_refuses_at_once_and_a_cancel_frees_its_place(
    make_any_engine: Callable[..., Engine],
) -> None:
    engine = make_any_engine(max_batch=1, max_queue=1, max_wait_ms=0)
    running = await engine.submit(GenerationRequest(PROMPTS[1], max_tokens=LONG, ignore_eos=True))
    iterator = await deltas(running)  # in its batch: the queue is empty again
    queued = await engine.submit(GenerationRequest(PROMPTS[0], max_tokens=5))
    rejected_before = metric("inference_requests_total", result="rejected")
    with pytest.raises(QueueFull):
        await engine.submit(GenerationRequest(PROMPTS[2], max_tokens=5))
    assert metric("inference_requests_total", result="rejected") == rejected_before + 1
    queued.cancel()
    assert (await queued.complete()).finish_reason == "cancelled"
    third = await engine.submit(GenerationRequest(PROMPTS[2], max_tokens=5))
    running.cancel()
    assert (await finish(iterator, running)).finish_reason == "cancelled"
    assert (await third.complete()).finish_reason in {"stop", "length"}


async def test_a_cancelled_batch_stops_early_and_frees_the_model(
    make_any_engine: Callable[..., Engine],
) -> None:
    # Both must share one batch: submit() may let the model thread in between the two (the
    # tokenizer releases the interpreter lock), so the first waits for company; the batch
    # starts as soon as the second is there.
    engine = make_any_engine(max_batch=2, max_wait_ms=500)
    request = GenerationRequest(PROMPTS[1], max_tokens=LONG, ignore_eos=True, temperature=0)
    streams = [await engine.submit(request) for _ in range(2)]
    iterators = await asyncio.gather(*(deltas(s) for s in streams))
    for stream in streams:
        stream.cancel()
        stream.cancel()  # idempotent
    results = [await finish(it, s) for it, s in zip(iterators, streams, strict=True)]
    assert {r.finish_reason for r in results} == {"cancelled"}
    assert all(r.completion_tokens < LONG // 2 for r in results)
    after = await generate(engine, PROMPTS[0], max_tokens=3)
    assert after.queue_seconds < 1.5  # its 0.5 s wait for company, not the rest of the batch


async def test_a_request_behind_a_running_batch_reports_its_wait_as_queue_time(
    make_any_engine: Callable[..., Engine],
) -> None:
    engine = make_any_engine(max_batch=1, max_wait_ms=0)
    request = GenerationRequest(PROMPTS[1], max_tokens=60, ignore_eos=True, temperature=0)
    first = await engine.submit(request)
    iterator = await deltas(first)
    second = await engine.submit(GenerationRequest(PROMPTS[0], max_tokens=3, temperature=0))
    ran = await finish(iterator, first)
    waited = await second.complete()
    # It waited about as long as the first one ran (queue time is from submit(), in the
    # serving process, whichever process decodes).
    assert waited.queue_seconds >= 0.5 * ran.generation_seconds > 0
    assert waited.first_token_seconds is not None
    assert waited.first_token_seconds >= waited.queue_seconds


async def test_a_consumer_that_walks_away_cancels_its_row(any_engine: Engine) -> None:
    cancelled_before = metric("inference_requests_total", result="cancelled")
    request = GenerationRequest(PROMPTS[1], max_tokens=LONG, ignore_eos=True)
    stream = await any_engine.submit(request)
    async for _ in stream:
        break  # the client went away
    await asyncio.sleep(0.3)
    assert metric("inference_requests_total", result="cancelled") == cancelled_before + 1

    async def consume() -> None:
        stream = await any_engine.submit(
            GenerationRequest(PROMPTS[2], max_tokens=LONG, ignore_eos=True)
        )
        async for _ in stream:
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    task.cancel()  # a disconnect: the response's task is cancelled
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.3)
    assert metric("inference_requests_total", result="cancelled") == cancelled_before + 2
    assert len(any_engine._scheduler) == 0


async def test_shutdown_finishes_running_and_queued_rows_then_refuses(
    make_any_engine: Callable[..., Engine],
) -> None:
    engine = make_any_engine(max_batch=2, max_wait_ms=0)
    request = GenerationRequest(PROMPTS[1], max_tokens=60, ignore_eos=True, temperature=0)
    streams = [await engine.submit(request) for _ in range(3)]  # two run, one waits
    iterator = await deltas(streams[0])
    stopping = asyncio.create_task(asyncio.to_thread(engine.stop, 30))
    await asyncio.sleep(0.05)
    assert engine.status()["state"] == "stopped"  # /readyz turns false at once
    with pytest.raises(ModelNotReady):
        await engine.submit(GenerationRequest(PROMPTS[0]))
    results = [await finish(iterator, streams[0])] + [await s.complete() for s in streams[1:]]
    assert await stopping is True
    assert [(r.finish_reason, r.completion_tokens) for r in results] == [("length", 60)] * 3


async def test_shutdown_past_its_deadline_cancels_what_is_left(
    make_any_engine: Callable[..., Engine],
) -> None:
    engine = make_any_engine(max_batch=1, max_wait_ms=0)
    request = GenerationRequest(PROMPTS[1], max_tokens=LONG, ignore_eos=True)
    running, waiting = [await engine.submit(request) for _ in range(2)]
    iterator = await deltas(running)
    assert await asyncio.to_thread(engine.stop, 0.05) is True
    assert (await finish(iterator, running)).finish_reason == "cancelled"
    with pytest.raises(ModelNotReady):
        await waiting.complete()


async def test_a_prompt_over_the_limit_is_refused_not_truncated(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(max_input_tokens=16)
    fits = "the model runs"
    assert engine.count_tokens(fits) <= 16
    assert (await generate(engine, fits, max_tokens=2)).prompt_tokens == engine.count_tokens(fits)
    one_word = "themodelruns" * 10  # one word, many tokens: it has to be encoded to tell
    with pytest.raises(PromptTooLong) as too_long:
        await engine.submit(GenerationRequest(one_word))
    assert too_long.value.tokens == engine.count_tokens(one_word) > 16
    assert "at most 16 tokens" in str(too_long.value)
    with pytest.raises(PromptTooLong) as many_words:  # more words than tokens allowed
        await engine.submit(GenerationRequest("the model runs " * 10))
    assert "at least 31" in str(many_words.value)
    huge = "x" * (16 * 64 + 1)  # refused by length alone, never tokenized
    with pytest.raises(PromptTooLong):
        engine.count_tokens(huge)


async def test_the_default_input_limit_is_the_tokenizers_512(engine: Engine) -> None:
    assert engine.max_input_tokens == 512
    with pytest.raises(PromptTooLong):
        await engine.submit(GenerationRequest("again " * 600))


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10_000}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"stop": ("",)}, "stop"),
        ({"seed": 2**64}, "seed"),  # torch's manual_seed refuses it
    ],
)
async def test_out_of_range_parameters_are_refused(engine: Engine, params, param) -> None:
    with pytest.raises(InvalidGeneration) as invalid:
        await engine.submit(GenerationRequest("hello", **params))
    assert invalid.value.param == param


async def test_metrics_follow_a_request(any_engine: Engine) -> None:
    tokens = metric("inference_tokens_generated_total")
    prompt = metric("inference_prompt_tokens_total")
    ttft = metric("inference_time_to_first_token_seconds_count")
    completed = metric("inference_requests_total", result="completed")
    result = await generate(any_engine, PROMPTS[0], max_tokens=7)
    assert metric("inference_tokens_generated_total") == tokens + result.completion_tokens
    assert metric("inference_prompt_tokens_total") == prompt + result.prompt_tokens
    assert metric("inference_time_to_first_token_seconds_count") == ttft + 1
    assert metric("inference_requests_total", result="completed") == completed + 1
    assert metric("inference_model_ready") == 1 and metric("inference_model_load_seconds") > 0
    assert metric("inference_queue_depth") == 0
    assert result.first_token_seconds is not None
    assert 0 <= result.queue_seconds <= result.first_token_seconds


async def test_requests_before_start_are_refused_with_a_reason(tiny_model_dir) -> None:
    from engine.testing import tiny_config

    engine = Engine(tiny_config(tiny_model_dir))
    with pytest.raises(ModelNotReady, match="not running"):
        await engine.submit(GenerationRequest("hello"))
    assert engine.status()["state"] == "stopped" and engine.status()["ok"] is False


async def test_greedy_output_equals_transformers_generate(engine: Engine) -> None:
    import torch

    loaded = in_process_model(engine)
    for prompt in PROMPTS:
        ours = await generate(engine, prompt, max_tokens=24)
        inputs = loaded.tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            reference = loaded.model.generate(**inputs, max_new_tokens=24, do_sample=False)
        assert ours.token_ids == reference[0, 1:].tolist()  # minus the decoder start token


def test_the_model_thread_runs_at_a_lower_priority_than_the_process(make_engine) -> None:
    import os

    engine = make_engine(nice=5)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    model_thread = engine._thread
    assert model_thread is not None and model_thread.native_id is not None
    assert os.getpriority(os.PRIO_PROCESS, model_thread.native_id) == min(19, base + 5)
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the event loop's thread is untouched


async def test_ids_from_encode_prompt_are_not_encoded_again(engine, monkeypatch) -> None:
    prompt = "the model runs"
    ids = engine.encode_prompt(prompt)
    calls: list[str] = []
    real: Callable[[str], list[int]] = engine._model.encode

    def encode(text: str) -> list[int]:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(engine._model, "encode", encode)
    request = GenerationRequest(prompt, max_tokens=2, temperature=0.0, prompt_ids=tuple(ids))
    result = await (await engine.submit(request)).complete()
    assert calls == [] and result.prompt_tokens == len(ids)


def test_the_model_thread_can_be_kept_on_its_own_cpus(make_engine) -> None:
    import os

    cpu = min(os.sched_getaffinity(0))
    engine = make_engine(cpus=(cpu,))
    model_thread = engine._thread
    assert model_thread is not None and model_thread.native_id is not None
    assert os.sched_getaffinity(model_thread.native_id) == {cpu}
    assert len(os.sched_getaffinity(0)) >= 1  # the caller's own CPUs are untouched
