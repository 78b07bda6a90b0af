"""Helpers for tests that run the real engine on the tiny model (used by inference/tests and
reusable by other apps' tests: build the model once, start engines, collect streams)."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.config import EngineConfig
from engine.loading import LoadedModel
from engine.runtime import Engine, GenerationRequest, GenerationResult
from engine.runtime import GenerationStream as Stream


# Any: the overrides are EngineConfig's fields, each of its own type; replace() refuses a name
# that is not one.
def tiny_config(model_dir: Path, **overrides: Any) -> EngineConfig:
    """An EngineConfig for the tiny model: fp32 on one CPU thread unless overridden."""
    config = EngineConfig(
        model=str(model_dir),
        allow_download=False,
        quantization="none",
        device="cpu",
        max_wait_ms=20,
        threads=1,
    )
    return replace(config, **overrides)


def start_ready(config: EngineConfig, timeout: float = 120.0) -> Engine:
    """Start an engine and block until it is ready; raises with its status otherwise."""
    engine = Engine(config)
    engine.start()
    if not engine.wait_ready(timeout):
        engine.stop(5)
        raise RuntimeError(f"engine did not become ready: {engine.status()}")
    return engine


def in_process_model(engine: Engine) -> LoadedModel:
    """The model a ready in-process engine loaded (its network, device and side paths); a
    serving process whose model lives in a model process holds only its tokenizer and facts."""
    model = engine._loaded()
    assert isinstance(model, LoadedModel), "this engine's model lives in a model process"
    return model


@contextmanager
def running_engine(config: EngineConfig) -> Iterator[Engine]:
    """A ready engine for the duration of the block, stopped afterwards."""
    engine = start_ready(config)
    try:
        yield engine
    finally:
        engine.stop(10)


async def collect(stream: Stream) -> tuple[list[str], GenerationResult]:
    """Every delta of a stream and its result."""
    deltas = [delta async for delta in stream]
    assert stream.result is not None  # noqa: S101 - a finished stream always has one
    return deltas, stream.result


# Any: the params are GenerationRequest's fields, each of its own type.
async def generate(engine: Engine, prompt: str, **params: Any) -> GenerationResult:
    """Submit one request and wait for its result (greedy unless told otherwise)."""
    params.setdefault("temperature", 0.0)
    stream = await engine.submit(GenerationRequest(prompt=prompt, **params))
    return await stream.complete()


def alone_and_together(
    engine: Engine, prompts: list[str], max_tokens: int
) -> tuple[list[str], list[str]]:
    """Each prompt's greedy answer asked alone, one after another, then all asked at once
    (called from a thread with no event loop running)."""

    async def together() -> list[str]:
        tasks = [generate(engine, prompt, max_tokens=max_tokens) for prompt in prompts]
        return [result.text for result in await asyncio.gather(*tasks)]

    alone = [asyncio.run(generate(engine, p, max_tokens=max_tokens)).text for p in prompts]
    return alone, asyncio.run(together())


async def deltas(stream: Stream, count: int = 1) -> AsyncIterator[str]:
    """Wait for `count` deltas of the stream; the iterator is returned, not dropped (dropping
    it would cancel the request)."""
    iterator = aiter(stream)
    for _ in range(count):
        await anext(iterator)
    return iterator


async def finish(iterator: AsyncIterator[str], stream: Stream) -> GenerationResult:
    """Read the rest of a stream whose iterator deltas() returned; its result."""
    async for _ in iterator:
        pass
    assert stream.result is not None
    return stream.result
