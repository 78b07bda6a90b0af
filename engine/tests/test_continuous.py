"""Continuous batching: waiting requests join the running batch between two decoder steps
(EngineConfig.scheduler "continuous", the default), in both modes (the model on a thread, and
in a model process of its own). Assertions are on order, never on time."""

import asyncio
import os
import signal
import time
from collections.abc import Callable, Sequence

import pytest
from prometheus_client import REGISTRY

from engine.batcher import Job, Scheduler
from engine.runtime import (
    Engine,
    GenerationFailed,
    GenerationRequest,
    GenerationStream,
)
from engine.testing import deltas, finish, generate

PROMPTS = [
    "Hello café",
    "The model runs over the river today and tomorrow, again and again",
    "🙂 東京",
    "Quiet green garden; the tenant waits before the queue starts",
    "naïve",
]
LONG = 400


def batches() -> float:
    return REGISTRY.get_sample_value("inference_batch_size_count", {}) or 0.0


def record_running(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[list[Job]]:
    """Every set of running rows the queue reports (at each batch start and admission)."""
    seen: list[list[Job]] = []
    track = engine._scheduler.track

    def tracked(running: Sequence[Job]) -> None:
        seen.append(list(running))
        track(running)

    monkeypatch.setattr(engine._scheduler, "track", tracked)
    return seen


def ran_together(seen: list[list[Job]], *streams: GenerationStream) -> bool:
    jobs = {id(stream._job) for stream in streams}
    return any(jobs <= {id(job) for job in running} for running in seen)


def request(prompt: str, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(prompt, max_tokens=max_tokens, temperature=0, ignore_eos=True)


async def test_a_short_request_that_arrives_during_a_long_one_finishes_first(
    make_any_engine: Callable[..., Engine],
) -> None:
    engine = make_any_engine()
    before = batches()
    long = await engine.submit(request(PROMPTS[1], LONG))
    iterator = await deltas(long, 1)
    short = await generate(engine, PROMPTS[0], max_tokens=3)
    assert long.result is None  # still decoding when the short one is done
    assert batches() == before + 1  # the short one joined the long one's batch
    long.cancel()
    assert (await finish(iterator, long)).finish_reason == "cancelled"
    assert short.completion_tokens >= 1


async def test_static_batching_stays_behind_its_setting(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(scheduler="static")
    long = await engine.submit(request(PROMPTS[1], 30))
    iterator = await deltas(long, 1)
    short = await engine.submit(request(PROMPTS[0], 3))
    short_done = asyncio.ensure_future(short.complete())
    first, _ = await asyncio.wait(
        [asyncio.ensure_future(finish(iterator, long)), short_done],
        return_when=asyncio.FIRST_COMPLETED,
    )
    done = first.pop().result()
    assert done.completion_tokens == 30  # the long one ended first: the short one waited
    # The task that consumes the short stream, never a second consumer of it (two readers of
    # one stream split its events, and the one that misses the end waits for ever).
    assert (await short_done).completion_tokens == 3


@pytest.mark.parametrize("prefill_thread", ["off", "on"])
async def test_rows_decode_as_alone_whatever_joins_and_leaves_around_them(
    make_any_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch, prefill_thread: str
) -> None:
    # on: the newcomers' encoder passes run on a thread of their own beside the steps
    # (engine/prefill.py); off: in pauses between two steps.
    engine = make_any_engine(max_batch=8, prefill_thread=prefill_thread)
    limits = [60, 30, 20, 12]
    alone = [
        await generate(engine, p, max_tokens=n, ignore_eos=True)
        for p, n in zip(PROMPTS[:4], limits, strict=True)
    ]
    seen = record_running(engine, monkeypatch)
    first = await engine.submit(request(PROMPTS[0], limits[0]))
    first_it = await deltas(first, 3)
    second = await engine.submit(request(PROMPTS[1], limits[1]))
    second_it = await deltas(second, 2)
    doomed = await engine.submit(request(PROMPTS[4], LONG))  # cancelled mid-batch
    third = await engine.submit(request(PROMPTS[2], limits[2]))
    doomed_it = await deltas(doomed, 1)
    doomed.cancel()
    fourth = await engine.submit(request(PROMPTS[3], limits[3]))  # joins after the cancel
    results = [
        await finish(first_it, first),
        await finish(second_it, second),
        await third.complete(),
        await fourth.complete(),
    ]
    assert (await finish(doomed_it, doomed)).finish_reason == "cancelled"
    # Each joined the first one's batch, the last one after the cancelled one left.
    assert all(ran_together(seen, first, other) for other in (second, doomed, third, fourth))
    assert ran_together(seen, first, second, third, doomed)
    assert [r.token_ids for r in results] == [r.token_ids for r in alone]
    assert [r.text for r in results] == [r.text for r in alone]


async def test_a_cancel_mid_batch_frees_its_row_for_a_waiting_request(
    make_any_engine: Callable[..., Engine],
) -> None:
    engine = make_any_engine(max_batch=2, max_wait_ms=500)
    before = batches()
    cancelled, running = [await engine.submit(request(PROMPTS[1], LONG)) for _ in range(2)]
    iterators = await asyncio.gather(deltas(cancelled, 1), deltas(running, 1))
    waiting = await engine.submit(request(PROMPTS[0], 3))  # no free row
    cancelled.cancel()
    assert (await waiting.complete()).completion_tokens == 3
    assert running.result is None  # it joined the running row's batch
    assert batches() == before + 1
    running.cancel()
    results = [await finish(it, s) for it, s in zip(iterators, (cancelled, running), strict=True)]
    assert {r.finish_reason for r in results} == {"cancelled"}


async def test_the_token_budget_is_never_exceeded_and_a_waiting_request_joins_when_room_frees(
    make_any_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = (8 + 10) + (8 + 60)  # one 8-token prompt with 10 tokens, one with 60
    engine = make_any_engine(max_batch=8, max_wait_ms=500, token_budget=budget)
    held: list[tuple[int, set[int]]] = []
    track = engine._scheduler.track

    def tracked(running: Sequence[Job]) -> None:
        held.append((sum(job.tokens for job in running), {id(job) for job in running}))
        track(running)

    monkeypatch.setattr(engine._scheduler, "track", tracked)
    ids = tuple(engine.encode_prompt(PROMPTS[0]))[:1] * 8  # 8 prompt tokens each

    def make(max_tokens: int) -> GenerationRequest:
        return GenerationRequest(
            "", max_tokens=max_tokens, temperature=0, ignore_eos=True, prompt_ids=ids
        )

    short, long = [await engine.submit(make(n)) for n in (10, 60)]
    iterator = await deltas(long, 1)
    waiting = await engine.submit(make(10))
    assert (await waiting.complete()).completion_tokens == 10
    assert long.result is None  # it ran beside the long one, once the short one had left
    assert (await short.complete()).completion_tokens == 10
    await finish(iterator, long)
    jobs = {name: id(stream._job) for name, stream in (("s", short), ("l", long), ("w", waiting))}
    assert max(tokens for tokens, _ in held) <= budget
    assert not any({jobs["s"], jobs["w"]} <= running for _, running in held)
    assert any({jobs["l"], jobs["w"]} <= running for _, running in held)


async def test_shutdown_drains_a_batch_that_others_joined(
    make_any_engine: Callable[..., Engine],
) -> None:
    engine = make_any_engine(max_batch=4)
    first = await engine.submit(request(PROMPTS[1], 40))
    iterator = await deltas(first, 1)
    joined = await engine.submit(request(PROMPTS[0], 30))
    joined_it = await deltas(joined, 1)
    stopping = asyncio.create_task(asyncio.to_thread(engine.stop, 60))
    results = [await finish(iterator, first), await finish(joined_it, joined)]
    assert await stopping is True
    assert [(r.finish_reason, r.completion_tokens) for r in results] == [
        ("length", 40),
        ("length", 30),
    ]


def of(tenant: str, max_tokens: int) -> GenerationRequest:
    """A greedy request of `tenant` that runs its max_tokens (the model-process fairness tests)."""
    return GenerationRequest(
        PROMPTS[3], max_tokens=max_tokens, temperature=0, ignore_eos=True, tenant=tenant
    )


async def test_in_a_model_process_an_idle_tenant_goes_before_a_flooding_ones_backlog(
    make_engine: Callable[..., Engine],
) -> None:
    # The model process keeps no queue of its own: newcomers are sent one encoder pass at a
    # time, so the serving process's fair queue picks who goes next. Paused while the requests
    # queue, the model process has been sent only the first of them.
    engine = make_engine(process=True, prefill_step_tokens=1)
    pid = engine.status()["model_process"]

    long = await engine.submit(of("flood", LONG))
    iterator = await deltas(long, 1)
    submitted: dict[str, tuple[float, GenerationStream]] = {}
    os.kill(pid, signal.SIGSTOP)
    try:
        for name in [f"flood{i}" for i in range(10)] + ["quiet"]:
            submitted[name] = (time.perf_counter(), await engine.submit(of(name[:5], 4)))
            # The engine thread has looked for newcomers: without the bound on what the model
            # process is sent, the whole flood would wait there, first come first served.
            await asyncio.sleep(0.2 if name in ("flood9", "quiet") else 0)
    finally:
        os.kill(pid, signal.SIGCONT)
    first_token: dict[str, float] = {}
    for name, (at, stream) in submitted.items():
        result = await asyncio.wait_for(stream.complete(), timeout=120)
        assert result.first_token_seconds is not None
        first_token[name] = at + result.first_token_seconds
    long.cancel()
    await finish(iterator, long)
    order = sorted(first_token, key=first_token.__getitem__)
    # Before the pause the model process had at most flood0 (its pass begun) and flood1 (sent
    # as that pass began); then the quiet tenant's request, not sixth behind the whole flood.
    assert order.index("quiet") <= 2, order


@pytest.mark.parametrize(
    "max_batch",
    [
        # A full batch (a long flood row and a flood newcomer sent for its encoder pass): the
        # quiet tenant's request takes the headroom row.
        pytest.param(2, id="full-batch"),
        # Rows free and no flood: the quiet tenant, with no row waiting, would queue behind the
        # newcomer's pass (_Room.behind).
        pytest.param(8, id="behind-another-tenants-pass"),
    ],
)
async def test_in_a_model_process_a_quiet_tenant_starts_before_a_pass_not_yet_begun(
    make_engine: Callable[..., Engine], max_batch: int
) -> None:
    # The quiet request is sent at once, marked urgent, instead of waiting for the newcomer's
    # pass to begin; the model process encodes it whole at the next pause, so its first token
    # comes before the newcomer's, whose pass is cut per layer.
    engine = make_engine(
        process=True, prefill_step_tokens=1, max_batch=max_batch, tenant_headroom=1
    )
    pid = engine.status()["model_process"]

    long = await engine.submit(of("flood", LONG))
    iterator = await deltas(long, 1)
    os.kill(pid, signal.SIGSTOP)
    try:
        newcomer = await engine.submit(of("flood", 4))
        await asyncio.sleep(0.2)  # sent to the (paused) model process: its pass not begun
        quiet = await engine.submit(of("quiet", 4))
        await asyncio.sleep(0.2)
    finally:
        os.kill(pid, signal.SIGCONT)
    order: list[str] = []

    async def first(name: str, stream: GenerationStream) -> None:
        pieces = aiter(stream)
        await asyncio.wait_for(anext(pieces), timeout=120)
        order.append(name)
        async for _ in pieces:
            pass

    await asyncio.gather(first("newcomer", newcomer), first("quiet", quiet))
    long.cancel()
    await finish(iterator, long)
    assert order == ["quiet", "newcomer"]


async def test_a_killed_model_process_fails_the_rows_that_joined_too(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(process=True)
    pid = engine.status()["model_process"]
    streams = [await engine.submit(request(PROMPTS[1], LONG))]
    iterators = [await deltas(streams[0], 1)]
    streams.append(await engine.submit(request(PROMPTS[0], LONG)))
    iterators.append(await deltas(streams[1], 1))  # both decoding
    os.kill(pid, signal.SIGKILL)
    for iterator in iterators:
        with pytest.raises(GenerationFailed, match="model process exited"):
            async for _ in iterator:
                pass
    assert await asyncio.to_thread(engine.wait_ready, 60)
    assert (await generate(engine, PROMPTS[0], max_tokens=3)).completion_tokens > 0


def _job(prompt_tokens: int, max_tokens: int) -> Job:
    return Job(GenerationRequest("", max_tokens=max_tokens), [1] * prompt_tokens)


def test_newcomers_are_bounded_by_rows_tokens_and_the_encoder_budget() -> None:
    scheduler = Scheduler(
        max_batch=4, max_wait_ms=0, max_queue=16, token_budget=1000, max_prefill_tokens=600
    )
    running = [_job(100, 100)]
    for job in [_job(200, 50) for _ in range(4)]:
        scheduler.put(job)
    # Encoder tokens: three newcomers of 200 tokens are 600, a fourth would be 800.
    joiners = scheduler.take_joiners(running)
    assert len(joiners) == 3
    # Rows: four in all. Tokens: 200 + 3 x 250 = 950 held, the last one's 250 do not fit.
    assert scheduler.take_joiners(running + joiners) == []
    assert len(scheduler.take_joiners(joiners)) == 1
    # A job larger than the whole budget runs, alone, once the batch is empty.
    scheduler.put(huge := _job(500, 900))
    assert scheduler.take_joiners(running) == []
    assert scheduler.take_batch() == [huge]


def test_a_job_too_large_for_the_encoder_budget_still_joins_alone() -> None:
    scheduler = Scheduler(max_batch=4, max_wait_ms=0, max_queue=16, max_prefill_tokens=100)
    long, short = _job(300, 10), _job(5, 10)
    scheduler.put(long)
    scheduler.put(short)
    assert scheduler.take_joiners([_job(5, 10)]) == [long]
    assert scheduler.take_joiners([_job(5, 10)]) == [short]


async def test_a_flooding_tenant_does_not_hold_back_another_tenants_first_token(
    make_any_engine: Callable[..., Engine],
) -> None:
    # One row at a time, so the order rows start in is the order they finish in. The flooding
    # tenant's backlog is queued first; the quiet tenant's one request must not wait behind it.
    engine = make_any_engine(max_batch=1)

    def tenant_request(tenant: str, prompt: str) -> GenerationRequest:
        return GenerationRequest(
            prompt, max_tokens=12, temperature=0, ignore_eos=True, tenant=tenant
        )

    running = await engine.submit(tenant_request("flood", PROMPTS[1]))
    iterator = await deltas(running, 1)  # the flood's first row holds the only slot
    backlog = [await engine.submit(tenant_request("flood", p)) for p in PROMPTS * 2]
    quiet = await engine.submit(tenant_request("quiet", PROMPTS[0]))
    order: list[str] = []

    async def finished(name: str, stream: GenerationStream) -> None:
        await stream.complete()
        order.append(name)

    await asyncio.gather(
        finish(iterator, running),
        finished("quiet", quiet),
        *(finished(f"flood-{index}", stream) for index, stream in enumerate(backlog)),
    )
    # First come, first served would put the quiet request last, behind ten flood requests.
    assert order.index("quiet") <= 1, order
