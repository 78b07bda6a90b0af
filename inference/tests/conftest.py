"""Fixtures for the engine tests: the tiny model is built once per session, engines per test."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inference import services
from inference.engine import Engine
from inference.testing import start_ready, tiny_config


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def make_engine(tiny_model_dir: Path) -> Iterator[Callable[..., Engine]]:
    """Start ready engines on the tiny model (fp32, CPU unless overridden); stopped after."""
    engines: list[Engine] = []

    def make(**overrides: object) -> Engine:
        engine = start_ready(tiny_config(tiny_model_dir, **overrides))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop(10)


@pytest.fixture(params=["thread", "process"])
def make_any_engine(
    request: pytest.FixtureRequest, make_engine: Callable[..., Engine]
) -> Callable[..., Engine]:
    """make_engine, once with the model on a thread and once in a model process of its own
    (EngineConfig.process): for the behaviour both must share."""
    process = request.param == "process"
    return lambda **overrides: make_engine(process=process, **overrides)


@pytest.fixture
def any_engine(make_any_engine: Callable[..., Engine]) -> Engine:
    """A ready engine with default batching, in each of the two modes."""
    return make_any_engine()


@pytest.fixture
def engine(make_engine: Callable[..., Engine]) -> Engine:
    """A ready fp32 engine on the tiny model with default batching."""
    return make_engine()


@pytest.fixture
def installed() -> Iterator[Callable[[Engine], Engine]]:
    """Install an engine as the process's one for a test; restore the previous after."""
    previous = services.set_engine(None)

    def install(engine: Engine) -> Engine:
        services.set_engine(engine)
        return engine

    yield install
    services.set_engine(previous)
