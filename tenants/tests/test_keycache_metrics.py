"""auth_key_load_failures_total: the series the "key loads failing" alert reads."""

import pytest
from django.db import OperationalError

from core.errors import DependencyUnavailable
from tenants import keycache, metrics
from tenants.auth import authenticate_token

pytestmark = pytest.mark.django_db(transaction=True)


def failures() -> float:
    return float(metrics.key_load_failures._value.get())


async def test_a_load_that_postgres_refuses_is_counted(issued, monkeypatch) -> None:
    async def unreachable(key_id: str):
        raise OperationalError("connection refused")

    before = failures()
    monkeypatch.setattr(keycache, "_load_record", unreachable)
    with pytest.raises(DependencyUnavailable):
        await authenticate_token(issued.token)
    assert failures() == before + 1


async def test_a_load_that_succeeds_is_not(issued) -> None:
    before = failures()
    assert await authenticate_token(issued.token) is not None
    assert failures() == before
