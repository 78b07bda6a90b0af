"""The Python API against the real Redis: decisions, headers, reserve and settle, leases,
the 429 audit buffer, hygiene, NOSCRIPT recovery and metrics."""

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import pytest
from django.test import override_settings
from prometheus_client import REGISTRY

from core.errors import QuotaExhausted, RateLimited
from core.redis import get_sync_redis
from ratelimit import limiter
from ratelimit.limits import throttle_key, usage_key
from ratelimit.tests.helpers import make_record, usage_totals

SECOND = 1_000_000


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _limiter_state() -> dict[bytes, bytes | None]:
    """Every rl:* key with its serialized value (TTLs aside, which tick by themselves)."""
    client = get_sync_redis()
    return {key: client.dump(key) for key in sorted(client.scan_iter("rl:*"))}


def _hash(key: str) -> dict[bytes, bytes]:
    """A hash of the limiter's buffers as the client returns it."""
    flat: dict[bytes, bytes] = {}
    for name, value in get_sync_redis().hgetall(key).items():
        # The client decodes no responses: names and values are bytes.
        assert isinstance(name, bytes) and isinstance(value, bytes)
        flat[name] = value
    return flat


async def test_an_admission_carries_the_trio_for_requests_and_tokens() -> None:
    record = make_record(key={"rpm": 60}, tenant={"rpm": 600, "tpm": 10_000})
    admission = await limiter.admit(record, tokens=300)
    assert admission.source == "redis" and not admission.failed_open
    assert admission.reserved_tokens == 300
    # key-rpm (B = 12) is tighter than tenant-rpm (B = 120): it provides the request trio.
    assert admission.headers["x-ratelimit-limit-requests"] == "60"
    assert admission.headers["x-ratelimit-remaining-requests"] == "11"
    assert admission.headers["x-ratelimit-reset-requests"] == "1s"
    assert admission.headers["x-ratelimit-limit-tokens"] == "10000"
    assert admission.headers["x-ratelimit-remaining-tokens"] == "1700"  # B = 2000, 300 taken
    assert admission.headers["x-ratelimit-reset-tokens"] == "1.8s"


async def test_it_refunds_unused_tokens_and_charges_overage_as_debt() -> None:
    # The measured sequence of research/ratelimit.md §4.2 (1000 tokens/min, burst 100 %).
    record = make_record(tenant={"tpm": 1000}, burst_percent=100)
    first = await limiter.admit(record, tokens=800)
    with pytest.raises(RateLimited) as denied:
        await limiter.admit(record, tokens=500)
    # 300 missing tokens x 60 ms = 18 s.
    assert 17_900 <= int(denied.value.headers["retry-after-ms"]) <= 18_000
    assert denied.value.headers["Retry-After"] == "18"
    assert denied.value.type == "tokens" and "tenant-tpm" in denied.value.message
    assert await limiter.settle(first, prompt_tokens=60, completion_tokens=40) is True
    second = await limiter.admit(record, tokens=500)  # 700 came back
    assert await limiter.settle(second, prompt_tokens=100, completion_tokens=800) is True
    with pytest.raises(RateLimited) as in_debt:
        await limiter.admit(record, tokens=100)
    # 900 used against a 500 reservation: 400 of debt, plus this 100, over what is left.
    assert int(in_debt.value.headers["retry-after-ms"]) > 5_000


async def test_a_second_settle_does_nothing_and_usage_is_counted_once() -> None:
    record = make_record(api_key_pk=42, tenant={"tpm": 1000, "max_inflight": 1})
    admission = await limiter.admit(record, tokens=200)
    assert await limiter.settle(admission, prompt_tokens=20, completion_tokens=30) is True
    assert await limiter.settle(admission, prompt_tokens=20, completion_tokens=30) is False
    usage = _hash(usage_key(record.tenant_id))
    assert usage_totals(usage) == {"r": 1, "p": 20, "c": 30}
    assert all(name.startswith(b"42|") for name in usage)


