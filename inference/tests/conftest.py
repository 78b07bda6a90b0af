"""Fixtures for the API tests (the engines themselves come from engine/tests/fixtures.py)."""

from collections.abc import Callable, Iterator

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
