from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from django.utils import timezone

from tenants.models import ApiKey
from tenants.services import api_key_issue, api_key_revoke, tenant_suspend

pytestmark = pytest.mark.django_db(transaction=True)

EXPECTED_401 = {
    "error": {
        "message": "Invalid or missing API key.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


async def _get_models(**headers: str):
    return await AsyncClient().get("/v1/models", headers=headers)


async def test_it_accepts_bearer_and_x_api_key(issued) -> None:
    for headers in ({"Authorization": f"Bearer {issued.token}"}, {"X-API-Key": issued.token}):
        response = await _get_models(**headers)
        assert response.status_code == 200
        assert response.json()["data"][0]["object"] == "model"


async def _the_401_cases(issued, tenant) -> list[dict[str, str]]:
    prefix, key_id, secret = issued.token.split("_")
    revoked = await sync_to_async(api_key_issue)(tenant=tenant, actor="t")
    await sync_to_async(api_key_revoke)(api_key=revoked.api_key, actor="t")
    expired = await sync_to_async(api_key_issue)(tenant=tenant, actor="t")
    await ApiKey.objects.filter(pk=expired.api_key.pk).aupdate(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    return [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {issued.token}"},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": f"Bearer {prefix}_{'Z' * len(key_id)}_{secret}"},  # unknown key_id
        {"Authorization": f"Bearer {prefix}_{key_id}_{'Z' * len(secret)}"},  # wrong secret
        {"Authorization": f"Bearer {revoked.token}"},
        {"X-API-Key": expired.token},
    ]


async def test_every_failure_is_the_same_401(issued, tenant) -> None:
    for headers in await _the_401_cases(issued, tenant):
        response = await _get_models(**headers)
        assert response.status_code == 401, headers
        assert response.json() == EXPECTED_401, headers


async def test_a_suspended_tenant_gets_403_but_a_wrong_secret_still_the_same_401(
    issued, tenant
) -> None:
    await sync_to_async(tenant_suspend)(tenant=tenant, actor="t")
    response = await _get_models(Authorization=f"Bearer {issued.token}")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "tenant_suspended"
    prefix, key_id, secret = issued.token.split("_")
    response = await _get_models(Authorization=f"Bearer {prefix}_{key_id}_{'Z' * len(secret)}")
    assert response.status_code == 401 and response.json() == EXPECTED_401


async def test_a_key_without_the_scope_gets_403(tenant) -> None:
    issued = await sync_to_async(api_key_issue)(tenant=tenant, scopes=["completions"], actor="t")
    response = await _get_models(Authorization=f"Bearer {issued.token}")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"


async def test_the_openapi_schema_and_docs_are_served() -> None:
    schema = await AsyncClient().get("/v1/openapi.json")
    assert schema.status_code == 200
    assert "/v1/models" in schema.json()["paths"]
    docs = await AsyncClient().get("/v1/docs")
    assert docs.status_code == 200 and b"openapi.json" in docs.content
