"""Django glue: the process's engine, /readyz, error mapping, start-up and draining."""

import asyncio
import signal
import socket
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
from django.test import AsyncClient, override_settings

from core.errors import ContextLengthExceeded, InvalidRequest, ModelUnavailable, Overloaded
from engine.runtime import Engine, GenerationRequest
from engine.testing import tiny_config
from inference import engines


def failed_engine(tiny_model_dir: Path) -> Engine:
    engine = Engine(tiny_config(tiny_model_dir, model="/nonexistent/flan-t5-base"))
    engine.start()
    engine.wait_ready(30)
    return engine


def test_a_failed_model_names_the_reason_and_the_fix(installed, tiny_model_dir: Path) -> None:
    installed(failed_engine(tiny_model_dir))
    status = engines.model_status()
    assert status["state"] == "failed" and "does not exist" in status["detail"]
    with pytest.raises(ModelUnavailable) as unavailable:
        engines.require_engine()
    message = unavailable.value.message
    assert "could not be loaded" in message and "INFERENCE_MODEL" in message
    assert "make run-tiny" in message and unavailable.value.status == 503
    assert "/nonexistent" not in message  # server paths stay on /readyz and in the log


@pytest.mark.django_db(transaction=True)
async def test_readyz_is_503_with_the_reason_until_the_model_is_ready(
    installed, tiny_model_dir: Path, make_engine
) -> None:
    installed(failed_engine(tiny_model_dir))
    response = await AsyncClient().get("/readyz")
    model = response.json()["checks"]["model"]
    assert response.status_code == 503 and model["state"] == "failed"
    assert "does not exist" in model["detail"]
    installed(make_engine())
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 200 and response.json()["checks"]["model"]["ok"] is True


@pytest.mark.django_db(transaction=True)
async def test_readyz_stays_200_but_degraded_when_a_shared_dependency_fails(
    installed, make_engine, settings
) -> None:
    from core.redis import reset_clients
    from ratelimit import limiter

    installed(make_engine())
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    saved = settings.REDIS_URL, settings.RATELIMIT_REDIS_URL
    settings.REDIS_URL = settings.RATELIMIT_REDIS_URL = dead
    reset_clients()
    limiter.reset_state()
    try:
        response = await AsyncClient().get("/readyz")
    finally:
        settings.REDIS_URL, settings.RATELIMIT_REDIS_URL = saved
        reset_clients()
        limiter.reset_state()
    body = response.json()
    # Every replica shares Redis: failing them all would turn degraded into down.
    assert response.status_code == 200 and body["ready"] is True and body["degraded"] is True
    assert body["checks"]["redis"]["ok"] is False and body["checks"]["ratelimit"]["ok"] is False
    assert body["checks"]["database"] == {"ok": True}


async def test_engine_errors_become_client_errors(installed, make_engine) -> None:
    engine = installed(make_engine(max_batch=1, max_queue=1, max_wait_ms=0, max_input_tokens=8))
    with pytest.raises(ContextLengthExceeded) as too_long:
        await engines.engine_submit(GenerationRequest("the model runs " * 10))
    assert too_long.value.code == "context_length_exceeded" and too_long.value.param == "prompt"
    assert too_long.value.status == 400
    with pytest.raises(InvalidRequest) as invalid:
        await engines.engine_submit(GenerationRequest("hi", top_p=2.0))
    assert invalid.value.param == "top_p"
    long = GenerationRequest("hi", max_tokens=400, ignore_eos=True)
    running = await engines.engine_submit(long)
    iterator = aiter(running)
    await anext(iterator)  # running: it has left the queue for its batch
    queued = await engines.engine_submit(long)
    with pytest.raises(Overloaded) as overloaded:
        await engines.engine_submit(long)
    assert overloaded.value.headers == {"Retry-After": "1"} and overloaded.value.status == 503
    for stream in (running, queued):
        stream.cancel()
    # aiter() of a stream is its generator, which aclose() ends.
    assert isinstance(iterator, AsyncGenerator)
    await iterator.aclose()
    ids = await engines.engine_encode_prompt("the model")
    assert len(ids) == engine.count_tokens("the model")
    with pytest.raises(ContextLengthExceeded):
        await engines.engine_encode_prompt("the model runs " * 10)  # 8 tokens at most here


async def test_a_loading_model_asks_clients_to_retry(installed, tiny_model_dir: Path) -> None:
    engine = installed(Engine(tiny_config(tiny_model_dir)))
    engine._set_state("loading", "loading")
    with pytest.raises(ModelUnavailable) as unavailable:
        await engines.engine_submit(GenerationRequest("hi"))
    assert "still loading" in unavailable.value.message
    assert unavailable.value.headers == {"Retry-After": "5"}


def test_start_engine_builds_the_engine_from_settings_once(installed, tiny_model_dir: Path) -> None:
    with override_settings(
        INFERENCE_MODEL=str(tiny_model_dir), INFERENCE_QUANTIZATION="none", INFERENCE_MAX_BATCH=3
    ):
        engine = engines.start_engine()
        assert engines.start_engine() is engine is engines.get_engine()
    try:
        assert engine.wait_ready(60) and engines.model_status()["ok"] is True
        assert engine.config.max_batch == 3 and engine.status()["quantization"] == "none"
    finally:
        engine.stop(10)


async def test_the_signal_handler_drains_then_hands_over(installed, make_engine) -> None:
    engine = installed(make_engine())
    request = GenerationRequest("the model runs", max_tokens=40, ignore_eos=True, temperature=0)
    stream = await engine.submit(request)
    handed_over = asyncio.Event()
    loop = asyncio.get_running_loop()

    def previous(signum: int, frame: object) -> None:
        assert engine.status()["state"] == "stopped"  # only after the drain
        loop.call_soon_threadsafe(handed_over.set)

    engines.drain_then(engine, previous, 30)(signal.SIGTERM, None)
    result = await stream.complete()
    await asyncio.wait_for(handed_over.wait(), 30)
    assert result.finish_reason == "length" and result.completion_tokens == 40
