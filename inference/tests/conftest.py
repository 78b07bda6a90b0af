"""Fixtures for the API tests (the engines themselves come from engine/tests/fixtures.py)."""

from collections.abc import Callable, Iterator

import pytest

from engine.runtime import Engine
from inference import services


@pytest.fixture
def installed() -> Iterator[Callable[[Engine], Engine]]:
    """Install an engine as the process's one for a test; restore the previous after."""
    previous = services.set_engine(None)

    def install(engine: Engine) -> Engine:
        services.set_engine(engine)
        return engine

    yield install
    services.set_engine(previous)
