"""Property tests: hypothesis drives the real Lua files in-process (lupa, fake clock) and a
Python reference model with the same operations; every reply must be identical. A sample of
sequences from the same strategy is replayed against the real Redis, the model then running
on the instants Redis itself reports, and must agree there too."""

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.redis import get_sync_redis
from ratelimit.decision import decode_reply
from ratelimit.limits import usage_key
from ratelimit.scripts import ADMIT, HEARTBEAT, SETTLE
from ratelimit.tests.helpers import (
    admit_call,
    heartbeat_call,
    make_record,
    settle_call,
    specs,
    usage_totals,
)
from ratelimit.tests.luaharness import FakeRedis
from ratelimit.tests.model import DAY, Model

SECOND = 1_000_000
# Starts just before the boundaries quotas must survive: a day, a 31-day month, a leap day,
# a year, and an arbitrary instant.
BOUNDARIES = [
    datetime(2026, 7, 1, tzinfo=UTC),
    datetime(2028, 2, 29, tzinfo=UTC),
    datetime(2028, 3, 1, tzinfo=UTC),
    datetime(2027, 1, 1, tzinfo=UTC),
    datetime(2026, 11, 17, 13, 5, 7, tzinfo=UTC),
]
LEASE_MS, RECORD_MS, RETRY_US = 30_000, 120_000, 1_000_000


def _maybe(low: int, high: int) -> st.SearchStrategy[int | None]:
    return st.one_of(st.none(), st.integers(low, high))


def _limits() -> st.SearchStrategy[dict[str, int | None]]:
    return st.fixed_dictionaries(
        {
            "rpm": _maybe(1, 8),
            "tpm": _maybe(20, 600),
            "max_inflight": _maybe(1, 3),
            "tokens_per_day": _maybe(100, 3000),
            "tokens_per_month": _maybe(200, 6000),
        }
    )


# ("admit", tokens), ("settle", which, prompt, completion), ("heartbeat", which), ("advance", us)
Op = tuple[str, int] | tuple[str, int, int, int]
_ops: st.SearchStrategy[Op] = st.one_of(
    st.tuples(st.just("admit"), st.integers(0, 700)),
    st.tuples(st.just("settle"), st.integers(0, 60), st.integers(0, 400), st.integers(0, 400)),
    st.tuples(st.just("heartbeat"), st.integers(0, 60)),
    st.tuples(
        st.just("advance"),
        st.one_of(st.integers(0, 90 * SECOND), st.sampled_from([DAY, 31 * DAY])),
    ),
)


@dataclass
class Scenario:
    start_us: int
    key: dict[str, int | None]
    tenant: dict[str, int | None]
    burst: int
    ops: list[Op]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    boundary = int(draw(st.sampled_from(BOUNDARIES)).timestamp()) * SECOND
    start = boundary - draw(st.integers(0, 120 * SECOND))
    return Scenario(
        start,
        draw(_limits()),
        draw(_limits()),
        draw(st.integers(1, 100)),
        draw(st.lists(_ops, min_size=1, max_size=40)),
    )


def _pick(leases: list[str], index: int) -> str | None:
    return leases[index % len(leases)] if leases else None


def _check_window(times: list[int], bound: int) -> None:
    """No trailing minute holds more admissions than burst + the per-minute limit."""
    for i, t in enumerate(times):
        in_window = sum(1 for u in times[: i + 1] if u > t - 60 * SECOND)
        assert in_window <= bound


