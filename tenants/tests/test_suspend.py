"""Suspending a tenant refuses every key of it on every /v1 route (the fast 429 path
included) with 403 tenant_suspended, within the key cache's version poll; resuming restores
service as fast; usage and the audit trail stay."""

import asyncio
import json
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient, override_settings

from console.fastpath import CachedRefusals
from console.tests.test_fastpath import BODIES, call, flooded_key, ninja_path, scope
from core.errors import TENANT_SUSPENDED_MESSAGE
from ratelimit import backlog, limiter
from tenants.auth import authenticate_cached
from tenants.keycache import key_cache
from tenants.models import AdminAction, Tenant, UsageMinute
from tenants.services import TenantError, tenant_resume, tenant_suspend, usage_rollups_rebuild

pytestmark = pytest.mark.django_db(transaction=True)

GETS = ("/v1/models", "/v1/usage")
POSTS = tuple(BODIES)
# The production poll: a suspension must be seen within it, not only with polling switched off.
POLL = 0.5


@pytest.fixture(autouse=True)
def fresh_state() -> Iterator[None]:
    limiter.reset_state()
    backlog.take_throttles()
    yield
    limiter.reset_state()
    backlog.take_throttles()


async def answer(method: str, path: str, token: str) -> tuple[int, dict]:
    client, headers = AsyncClient(), {"Authorization": f"Bearer {token}"}
    if method == "GET":
        response = await client.get(path, headers=headers)
    else:
        response = await client.post(
            path, BODIES[path], content_type="application/json", headers=headers
        )
    return response.status_code, response.json()


async def every_route(token: str) -> dict[str, tuple[int, dict]]:
    answers = {path: await answer("GET", path, token) for path in GETS}
    answers |= {path: await answer("POST", path, token) for path in POSTS}
    return answers


def assert_suspended(status: int, body: dict) -> None:
    assert status == 403, body
    assert body == {
        "error": {
            "message": TENANT_SUSPENDED_MESSAGE,
            "type": "permission_error",
            "param": None,
            "code": "tenant_suspended",
        }
    }


@override_settings(API_KEY_VERSION_POLL_SECONDS=POLL)
async def test_every_route_refuses_a_hot_key_once_its_tenant_is_suspended(issued, tenant) -> None:
    assert (await answer("GET", "/v1/models", issued.token))[0] == 200  # cached in this process
    await sync_to_async(tenant_suspend)(tenant=tenant, actor="test", reason="unpaid")
    await asyncio.sleep(POLL + 0.1)
    answers = await every_route(issued.token)
    assert set(answers) == {*GETS, *POSTS}
    for status, body in answers.values():
        assert_suspended(status, body)


@override_settings(API_KEY_VERSION_POLL_SECONDS=POLL)
async def test_resuming_restores_service_and_keeps_usage_and_audit(issued, tenant) -> None:
    await UsageMinute.objects.acreate(
        tenant=tenant,
        api_key=issued.api_key,
        minute=tenant.created_at.replace(second=0),
        requests=3,
        prompt_tokens=30,
        completion_tokens=12,
    )
    # Written straight to the minutes, so rolled up as a flush does: a month's sum reads whole
    # hours from UsageHour, and the tenant's minute is one once the clock passes the hour.
    await sync_to_async(usage_rollups_rebuild)()
    before = (await answer("GET", "/v1/usage", issued.token))[1]["this_month"]
    await sync_to_async(tenant_suspend)(tenant=tenant, actor="test")
    await asyncio.sleep(POLL + 0.1)
    assert_suspended(*await answer("GET", "/v1/usage", issued.token))
    await sync_to_async(tenant_resume)(tenant=tenant, actor="test")
    await asyncio.sleep(POLL + 0.1)
    status, body = await answer("GET", "/v1/usage", issued.token)
    assert status == 200 and body["this_month"] == before and before["requests"] == 3
    for path, (status, body) in (await every_route(issued.token)).items():
        assert status != 403, (path, body)
    assert await UsageMinute.objects.filter(api_key=issued.api_key).acount() == 1
    actions = [
        a async for a in AdminAction.objects.filter(tenant=tenant).values_list("action", flat=True)
    ]
    assert actions[:2] == ["tenant.resumed", "tenant.suspended"]
    row = await Tenant.objects.aget(pk=tenant.pk)
    assert row.active and row.suspended_at is None


async def test_a_suspended_tenant_is_recorded_and_cannot_be_suspended_twice(tenant) -> None:
    suspended = await sync_to_async(tenant_suspend)(tenant=tenant, actor="ops", reason="abuse")
    assert not suspended.active and suspended.suspended_at is not None
    action = await AdminAction.objects.aget(action="tenant.suspended")
    assert action.actor == "ops" and (action.after or {})["reason"] == "abuse"
    with pytest.raises(TenantError, match="already suspended"):
        await sync_to_async(tenant_suspend)(tenant=tenant, actor="ops")
    await sync_to_async(tenant_resume)(tenant=tenant, actor="ops")
    with pytest.raises(TenantError, match="not suspended"):
        await sync_to_async(tenant_resume)(tenant=tenant, actor="ops")


async def test_a_wrong_secret_of_a_suspended_tenant_is_not_told_about_it(issued, tenant) -> None:
    await sync_to_async(tenant_suspend)(tenant=tenant, actor="test")
    prefix, key_id, secret = issued.token.split("_")
    status, body = await answer("GET", "/v1/models", f"{prefix}_{key_id}_{'Z' * len(secret)}")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


@override_settings(API_KEY_VERSION_POLL_SECONDS=POLL)
async def test_a_key_refused_in_process_gets_the_suspension_not_its_cached_429() -> None:
    issued, record = await flooded_key()
    tenant = await Tenant.objects.aget(slug="flood")
    await sync_to_async(tenant_suspend)(tenant=tenant, actor="test")
    await asyncio.sleep(POLL + 0.1)
    for path in POSTS:
        request_scope = scope(path, issued.token)
        body = json.dumps(BODIES[path]).encode()
        status, _, raw = await call(CachedRefusals(ninja_path()), request_scope, body)
        assert_suspended(status, json.loads(raw))
    # The key cache now holds the suspended record: memory alone never answers for it again.
    cached = key_cache.cached_now(record.key_id)
    assert cached is not None and not cached.tenant_active
    assert authenticate_cached(issued.token) is None
