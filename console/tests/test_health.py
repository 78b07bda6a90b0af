import pytest
from django.test import AsyncClient

pytestmark = pytest.mark.django_db(transaction=True)


async def test_healthz_answers_without_a_key() -> None:
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_readyz_reports_each_dependency_and_is_503_until_the_model_is_ready() -> None:
    response = await AsyncClient().get("/readyz")
    body = response.json()
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["redis"] == {"ok": True}
    assert body["checks"]["ratelimit"]["ok"] is True
    assert body["checks"]["model"]["ok"] is False
    assert response.status_code == 503 and body["ready"] is False
