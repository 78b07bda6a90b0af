"""A request may wait in the engine's queue at most max_queue_wait seconds: past that it is taken
out, never runs, and its stream raises QueueTimeout (503 overloaded with Retry-After), also
while the model is busy with a long batch."""

import asyncio
from collections.abc import Callable

import pytest
from django.test import AsyncClient
from prometheus_client import REGISTRY

from engine.batcher import Job, Scheduler
from engine.messages import Event, Failed
from engine.runtime import Engine, GenerationRequest, QueueTimeout
from engine.testing import collect, generate
from inference import engines

# Long enough to outlast the queue bound many times over (seconds on the tiny model).
LONG_RUN = 1500
WAIT = 0.3  # max_queue_wait in these tests


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _job(events: asyncio.Queue[Event]) -> Job:
    request = GenerationRequest("hello")
    return Job(request, [1], loop=asyncio.get_running_loop(), deliver=events.put_nowait)


async def _next_event(events: asyncio.Queue[Event]) -> Event:
    return await asyncio.wait_for(events.get(), timeout=30)


async def test_the_queue_expires_jobs_the_model_never_takes_in_order() -> None:
    scheduler = Scheduler(max_batch=1, max_wait_ms=0, max_queue=8, max_queue_wait=0.05)
    expired = metric("inference_requests_total", result="expired")
    events: asyncio.Queue[Event] = asyncio.Queue()
    jobs = [_job(events) for _ in range(3)]
    for job in jobs:
        scheduler.put(job)  # nobody calls take_batch: a model stuck in a long batch
    for _ in jobs:
        event = await _next_event(events)
        assert isinstance(event, Failed) and isinstance(event.error, QueueTimeout)
        assert "waited" in str(event.error)
    assert all(job.finished for job in jobs) and len(scheduler) == 0
    assert metric("inference_queue_depth") == 0
    assert metric("inference_requests_total", result="expired") == expired + 3
    late = _job(events)
    scheduler.put(late)  # the queue emptied meanwhile: the expiry thread must wake again
    assert isinstance(await _next_event(events), Failed) and late.finished
    scheduler.close()


async def test_a_job_taken_in_time_is_never_expired() -> None:
    scheduler = Scheduler(max_batch=1, max_wait_ms=0, max_queue=8, max_queue_wait=0.05)
    taken_events: asyncio.Queue[Event] = asyncio.Queue()
    taken = _job(taken_events)
    scheduler.put(taken)
    assert scheduler.take_batch() == [taken]  # queued: returns at once
    events: asyncio.Queue[Event] = asyncio.Queue()
    scheduler.put(later := _job(events))
    # Deadlines expire in queue order: by the time the later job has, the one taken would have.
    assert isinstance(await _next_event(events), Failed) and later.finished
    assert taken_events.empty() and not taken.finished
    scheduler.close()


async def test_a_request_queued_too_long_fails_while_the_running_batch_completes(
    make_any_engine: Callable[..., Engine],
) -> None:
    engine = make_any_engine(
        max_batch=1, max_wait_ms=0, max_queue_wait=WAIT, max_output_tokens=LONG_RUN
    )
    expired = metric("inference_requests_total", result="expired")
    request = GenerationRequest("busy", max_tokens=LONG_RUN, ignore_eos=True, temperature=0)
    running = await engine.submit(request)
    iterator = aiter(running)
    await anext(iterator)  # in its batch: the model thread is busy with it
    queued = await engine.submit(GenerationRequest("Hello", max_tokens=3, temperature=0))
    with pytest.raises(QueueTimeout):
        await asyncio.wait_for(queued.complete(), timeout=60)
    # It expired while the model was still inside that batch, not when it next took a batch.
    assert running.result is None
    assert metric("inference_requests_total", result="expired") == expired + 1
    assert len(engine._scheduler) == 0 and metric("inference_queue_depth") == 0
    async for _ in iterator:
        pass
    assert running.result is not None
    assert (running.result.finish_reason, running.result.completion_tokens) == ("length", LONG_RUN)
    # One that starts in time is unaffected by the bound.
    _, result = await collect(await engine.submit(GenerationRequest("Hello", max_tokens=3)))
    assert result.finish_reason in {"stop", "length"} and result.queue_seconds < WAIT
    assert metric("inference_requests_total", result="expired") == expired + 1


async def test_without_a_bound_a_request_waits_as_long_as_it_takes(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(max_batch=1, max_wait_ms=0)  # max_queue_wait 0: no bound
    request = GenerationRequest("busy", max_tokens=200, ignore_eos=True, temperature=0)
    running = await engine.submit(request)
    iterator = aiter(running)
    await anext(iterator)
    queued = await engine.submit(GenerationRequest("Hello", max_tokens=3, temperature=0))
    async for _ in iterator:
        pass
    assert running.result is not None
    waited = await queued.complete()
    assert waited.queue_seconds > 0 and waited.finish_reason in {"stop", "length"}
    assert engine._scheduler._reaper is None  # no expiry thread at all
    assert (await generate(engine, "Hello", max_tokens=2)).completion_tokens >= 1


@pytest.mark.django_db(transaction=True)
async def test_a_queue_timeout_answers_503_overloaded_with_retry_after(
    installed, make_engine, issued
) -> None:
    engine = installed(
        make_engine(max_batch=1, max_wait_ms=0, max_queue_wait=WAIT, max_output_tokens=LONG_RUN)
    )
    long = GenerationRequest("busy", max_tokens=LONG_RUN, ignore_eos=True)
    running = await engine.submit(long)
    iterator = aiter(running)
    await anext(iterator)  # in its batch now
    try:
        response = await AsyncClient().post(
            "/v1/completions",
            {"model": engines.served_model_id(), "prompt": "Hello", "max_tokens": 3},
            content_type="application/json",
            headers={"Authorization": f"Bearer {issued.token}"},
        )
        error = response.json()["error"]
        assert response.status_code == 503 and error["code"] == "overloaded"
        assert error["type"] == "server_error" and "waited too long" in error["message"]
        assert response["Retry-After"] == "5"
    finally:
        running.cancel()
        await iterator.aclose()


def test_the_mapping_of_a_queue_timeout_says_overloaded_with_retry_after() -> None:
    error = engines.api_error(QueueTimeout("The request waited 31.0s in the queue ..."))
    assert (error.status, error.code, error.headers) == (503, "overloaded", {"Retry-After": "5"})
    assert "31.0" not in error.message  # the engine's own words stay in the log
