import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from core.errors import TenantSuspended
from tenants.auth import authenticate_token
from tenants.models import AdminAction, ApiKey
from tenants.services import (
    TenantError,
    api_key_issue,
    api_key_revoke,
    api_key_rotate,
    api_key_set_limits,
    tenant_set_limits,
    tenant_suspend,
)
from tenants.tests.helpers import record_of

pytestmark = pytest.mark.django_db(transaction=True)


async def test_it_verifies_an_issued_key(issued) -> None:
    record = await authenticate_token(issued.token)
    assert record is not None
    assert record.key_id == issued.api_key.key_id
    assert record.tenant_slug == "acme"
    assert record.tenant_limits["rpm"] == 600


async def test_it_stores_only_the_hash_and_last_four(issued) -> None:
    key = await ApiKey.objects.aget(pk=issued.api_key.pk)
    secret = issued.token.rsplit("_", 1)[1]
    assert key.last4 == secret[-4:]
    assert secret not in key.secret_hash and len(key.secret_hash) == 64


async def test_it_keeps_the_old_secret_valid_during_the_grace_only(issued) -> None:
    rotated = await sync_to_async(api_key_rotate)(
        api_key=issued.api_key, grace=timedelta(seconds=1), actor="test"
    )
    assert rotated.api_key.key_id == issued.api_key.key_id
    assert rotated.token != issued.token
    assert await authenticate_token(rotated.token) is not None
    assert await authenticate_token(issued.token) is not None  # inside the grace
    await asyncio.sleep(1.1)
    assert await authenticate_token(issued.token) is None
    assert await authenticate_token(rotated.token) is not None


async def test_it_stops_the_old_secret_at_once_with_no_grace(issued) -> None:
    assert await authenticate_token(issued.token) is not None
    rotated = await sync_to_async(api_key_rotate)(
        api_key=issued.api_key, grace=timedelta(0), actor="test"
    )
    await asyncio.sleep(0.6)  # one version poll
    assert await authenticate_token(issued.token) is None
    assert await authenticate_token(rotated.token) is not None


async def test_it_refuses_an_expired_key(tenant) -> None:
    issued = await sync_to_async(api_key_issue)(
        tenant=tenant, expires_in=timedelta(seconds=1), actor="test"
    )
    assert await authenticate_token(issued.token) is not None
    await asyncio.sleep(1.1)
    assert await authenticate_token(issued.token) is None


async def test_it_refuses_a_revoked_key_within_a_second(issued) -> None:
    assert await authenticate_token(issued.token) is not None  # now cached
    await sync_to_async(api_key_revoke)(api_key=issued.api_key, actor="test")
    await asyncio.sleep(0.6)
    assert await authenticate_token(issued.token) is None


async def test_it_refuses_keys_of_a_suspended_tenant(issued, tenant) -> None:
    assert await authenticate_token(issued.token) is not None
    await sync_to_async(tenant_suspend)(tenant=tenant, actor="test")
    await asyncio.sleep(0.6)
    with pytest.raises(TenantSuspended):
        await authenticate_token(issued.token)


async def test_it_refuses_a_wrong_secret_for_a_real_key_id(issued) -> None:
    prefix, key_id, secret = issued.token.split("_")
    wrong = f"{prefix}_{key_id}_{'A' * len(secret)}"
    assert await authenticate_token(wrong) is None


async def test_it_serves_a_hot_key_from_the_cache_without_queries(issued, monkeypatch) -> None:
    from tenants import keycache

    loads = []
    real_load = keycache._load_record

    async def counting_load(key_id: str):  # a spy: the real query still runs
        loads.append(key_id)
        return await real_load(key_id)

    monkeypatch.setattr(keycache, "_load_record", counting_load)
    for _ in range(50):
        assert await authenticate_token(issued.token) is not None
    assert loads == [issued.api_key.key_id]


async def test_it_applies_limit_changes_within_the_version_poll(issued, tenant) -> None:
    assert (await record_of(issued.token)).tenant_limits["rpm"] == 600
    await sync_to_async(tenant_set_limits)(tenant=tenant, changes={"rpm": 5}, actor="test")
    await asyncio.sleep(0.6)
    assert (await record_of(issued.token)).tenant_limits["rpm"] == 5


def test_it_audits_every_change_with_its_actor(issued, tenant) -> None:
    tenant_set_limits(tenant=tenant, changes={"rpm": 7, "burst_percent": 50}, actor="alice")
    api_key_set_limits(api_key=issued.api_key, changes={"tpm": 900}, actor="bob")
    api_key_rotate(api_key=issued.api_key, grace=timedelta(minutes=5), actor="carol")
    api_key_revoke(api_key=issued.api_key, actor="dave")
    actions = list(AdminAction.objects.order_by("id").values_list("actor", "action"))
    assert actions == [
        ("test", "tenant.created"),
        ("test", "key.issued"),
        ("alice", "tenant.limits_changed"),
        ("bob", "key.limits_changed"),
        ("carol", "key.rotated"),
        ("dave", "key.revoked"),
    ]
    change = AdminAction.objects.get(action="tenant.limits_changed")
    assert change.before is not None and change.after is not None
    assert change.before["rpm"] == 600 and change.after["rpm"] == 7
    assert change.after["burst_percent"] == 50


def test_it_rejects_bad_limits_and_writes_nothing(tenant) -> None:
    before = AdminAction.objects.count()
    for changes in (
        {"rpm": 0},
        {"rpm": -1},
        {"burst_percent": 0},
        {"burst_percent": 101},
        {"colour": 3},
    ):
        with pytest.raises(TenantError):
            tenant_set_limits(tenant=tenant, changes=changes, actor="test")
    tenant.refresh_from_db()
    assert tenant.rpm == 600 and tenant.burst_percent == 20
    assert AdminAction.objects.count() == before


def test_it_refuses_to_rotate_or_revoke_a_revoked_key(issued) -> None:
    api_key_revoke(api_key=issued.api_key, actor="test")
    with pytest.raises(TenantError):
        api_key_rotate(api_key=issued.api_key, grace=timedelta(0), actor="test")
    with pytest.raises(TenantError):
        api_key_revoke(api_key=issued.api_key, actor="test")


def test_it_reports_key_state(issued) -> None:
    key = issued.api_key
    assert key.state == "active"
    api_key_rotate(api_key=key, grace=timedelta(hours=1), actor="test")
    key.refresh_from_db()
    assert key.state == "rotating"
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    key.refresh_from_db()
    assert key.state == "expired"
