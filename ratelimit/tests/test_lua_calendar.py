"""The Lua scripts on an injected clock (in-process, lupa): UTC day and month quotas roll over
exactly at the calendar boundary, server clock jumps never over-grant, and lease expiry."""

from datetime import UTC, datetime

import pytest
from django.test import override_settings

from ratelimit.tests.helpers import admit_call, heartbeat_call, make_record, settle_call
from ratelimit.tests.luaharness import FakeRedis

SECOND = 1_000_000


def _us(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()) * SECOND


def _admit(fake: FakeRedis, record, tokens: int, lease: str) -> list[int]:
    return fake.admit(*admit_call(record, tokens, lease))


@pytest.mark.parametrize(
    ("kind", "before", "boundary"),
    [
        ("tokens_per_day", (2026, 3, 14, 23, 59, 30), (2026, 3, 15)),
        ("tokens_per_month", (2026, 1, 31, 23, 59, 30), (2026, 2, 1)),
        ("tokens_per_month", (2026, 12, 31, 23, 59, 30), (2027, 1, 1)),
        ("tokens_per_month", (2028, 2, 29, 23, 59, 30), (2028, 3, 1)),
        ("tokens_per_month", (2100, 2, 28, 23, 59, 30), (2100, 3, 1)),
        ("tokens_per_day", (2028, 2, 28, 23, 59, 30), (2028, 2, 29)),
    ],
)
def test_a_quota_rolls_over_exactly_at_the_utc_calendar_boundary(
    kind: str, before: tuple[int, ...], boundary: tuple[int, ...]
) -> None:
    record = make_record(tenant={kind: 1000})
    fake = FakeRedis(_us(*before))
    assert _admit(fake, record, 800, "a")[0] == 1
    denied = _admit(fake, record, 300, "b")
    # Binding limit 1 (the only one), retry exactly until the boundary, 200 left.
    assert denied[:3] == [0, 1, _us(*boundary) - fake.now_us]
    assert denied[4] == 200 and denied[5] == _us(*boundary) - fake.now_us
    fake.now_us = _us(*boundary) - 1
    assert _admit(fake, record, 300, "c")[0] == 0
    fake.now_us = _us(*boundary)
    allowed = _admit(fake, record, 300, "d")
    assert allowed[0] == 1 and allowed[4] == 700


def test_a_settle_after_the_boundary_does_not_refund_into_the_new_period() -> None:
    record = make_record(tenant={"tokens_per_day": 1000})
    fake = FakeRedis(_us(2026, 5, 1, 23, 59, 59))
    assert _admit(fake, record, 900, "old")[0] == 1
    fake.now_us = _us(2026, 5, 2, 0, 0, 1)
    assert _admit(fake, record, 600, "new")[0] == 1  # 400 left today
    assert fake.settle(*settle_call(record, "old", 10, 10))[0] == 1
    assert _admit(fake, record, 401, "more")[0] == 0  # the old refund of 880 went nowhere
    assert _admit(fake, record, 400, "fits")[0] == 1


def test_a_backward_server_clock_jump_grants_nothing_extra() -> None:
    record = make_record(tenant={"rpm": 60}, burst_percent=5)  # B = 3, one per second
    fake = FakeRedis(_us(2026, 6, 1, 12))
    granted = sum(_admit(fake, record, 0, f"a{i}")[0] for i in range(10))
    assert granted == 3
    fake.now_us -= 30 * SECOND  # NTP steps the server clock back
    assert sum(_admit(fake, record, 0, f"b{i}")[0] for i in range(10)) == 0


def test_a_forward_server_clock_jump_grants_at_most_the_burst() -> None:
    record = make_record(tenant={"rpm": 60}, burst_percent=5)
    fake = FakeRedis(_us(2026, 6, 1, 12))
    for i in range(10):
        _admit(fake, record, 0, f"a{i}")
    fake.now_us += 3600 * SECOND
    assert sum(_admit(fake, record, 0, f"b{i}")[0] for i in range(10)) == 3


@override_settings(RATELIMIT_LEASE_TTL_SECONDS=10, RATELIMIT_LEASE_RECORD_TTL_SECONDS=600)
def test_an_expired_lease_stops_counting_while_a_live_one_keeps_the_set() -> None:
    record = make_record(key={"max_inflight": 2})
    fake = FakeRedis(_us(2026, 6, 1, 12))
    assert _admit(fake, record, 0, "crashed")[0] == 1
    fake.now_us += 5 * SECOND
    assert _admit(fake, record, 0, "streaming")[0] == 1
    assert _admit(fake, record, 0, "third")[0] == 0
    fake.now_us += 6 * SECOND  # "crashed" expired at +10 s; "streaming" heartbeats
    assert fake.heartbeat(*heartbeat_call(record, "streaming", 10_000, 600_000))[0] == 1
    assert _admit(fake, record, 0, "third")[0] == 1
    assert _admit(fake, record, 0, "fourth")[0] == 0
    # The crashed holder's lease is not resurrected by its own heartbeat.
    assert fake.heartbeat(*heartbeat_call(record, "crashed", 10_000, 600_000))[0] == 0


def test_every_key_written_has_a_ttl() -> None:
    record = make_record(
        key={"rpm": 5, "tpm": 500, "max_inflight": 2, "tokens_per_day": 900},
        tenant={"rpm": 50, "tpm": 5000, "max_inflight": 5, "tokens_per_month": 90_000},
    )
    fake = FakeRedis(_us(2026, 6, 1, 12))
    for i in range(6):
        fake.admit(*admit_call(record, 120, f"l{i}", addr="192.0.2.1"))
    fake.settle(*settle_call(record, "l0", 10, 500))
    assert fake.keys("rl") and all(fake.pttl(k) > 0 for k in fake.keys("rl"))
