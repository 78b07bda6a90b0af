"""Only tokens carrying our prefix (API_KEY_PREFIX) are ours."""

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from tenants import tokens
from tenants.auth import authenticate_token
from tenants.services import api_key_issue
from tenants.tests.helpers import record_of

KEY_ID, SECRET = "A" * tokens.KEY_ID_LENGTH, "b" * 40


def test_it_refuses_a_token_whose_prefix_is_not_ours(settings) -> None:
    settings.API_KEY_PREFIX = "sk"
    assert tokens.parse_token(f"sk_{KEY_ID}_{SECRET}") == (KEY_ID, SECRET)
    for prefix in ["pk", "SK", "xsk", "s", "", "sk_live"]:
        assert tokens.parse_token(f"{prefix}_{KEY_ID}_{SECRET}") is None, prefix
    assert tokens.parse_token(f"{KEY_ID}_{SECRET}") is None


def test_a_prefix_may_itself_hold_an_underscore(settings) -> None:
    settings.API_KEY_PREFIX = "sk_live"
    assert tokens.parse_token(f"sk_live_{KEY_ID}_{SECRET}") == (KEY_ID, SECRET)
    assert tokens.parse_token(f"sk_{KEY_ID}_{SECRET}") is None
    assert tokens.parse_token(f"sk_live_{KEY_ID}_{SECRET}", prefix="sk") is None


@pytest.mark.django_db(transaction=True)
async def test_a_real_key_under_another_prefix_is_refused(issued) -> None:
    _, key_id, secret = issued.token.split("_")
    assert await authenticate_token(issued.token) is not None
    foreign = f"pk_{key_id}_{secret}"
    assert await authenticate_token(foreign) is None
    response = await AsyncClient().get("/v1/models", headers={"Authorization": f"Bearer {foreign}"})
    assert response.status_code == 401


@pytest.mark.django_db(transaction=True)
async def test_keys_issued_under_an_underscored_prefix_work(tenant, settings) -> None:
    settings.API_KEY_PREFIX = "acme_live"
    issued = await sync_to_async(api_key_issue)(tenant=tenant, actor="t")
    assert issued.token.startswith("acme_live_")
    assert (await record_of(issued.token)).key_id == issued.api_key.key_id
