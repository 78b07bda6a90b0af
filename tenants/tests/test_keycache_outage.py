"""Postgres unreachable: cached keys keep working (stale-if-error), unknown keys get a 503.

The outage is injected at the one function that reads key rows (raising what psycopg raises
when the server is gone); loadtest/chaos cuts a real Postgres connection for the same path.
"""

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError
from django.test import AsyncClient

from core.errors import DependencyUnavailable
from core.redis import get_redis
from tenants import keycache, keysnapshot
from tenants.auth import authenticate_token
from tenants.models import ApiKey
from tenants.services import api_key_issue, api_key_revoke
from tenants.tests.helpers import record_of

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def postgres_down(monkeypatch):
    calls: list[str] = []

    async def unreachable(key_id: str):
        calls.append(key_id)
        raise OperationalError("connection refused")

    def cut() -> list[str]:
        monkeypatch.setattr(keycache, "_load_record", unreachable)
        return calls

    return cut


def expire_cache() -> None:
    """Age every cached record past its TTL (but well within the stale window)."""
    for key_id, (record, _fetched) in list(keycache.key_cache._entries.items()):
        keycache.key_cache._entries[key_id] = (record, time.monotonic() - 10)


async def test_a_known_key_is_served_stale_and_postgres_is_left_alone(
    issued, postgres_down, settings
) -> None:
    settings.API_KEY_CACHE_SECONDS = 5
    assert await authenticate_token(issued.token) is not None
    expire_cache()
    calls = postgres_down()
    for _ in range(20):
        assert (await record_of(issued.token)).key_id == issued.api_key.key_id
        await asyncio.sleep(0.01)  # lets the background reload run and fail
    assert len(calls) == 1  # one failed reload, then the back-off


async def test_an_unknown_key_gets_503_not_500(issued, postgres_down) -> None:
    postgres_down()
    with pytest.raises(DependencyUnavailable):
        await authenticate_token(issued.token)
    response = await AsyncClient().get(
        "/v1/models", headers={"Authorization": f"Bearer {issued.token}"}
    )
    body = response.json()
    assert response.status_code == 503, body
    assert body["error"]["code"] == "service_unavailable" and response["Retry-After"] == "2"


async def test_a_slow_postgres_never_holds_up_a_known_key(issued, monkeypatch, settings) -> None:
    settings.API_KEY_LOAD_TIMEOUT_SECONDS = 3
    assert await authenticate_token(issued.token) is not None
    expire_cache()
    loads = []

    async def hanging(key_id: str):
        loads.append(key_id)
        await asyncio.sleep(30)

    monkeypatch.setattr(keycache, "_load_record", hanging)
    for _ in range(10):
        assert await authenticate_token(issued.token) is not None
    # Served from the cache before the one background load gave up (order, not time).
    assert keycache.key_cache._db_down_until == float("-inf")
    deadline = time.monotonic() + 30
    while keycache.key_cache._db_down_until == float("-inf"):  # it gives up after its timeout
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert loads == [issued.api_key.key_id]
    assert keycache.key_cache._db_down_until > time.monotonic()


async def test_a_record_past_its_ttl_is_refreshed_in_the_background(issued, tenant) -> None:
    assert (await record_of(issued.token)).tenant_limits["rpm"] == 600
    await sync_to_async(tenant.__class__.objects.filter(pk=tenant.pk).update)(rpm=7)
    expire_cache()  # no version bump: only the TTL can bring the change
    assert (await record_of(issued.token)).tenant_limits["rpm"] == 600  # stale, once
    await asyncio.sleep(0.3)
    assert (await record_of(issued.token)).tenant_limits["rpm"] == 7


async def test_the_stale_window_ends(issued, postgres_down, settings) -> None:
    settings.API_KEY_STALE_SECONDS = 1
    assert await authenticate_token(issued.token) is not None
    expire_cache()  # 10 s old: past TTL (5) + stale (1)
    # So is the shared snapshot that load wrote: it lives as long (tenants/keysnapshot.py).
    await asyncio.gather(*keycache._snapshot_tasks)
    await get_redis().delete(keysnapshot.RECORD_PREFIX + issued.api_key.key_id)
    postgres_down()
    with pytest.raises(DependencyUnavailable):
        await authenticate_token(issued.token)


async def test_a_revocation_is_never_served_stale(issued, tenant, postgres_down) -> None:
    assert await authenticate_token(issued.token) is not None
    await sync_to_async(api_key_revoke)(api_key=issued.api_key, actor="test")
    postgres_down()
    await asyncio.sleep(0.6)  # the version poll drops every cached record
    with pytest.raises(DependencyUnavailable):
        await authenticate_token(issued.token)


async def test_last_use_is_written_in_the_background_and_survives_an_outage(
    tenant, monkeypatch
) -> None:
    fresh = await sync_to_async(api_key_issue)(tenant=tenant, name="fresh", actor="test")
    assert await authenticate_token(fresh.token) is not None
    for _ in range(50):
        if (await ApiKey.objects.aget(pk=fresh.api_key.pk)).last_used_at is not None:
            break
        await asyncio.sleep(0.05)
    assert (await ApiKey.objects.aget(pk=fresh.api_key.pk)).last_used_at is not None

    other = await sync_to_async(api_key_issue)(tenant=tenant, name="other", actor="test")

    def unreachable(*args: object) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(keycache, "_update_last_used", sync_to_async(unreachable))
    assert await authenticate_token(other.token) is not None  # no error reaches the caller
    await asyncio.gather(*keycache._touch_tasks)


async def test_preloaded_keys_survive_an_outage_before_their_first_use(
    issued, tenant, postgres_down
) -> None:
    revoked = await sync_to_async(api_key_issue)(tenant=tenant, name="old", actor="test")
    await sync_to_async(api_key_revoke)(api_key=revoked.api_key, actor="test")
    keycache.key_cache.clear()
    assert await sync_to_async(keycache.key_cache.preload)(100) == 2
    calls = postgres_down()
    record = await authenticate_token(issued.token)  # never requested in this process
    assert record is not None and record.key_id == issued.api_key.key_id
    assert await authenticate_token(revoked.token) is None  # refused without a query
    assert calls == []


async def test_preloading_can_be_turned_off(issued) -> None:
    keycache.key_cache.clear()
    assert await sync_to_async(keycache.key_cache.preload)(0) == 0
    assert keycache.key_cache._entries == {}
