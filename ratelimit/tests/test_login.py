"""Console login throttling through the ADMIT script: per address, per (username, address)
and a per-username ceiling that slows each address instead of refusing (more in
pages/tests/test_login_fairness.py)."""

import pytest

from core.redis import get_sync_redis, reset_clients
from ratelimit.login import check_login, check_login_sync
from ratelimit.tests.test_faults import _free_port

pytestmark = pytest.mark.usefixtures("login_limits")


@pytest.fixture
def login_limits(settings):
    settings.RATELIMIT_LOGIN_ADDRESS_PER_MINUTE = 6  # one per 10 s after a burst of 6
    settings.RATELIMIT_LOGIN_PAIR_PER_MINUTE = 3  # one per 20 s after a burst of 3
    settings.RATELIMIT_LOGIN_USERNAME_PER_MINUTE = 3
    settings.RATELIMIT_LOGIN_SLOWED_PER_MINUTE = 1  # one per 60 s past the username's ceiling


async def test_a_username_past_its_ceiling_is_slowed_per_address() -> None:
    results = [await check_login(address=f"203.0.113.{i}", username="Admin") for i in range(4)]
    assert [(r.allowed, r.slowed) for r in results] == [(True, False)] * 3 + [(True, True)]
    again = await check_login(address="203.0.113.3", username="Admin")
    assert not again.allowed and again.limit == "login-slowed"
    assert 59.9 <= again.retry_after <= 60.0
    # The username is normalized: case and spaces do not buy more attempts.
    assert not (await check_login(address="203.0.113.3", username=" admin ")).allowed


async def test_an_address_is_limited_across_usernames() -> None:
    allowed = [
        (await check_login(address="198.51.100.5", username=f"user{i}")).allowed for i in range(7)
    ]
    assert allowed == [True] * 6 + [False]
    denied = await check_login(address="198.51.100.5", username="fresh")
    assert denied.limit == "login-address" and 9.9 <= denied.retry_after <= 10.0
    assert (await check_login(address="198.51.100.6", username="fresh")).allowed


async def test_redis_holds_no_username_and_every_key_expires() -> None:
    await check_login(address="192.0.2.1", username="alice@example.com")
    client = get_sync_redis()
    keys = list(client.scan_iter("*"))
    assert len(keys) == 3 and all(client.pttl(k) > 0 for k in keys)  # address, pair, username
    assert not any(b"alice" in k or b"192.0.2.1" in k for k in keys)


def test_the_sync_wrapper_serves_synchronous_views() -> None:
    assert [check_login_sync(address=None, username="bob").allowed for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]


async def test_without_redis_a_local_limiter_still_throttles(settings) -> None:
    settings.RATELIMIT_REDIS_URL = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens
    settings.RATELIMIT_FAILURE_MODE = "open"  # login never fails open
    reset_clients()
    results = [await check_login(address="192.0.2.9", username="carol") for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
