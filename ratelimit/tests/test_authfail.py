"""Failed API-key authentications per client address, through the ADMIT script."""

import pytest
from prometheus_client import REGISTRY

from core.errors import RateLimited
from core.redis import get_sync_redis, reset_clients
from ratelimit.authfail import count_failure, refuse_if_blocked
from ratelimit.tests.test_faults import _free_port


@pytest.fixture(autouse=True)
def five_a_minute(settings):
    settings.API_AUTH_FAILURES_PER_MINUTE = 5  # one per 12 s after a burst of 5


async def fail(address: str | None, times: int) -> None:
    for _ in range(times):
        await refuse_if_blocked(address)
        await count_failure(address)


async def test_an_address_gets_its_failures_then_a_429_with_retry_headers() -> None:
    await fail("203.0.113.7", 5)
    with pytest.raises(RateLimited) as refused:
        await refuse_if_blocked("203.0.113.7")
    error = refused.value
    assert error.status == 429 and error.code == "rate_limit_exceeded"
    assert "failed authentications" in error.message
    assert 11 <= int(error.headers["Retry-After"]) <= 12
    assert 11_000 <= int(error.headers["retry-after-ms"]) <= 12_000
    await refuse_if_blocked("203.0.113.8")  # another address is untouched


async def test_a_look_counts_nothing() -> None:
    for _ in range(20):
        await refuse_if_blocked("198.51.100.1")
    await fail("198.51.100.1", 5)  # the whole burst is still there


async def test_a_failure_past_the_limit_is_refused_too() -> None:
    # Concurrent failures may all pass the look; the one that counts past the limit is a 429.
    for _ in range(5):
        await count_failure("198.51.100.2")
    with pytest.raises(RateLimited):
        await count_failure("198.51.100.2")


async def test_redis_holds_no_address_and_every_key_expires() -> None:
    await fail("192.0.2.1", 2)
    await fail("2001:db8::1", 1)
    client = get_sync_redis()
    keys = list(client.scan_iter("*"))
    assert len(keys) == 2 and all(client.pttl(k) > 0 for k in keys)
    assert all(k.startswith(b"rl:v1:{authfail}:addr:") for k in keys)
    assert not any(b"192.0.2" in k or b"2001" in k for k in keys)


async def test_an_ipv6_client_counts_as_its_64() -> None:
    for i in range(5):
        await count_failure(f"2001:db8:0:1::{i + 1:x}")
    with pytest.raises(RateLimited):
        await refuse_if_blocked("2001:db8:0:1:ffff::9")
    await refuse_if_blocked("2001:db8:0:2::1")  # the next /64 is someone else


async def test_no_address_or_a_zero_limit_is_never_limited(settings) -> None:
    await fail(None, 10)
    settings.API_AUTH_FAILURES_PER_MINUTE = 0
    await fail("192.0.2.50", 10)
    assert list(get_sync_redis().scan_iter("*")) == []


async def test_a_refusal_is_remembered_without_asking_redis_again(settings) -> None:
    await fail("192.0.2.60", 5)
    with pytest.raises(RateLimited):
        await refuse_if_blocked("192.0.2.60")
    settings.RATELIMIT_REDIS_URL = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens
    reset_clients()
    errors = REGISTRY.get_sample_value("ratelimit_backend_errors_total", {"operation": "authfail"})
    with pytest.raises(RateLimited):
        await refuse_if_blocked("192.0.2.60")
    after = REGISTRY.get_sample_value("ratelimit_backend_errors_total", {"operation": "authfail"})
    assert after == errors  # refused in process: no Redis call was even tried


async def test_without_redis_a_local_limiter_still_throttles(settings) -> None:
    settings.RATELIMIT_REDIS_URL = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens
    settings.RATELIMIT_FAILURE_MODE = "open"  # failed authentications never fail open
    reset_clients()
    await fail("192.0.2.9", 5)
    with pytest.raises(RateLimited):
        await refuse_if_blocked("192.0.2.9")
    await refuse_if_blocked("192.0.2.10")
