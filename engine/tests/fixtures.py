"""The engine's test fixtures (a pytest plugin named in the root conftest, so the glue's tests
use them too): engines on the tiny model, built per test and stopped after; the C kernels
found from scratch."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine import attention, lowrank, native, qgemm, rowops
from engine.runtime import Engine
from engine.testing import start_ready, tiny_config


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path):
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
def kernel_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """The C kernels' `load()`s from scratch (engine/native.py), building into an empty cache
    folder with nothing prebuilt; the process's own kernels again after."""
    loaders = (attention._found, lowrank._found, rowops._found, qgemm._found)
    monkeypatch.setenv("INFERENCE_KERNEL_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "PREBUILT", tmp_path / "prebuilt")
    for load in loaders:
        load.cache_clear()
    yield tmp_path / "cache"
    for load in loaders:
        load.cache_clear()
