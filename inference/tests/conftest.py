"""Fixtures for the API tests (the engines themselves come from engine/tests/fixtures.py)."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.runtime import Engine
from inference import engines


@pytest.fixture
def installed() -> Iterator[Callable[[Engine], Engine]]:
    """Install an engine as the process's one for a test; restore the previous after."""
    previous = engines.set_engine(None)

    def install(engine: Engine) -> Engine:
        engines.set_engine(engine)
        return engine

    yield install
    engines.set_engine(previous)


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two LoRA adapters of every Linear of the tiny model (rank 4, each its own seed), written
    once: as make_tiny_model --adapters 2 writes them."""
    from engine.tiny_model import ALL_T5_LINEARS, build_adapter

    folder = tmp_path_factory.mktemp("tiny-adapters")
    for number in (1, 2):
        build_adapter(
            tiny_model_dir,
            folder / str(number),
            seed=1000 * number,
            rank=4,
            strength=1.0,
            targets=ALL_T5_LINEARS,
        )
    return [folder / "1", folder / "2"]
