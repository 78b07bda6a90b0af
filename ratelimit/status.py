"""What the limiter's Redis state says about a tenant (or one key) right now, for the console:
tokens counted today and this month against the quotas, requests in flight, and, when a limit
refuses, how long until the next request fits. Read only: plain reads of the keys ADMIT writes
(lua/admit.lua), never a write, so looking cannot change what a client gets.

The figures mirror ADMIT's arithmetic: a quota counter from an earlier period counts as zero;
leases scored at or before now are dead; a rate bucket admits one more unit once its TAT is
within burst - 1 intervals of now (a token limit may need more room than one token, so its
wait is a lower bound). Limits that are not set have no state and are left out.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from core.redis import get_sync_redis
from ratelimit.limits import KINDS, LimitKind, burst_of, state_prefix

DAY_US = 86_400_000_000
MINUTE_US = 60_000_000


@dataclass(frozen=True)
class LimitState:
    """One limit as the limiter sees it now: `used` of `limit` (tokens this period, leases
    held, or units in the rate bucket) and how long until one more request fits (0: now)."""

    field: str  # the model's field: rpm, tpm, max_inflight, tokens_per_day, tokens_per_month
    label: str  # as headers and the 429 audit name it: rpm, inflight, tokens-per-day, ...
    kind: LimitKind
    limit: int
    used: int
    wait_seconds: float
    resets_at: datetime | None  # a quota's period end

    @property
    def percent(self) -> int:
        return math.floor(100 * self.used / self.limit) if self.limit else 0

    @property
    def blocked(self) -> bool:
        return self.wait_seconds > 0


@dataclass(frozen=True)
class ScopeState:
    """Every set limit of one scope, read at Redis time `now`."""

    now: datetime
    limits: tuple[LimitState, ...]

    @property
    def blocked(self) -> bool:
        return any(limit.blocked for limit in self.limits)

    @property
    def served_again_at(self) -> datetime | None:
        """When every refusing limit lets a request through again (None: not blocked)."""
        waits = [limit.wait_seconds for limit in self.limits if limit.blocked]
        return self.now + timedelta(seconds=max(waits)) if waits else None

    @property
    def quota_percent(self) -> int | None:
        """The fullest day or month quota's use in percent (None: no quota set)."""
        quotas = [limit.percent for limit in self.limits if limit.kind.is_quota]
        return max(quotas) if quotas else None

    def get(self, field: str) -> LimitState | None:
        return next((limit for limit in self.limits if limit.field == field), None)


def _period(kind: LimitKind, now_us: int) -> tuple[int, int]:
    """ADMIT's period index and end (us) of the UTC day or month holding now."""
    day = now_us // DAY_US
    if kind is LimitKind.DAY:
        return day, (day + 1) * DAY_US
    today = datetime.fromtimestamp(now_us / 1e6, UTC)
    year, month = (today.year + 1, 1) if today.month == 12 else (today.year, today.month + 1)
    ends = datetime(year, month, 1, tzinfo=UTC)
    return today.year * 12 + today.month - 1, int(ends.timestamp()) * 1_000_000


def _queue(pipe: redis.client.Pipeline, kind: LimitKind, key: str, now_us: int) -> None:
    if kind.is_rate:
        pipe.get(key)
    elif kind.is_quota:
        pipe.hmget(key, "p", "u")
    else:
        pipe.zcount(key, f"({now_us}", "+inf")
        pipe.zrangebyscore(key, f"({now_us}", "+inf", start=0, num=1, withscores=True)


def _state(
    field: str, limit: int, burst_percent: int, now_us: int, replies: list[Any]
) -> LimitState:
    kind, label = KINDS[field]
    resets_at, wait_us = None, 0
    if kind.is_rate:
        interval = math.ceil(MINUTE_US / limit)
        tat = max(int(float(replies.pop(0) or now_us)), now_us)
        used = math.ceil((tat - now_us) / interval)
        wait_us = max(0, tat + interval - burst_of(limit, burst_percent) * interval - now_us)
    elif kind.is_quota:
        stored_period, stored_used = replies.pop(0)
        index, ends_us = _period(kind, now_us)
        fresh = stored_period is None or int(stored_period) != index
        used = 0 if fresh else int(stored_used or 0)
        resets_at = datetime.fromtimestamp(ends_us / 1e6, UTC)
        wait_us = ends_us - now_us if used >= limit else 0
    else:
        used, first = int(replies.pop(0)), replies.pop(0)
        if used >= limit and first:
            wait_us = max(0, int(first[0][1]) - now_us)  # the earliest lease's expiry, at latest
    return LimitState(field, label, kind, limit, used, wait_us / 1e6, resets_at)


@dataclass(frozen=True)
class Scope:
    """One scope to read: a tenant (key_id None) or one of its keys, with its set limits."""

    tenant_id: int
    limits: Mapping[str, int | None]
    burst_percent: int
    key_id: str | None = None

    def present(self) -> dict[str, int]:
        return {f: int(v) for f, v in self.limits.items() if v is not None and f in KINDS}


def scope_states(scopes: Sequence[Scope]) -> list[ScopeState] | None:
    """Each scope's limits as the limiter sees them now, in the order given, read in one
    round trip after Redis TIME; None when Redis cannot say (the console shows that)."""
    try:
        client = get_sync_redis("ratelimit")
        seconds, micros = client.time()
        now_us = int(seconds) * 1_000_000 + int(micros)
        pipe = client.pipeline(transaction=False)
        for scope in scopes:
            prefix = state_prefix(scope.tenant_id, scope.key_id)
            for field in scope.present():
                kind, label = KINDS[field]
                _queue(pipe, kind, f"{prefix}:{label}", now_us)
        replies = list(pipe.execute())
    except redis.RedisError:
        return None
    now = datetime.fromtimestamp(now_us / 1e6, UTC)
    return [
        ScopeState(
            now,
            tuple(
                _state(field, limit, scope.burst_percent, now_us, replies)
                for field, limit in scope.present().items()
            ),
        )
        for scope in scopes
    ]


def scope_state(scope: Scope) -> ScopeState | None:
    """One scope's limits as the limiter sees them now (None: Redis cannot say)."""
    states = scope_states([scope])
    return states[0] if states is not None else None