async def _stream(record, sink: list[bool], pause: float = 0) -> AsyncGenerator[str, None]:
    admission = await limiter.admit(record, tokens=100)
    sent = 0
    try:
        for i in range(100):
            sent += 1
            yield f"token{i}"
            await asyncio.sleep(pause)  # waiting for the engine's next token
    finally:
        # As the API's streaming response does: settle whatever happens to the client.
        sink.append(await limiter.settle(admission, prompt_tokens=10, completion_tokens=sent))


async def test_a_client_that_disconnects_mid_stream_is_settled_and_frees_its_slot() -> None:
    record = make_record(key={"max_inflight": 1}, tenant={"tpm": 10_000})
    settled: list[bool] = []
    stream = _stream(record, settled)
    assert await stream.__anext__() == "token0"
    with pytest.raises(RateLimited, match="key-inflight"):
        await limiter.admit(record, tokens=1)
    await stream.aclose()  # the client went away
    assert settled == [True]
    assert usage_totals(get_sync_redis().hgetall(usage_key(1))) == {"r": 1, "p": 10, "c": 1}
    await limiter.admit(record, tokens=1)  # the slot is free again


async def test_a_cancelled_request_task_is_settled_too() -> None:
    record = make_record(key={"max_inflight": 1})
    settled: list[bool] = []

    async def consume() -> None:
        # The server cancels the response task while the stream awaits its next token.
        async for _ in _stream(record, settled, pause=0.01):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert settled == [True]
    await limiter.admit(record, tokens=1)


async def test_a_denial_changes_no_limiter_state_and_is_audited() -> None:
    record = make_record(
        api_key_pk=7,
        key={"rpm": 100, "max_inflight": 3, "tokens_per_day": 10_000},
        tenant={"tpm": 500, "tokens_per_month": 100_000, "max_inflight": 5},
        burst_percent=50,
    )
    await limiter.admit(record, tokens=200)
    before = _limiter_state()
    with pytest.raises(RateLimited):
        await limiter.admit(record, tokens=400, client_addr="198.51.100.7")
    assert _limiter_state() == before
    audit = _hash(throttle_key(record.tenant_id))
    counts = {k: v for k, v in audit.items() if k.endswith(b"|n")}
    assert len(counts) == 1 and next(iter(counts)).startswith(b"7|tenant-tpm|")
    assert list(counts.values()) == [b"1"]
    assert [v for k, v in audit.items() if k.endswith(b"|a")] == [b"198.51.100.7"]


@override_settings(RATELIMIT_DENY_CACHE=False)  # every refusal through Redis's own buffer
async def test_the_audit_keeps_a_few_distinct_sample_addresses() -> None:
    record = make_record(key={"rpm": 1}, burst_percent=1)
    await limiter.admit(record, tokens=0)
    with pytest.raises(RateLimited):  # not an address: counted, not sampled
        await limiter.admit(record, tokens=0, client_addr="1.2.3.4,evil|x")
    with override_settings(RATELIMIT_AUDIT_SAMPLE_ADDRESSES=3):
        for i in range(6):
            for _ in range(2):
                with pytest.raises(RateLimited):
                    await limiter.admit(record, tokens=0, client_addr=f"203.0.113.{i}")
    audit = _hash(throttle_key(record.tenant_id))
    [count] = [v for k, v in audit.items() if k.endswith(b"|n")]
    [addresses] = [v for k, v in audit.items() if k.endswith(b"|a")]
    assert count == b"13"
    assert addresses == b"203.0.113.0,203.0.113.1,203.0.113.2"


