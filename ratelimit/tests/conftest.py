from collections.abc import Iterator

import pytest

from core.redis import reset_clients
from ratelimit import limiter


@pytest.fixture(autouse=True)
def fresh_limiter() -> Iterator[None]:
    """Each test starts with a closed breaker, an empty local limiter and no queued work."""
    limiter.reset_state()
    yield
    limiter.reset_state()
    reset_clients()
