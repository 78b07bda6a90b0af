"""Refusals Redis just made on a requests-per-minute limit are repeated in process, exactly,
and audited; other refusals always go back to Redis."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from prometheus_client import REGISTRY

from core.errors import RateLimited
from ratelimit import limiter
from ratelimit.flush import flush
from tenants.auth import authenticate_token
from tenants.models import ThrottleEvent
from tenants.services import api_key_issue, tenant_create, tenant_set_limits

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_limiter():
    limiter.reset_state()
    yield
    limiter.reset_state()


class ScriptCalls:
    """How many ADMIT round trips this process made since the fixture started (the limiter
    times each one in ratelimit_admission_seconds)."""

    def __init__(self) -> None:
        self.start = self._calls()

    @staticmethod
    def _calls() -> int:
        return int(REGISTRY.get_sample_value("ratelimit_admission_seconds_count") or 0)

    def __len__(self) -> int:
        return self._calls() - self.start


@pytest.fixture
def admit_calls() -> ScriptCalls:
    return ScriptCalls()


async def _key(**limits: int):
    tenant = await sync_to_async(tenant_create)(slug="flood", limits=limits, actor="t")
    issued = await sync_to_async(api_key_issue)(tenant=tenant, actor="t")
    return tenant, await authenticate_token(issued.token)


async def test_an_rpm_refusal_is_repeated_without_redis_until_its_retry_time(admit_calls):
    _, record = await _key(rpm=60, burst_percent=1)  # one request, then one a second
    await limiter.admit(record, tokens=1, client_addr="192.0.2.1")
    with pytest.raises(RateLimited) as first:
        await limiter.admit(record, tokens=1, client_addr="192.0.2.1")
    waits = [int(first.value.headers["retry-after-ms"])]
    for _ in range(5):
        with pytest.raises(RateLimited) as again:
            await limiter.admit(record, tokens=1, client_addr="192.0.2.2")
        waits.append(int(again.value.headers["retry-after-ms"]))
        assert again.value.message.startswith("Rate limit reached for")
    assert len(admit_calls) == 2  # the admission and the first refusal; the rest in process
    assert waits == sorted(waits, reverse=True) and waits[-1] > 0
    await asyncio.sleep(waits[-1] / 1000 + 0.01)
    admission = await limiter.admit(record, tokens=1)  # Redis decides again, and admits
    assert admission.lease_id and len(admit_calls) == 3


async def test_cached_refusals_are_audited_like_the_others(admit_calls) -> None:
    _, record = await _key(rpm=60, burst_percent=1)
    await limiter.admit(record, tokens=1)
    for n in range(7):
        with pytest.raises(RateLimited):
            await limiter.admit(record, tokens=1, client_addr=f"192.0.2.{n}")
    await sync_to_async(flush)()
    events = [e async for e in ThrottleEvent.objects.all()]
    assert sum(e.count for e in events) == 7
    assert {e.reason for e in events} == {"tenant-rpm"}
    assert len({a for e in events for a in e.sample_addresses}) >= 5


async def test_token_refusals_always_ask_redis(admit_calls) -> None:
    _, record = await _key(tpm=100, burst_percent=1)
    await limiter.admit(record, tokens=100)  # a whole minute's tokens at once
    for _ in range(2):
        with pytest.raises(RateLimited):
            await limiter.admit(record, tokens=100)
    assert len(admit_calls) == 3


async def test_a_limit_change_ends_a_cached_refusal(admit_calls) -> None:
    tenant, record = await _key(rpm=60, burst_percent=1)
    await limiter.admit(record, tokens=1)
    with pytest.raises(RateLimited):
        await limiter.admit(record, tokens=1)
    await sync_to_async(tenant_set_limits)(tenant=tenant, changes={"rpm": None}, actor="t")
    await asyncio.sleep(0.6)  # the key cache's version poll
    token_record = await authenticate_token_of(record)
    assert token_record is not record and token_record.tenant_limits["rpm"] is None
    assert (await limiter.admit(token_record, tokens=1)).lease_id


async def authenticate_token_of(record):
    from tenants.keycache import key_cache

    return await key_cache.get(record.key_id)