async def test_a_spent_quota_is_insufficient_quota_and_not_worth_retrying() -> None:
    record = make_record(key={"tokens_per_month": 1000}, tenant={"rpm": 1})
    await limiter.admit(record, tokens=1000)
    with pytest.raises(QuotaExhausted) as spent:
        await limiter.admit(record, tokens=10)  # tenant-rpm denies too; the quota binds
    error = spent.value
    assert error.status == 429 and error.code == "insufficient_quota"
    assert "key-tokens-per-month" in error.message
    assert error.headers["x-should-retry"] == "false"
    assert int(error.headers["Retry-After"]) > 60


async def test_a_reservation_above_the_burst_fits_an_idle_bucket_and_is_clamped() -> None:
    record = make_record(tenant={"tpm": 1000}, burst_percent=10)  # B = 100 tokens
    admission = await limiter.admit(record, tokens=900)
    assert admission.reserved_tokens == 900
    with pytest.raises(RateLimited):
        await limiter.admit(record, tokens=50)
    with override_settings(RATELIMIT_MAX_RESERVATION_TOKENS=64):
        clamped = await limiter.admit(make_record(tenant_id=2), tokens=5000)
    assert clamped.reserved_tokens == 64


@override_settings(RATELIMIT_LEASE_TTL_SECONDS=0.3)
async def test_a_heartbeat_keeps_a_long_request_in_flight() -> None:
    record = make_record(key={"max_inflight": 1})
    long_one = await limiter.admit(record, tokens=1)
    async with limiter.keep_alive(long_one, interval=0.1):
        await asyncio.sleep(0.6)
        with pytest.raises(RateLimited):
            await limiter.admit(record, tokens=1)
    await asyncio.sleep(0.45)  # no more heartbeats: the lease expires
    assert await limiter.heartbeat(long_one) is False
    await limiter.admit(record, tokens=1)


async def test_every_key_has_a_ttl_after_a_mixed_run() -> None:
    record = make_record(
        key={"rpm": 30, "tpm": 2000, "max_inflight": 2, "tokens_per_day": 5000},
        tenant={"rpm": 100, "tpm": 5000, "max_inflight": 4, "tokens_per_month": 50_000},
    )
    held = []
    for i in range(12):
        with contextlib.suppress(RateLimited):
            held.append(await limiter.admit(record, tokens=150, client_addr=f"192.0.2.{i}"))
    await limiter.settle(held[0], prompt_tokens=10, completion_tokens=5)
    await limiter.heartbeat(held[1])
    client = get_sync_redis()
    keys = list(client.scan_iter("rl:*")) + list(client.scan_iter("rlbuf:*"))
    assert len(keys) >= 10
    assert {key: client.pttl(key) > 0 for key in keys} == dict.fromkeys(keys, True)


async def test_decisions_are_counted_by_result_and_binding_limit() -> None:
    record = make_record(slug="metered", key={"rpm": 1}, burst_percent=1)
    allowed = _metric("ratelimit_decisions_total", result="allowed", limit="none")
    denied = _metric("ratelimit_decisions_total", result="denied", limit="key-rpm")
    throttled = _metric("ratelimit_throttled_total", tenant="metered")
    observed = _metric("ratelimit_admission_seconds_count")
    await limiter.admit(record, tokens=0)
    with pytest.raises(RateLimited):
        await limiter.admit(record, tokens=0)
    assert _metric("ratelimit_decisions_total", result="allowed", limit="none") == allowed + 1
    assert _metric("ratelimit_decisions_total", result="denied", limit="key-rpm") == denied + 1
    assert _metric("ratelimit_throttled_total", tenant="metered") == throttled + 1
    assert _metric("ratelimit_admission_seconds_count") == observed + 2


async def test_a_key_without_limits_is_admitted_and_its_usage_counted() -> None:
    record = make_record()
    admission = await limiter.admit(record, tokens=10)
    assert admission.headers == {}
    assert await limiter.settle(admission, prompt_tokens=3, completion_tokens=4)
    assert usage_totals(get_sync_redis().hgetall(usage_key(1))) == {"r": 1, "p": 3, "c": 4}