class LupaRun:
    """One scenario on the in-process Lua and on the model, step by step."""

    def __init__(self, sc: Scenario, tenant_id: int = 1) -> None:
        self.record = make_record(
            tenant_id=tenant_id, key=sc.key, tenant=sc.tenant, burst_percent=sc.burst
        )
        self.specs = specs(self.record)
        self.fake, self.model = FakeRedis(sc.start_us), Model()
        self.leases: list[str] = []
        self.admitted_at: list[int] = []

    def admit(self, tokens: int) -> None:
        lease = f"lease{len(self.leases)}-{uuid.uuid4().hex[:6]}"
        keys, args = admit_call(self.record, tokens, lease)
        before = self.fake.dump("rl:")
        reply = self.fake.admit(keys, args)
        now = self.fake.now_us
        expected = self.model.admit(
            now,
            self.specs,
            tokens,
            lease,
            lease_ms=LEASE_MS,
            record_ms=RECORD_MS,
            retry_us=RETRY_US,
        )
        assert reply == expected
        assert all(v >= 0 for v in reply)
        if reply[0] == 1:
            self.leases.append(lease)
            self.admitted_at.append(now)
        else:
            assert self.fake.dump("rl:") == before, "a denial changed limiter state"

    def settle(self, which: int, prompt: int, completion: int) -> None:
        lease = _pick(self.leases, which)
        if lease is None:
            return
        before = self._usage()
        reply = self.fake.settle(*settle_call(self.record, lease, prompt, completion))
        assert reply == self.model.settle(self.fake.now_us, lease, prompt, completion)
        counted = {k: self._usage()[k] - before[k] for k in before}
        # Usage is counted in the same script, exactly when the settle applied.
        assert counted == (
            {"r": 1, "p": prompt, "c": completion} if reply[0] else dict.fromkeys("rpc", 0)
        )
        if reply[0] == 1:
            again = self.fake.settle(*settle_call(self.record, lease, prompt, completion))
            assert again[:2] == [0, 0]
            assert self._usage() == {k: before[k] + counted[k] for k in before}

    def _usage(self) -> dict[str, int]:
        key = usage_key(self.record.tenant_id)
        return usage_totals(self.fake.data.get(key, {}) if self.fake.keys(key) else {})

    def heartbeat(self, which: int) -> None:
        lease = _pick(self.leases, which)
        if lease is None:
            return
        reply = self.fake.heartbeat(*heartbeat_call(self.record, lease, LEASE_MS, RECORD_MS))
        assert reply == self.model.heartbeat(self.fake.now_us, lease, LEASE_MS, RECORD_MS)

    def step(self, op: Op) -> None:
        if op[0] == "advance":
            self.fake.now_us += op[1]
        else:
            getattr(self, op[0])(*op[1:])

    def finish(self) -> None:
        for spec in self.specs:
            if spec.kind == "r":
                _check_window(self.admitted_at, spec.burst + spec.limit)


@pytest.mark.django_db
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios())
def test_lua_and_the_reference_model_agree_on_every_reply(sc: Scenario) -> None:
    with override_settings(
        RATELIMIT_LEASE_TTL_SECONDS=LEASE_MS / 1000,
        RATELIMIT_LEASE_RECORD_TTL_SECONDS=RECORD_MS / 1000,
    ):
        run = LupaRun(sc)
        for op in sc.ops:
            run.step(op)
        run.finish()


REAL_LEASE_MS = 20


class RedisRun:
    """The same operations on the real Redis; the model runs on the instants Redis reports."""

    def __init__(self, sc: Scenario) -> None:
        tenant_id = uuid.uuid4().int % 10**9
        self.record = make_record(
            tenant_id=tenant_id, key=sc.key, tenant=sc.tenant, burst_percent=sc.burst
        )
        self.specs = specs(self.record)
        self.client, self.model = get_sync_redis(), Model()
        self.leases: list[str] = []

    def admit(self, tokens: int) -> None:
        lease = uuid.uuid4().hex
        reply = decode_reply(ADMIT.run_sync(self.client, *admit_call(self.record, tokens, lease)))
        expected = self.model.admit(
            reply[3],
            self.specs,
            tokens,
            lease,
            lease_ms=REAL_LEASE_MS,
            record_ms=3_600_000,
            retry_us=RETRY_US,
        )
        assert reply == expected
        if reply[0] == 1:
            self.leases.append(lease)

    def settle(self, which: int, prompt: int, completion: int) -> None:
        lease = _pick(self.leases, which)
        if lease is not None:
            reply = SETTLE.run_sync(
                self.client, *settle_call(self.record, lease, prompt, completion)
            )
            assert reply == self.model.settle(reply[2], lease, prompt, completion)

    def heartbeat(self, which: int) -> None:
        lease = _pick(self.leases, which)
        if lease is not None:
            call = heartbeat_call(self.record, lease, REAL_LEASE_MS, 3_600_000)
            reply = HEARTBEAT.run_sync(self.client, *call)
            assert reply == self.model.heartbeat(reply[1], lease, REAL_LEASE_MS, 3_600_000)

    def step(self, op: Op) -> None:
        if op[0] == "advance":
            # Real time cannot jump; a short sleep still lets 20 ms leases expire mid-run.
            time.sleep(min(op[1], 8_000) / SECOND)
        else:
            getattr(self, op[0])(*op[1:])


@pytest.mark.django_db
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios())
def test_a_sample_of_the_same_sequences_agrees_on_the_real_redis(sc: Scenario) -> None:
    with override_settings(
        RATELIMIT_LEASE_TTL_SECONDS=REAL_LEASE_MS / 1000,
        RATELIMIT_LEASE_RECORD_TTL_SECONDS=3600,
    ):
        run = RedisRun(sc)
        for op in sc.ops:
            run.step(op)
