"""Which limits a request is subject to, their Redis keys, and the reservation policy.

Limits come from the KeyRecord the auth layer already holds (no query per request): the key's
overrides (None: not checked at key scope) and its tenant's limits (None: unlimited). Every key
of one admission carries the tenant's hash tag, so a Redis Cluster keeps them in one slot.
"""

import math
from dataclasses import dataclass
from enum import StrEnum
from functools import cache, lru_cache

from django.conf import settings
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from core.redis import is_cluster
from tenants.keycache import KeyRecord


class LimitKind(StrEnum):
    """How a limit counts, as the Lua scripts spell it (the first field of each limit in ADMIT's
    ARGV[5]): the one table of these wire codes. Python compares members, never the letters."""

    REQUESTS = "r"  # GCRA per minute, one unit per request
    TOKENS = "t"  # GCRA per minute, the reserved tokens, corrected when settled
    INFLIGHT = "c"  # leases held at once
    DAY = "d"  # a token quota per UTC calendar day
    MONTH = "m"  # a token quota per UTC calendar month

    @property
    def is_rate(self) -> bool:
        """A per-minute GCRA bucket, the only kind with a burst."""
        return self in (LimitKind.REQUESTS, LimitKind.TOKENS)

    @property
    def is_quota(self) -> bool:
        """A calendar quota: spent, it stays spent until the period ends."""
        return self in (LimitKind.DAY, LimitKind.MONTH)

    @property
    def counts_tokens(self) -> bool:
        return self in (LimitKind.TOKENS, LimitKind.DAY, LimitKind.MONTH)

    @property
    def window_seconds(self) -> int | None:
        """The fixed window a client is told about; None for in-flight (no window) and for a
        month (its length varies)."""
        return _WINDOW_SECONDS.get(self)


_WINDOW_SECONDS = {LimitKind.REQUESTS: 60, LimitKind.TOKENS: 60, LimitKind.DAY: 86400}

# Record field -> (kind, the name used in headers, metrics, audit rows and messages).
KINDS = {
    "rpm": (LimitKind.REQUESTS, "rpm"),
    "tpm": (LimitKind.TOKENS, "tpm"),
    "max_inflight": (LimitKind.INFLIGHT, "inflight"),
    "tokens_per_day": (LimitKind.DAY, "tokens-per-day"),
    "tokens_per_month": (LimitKind.MONTH, "tokens-per-month"),
}
LIMIT_NAMES = tuple(
    f"{scope}-{label}" for scope in ("key", "tenant") for _, label in KINDS.values()
)
DESCRIPTIONS = {
    "rpm": "requests per minute",
    "tpm": "tokens per minute",
    "inflight": "requests in flight",
    "tokens-per-day": "tokens per day (UTC)",
    "tokens-per-month": "tokens per month (UTC)",
}


@dataclass(frozen=True)
class Limit:
    """One checked limit: its name (e.g. key-rpm), kind, value, burst and state key."""

    name: str
    kind: LimitKind
    limit: int
    burst: int
    key: str

    def __post_init__(self) -> None:
        # A wire letter given for the kind ("r") becomes its member, so `kind is ...` holds.
        object.__setattr__(self, "kind", LimitKind(self.kind))

    @property
    def label(self) -> str:
        return self.name.split("-", 1)[1]

    @property
    def is_quota(self) -> bool:
        return self.kind.is_quota


def tenant_tag(tenant_id: int) -> str:
    return f"{{t:{tenant_id}}}"


def state_prefix(tenant_id: int, key_id: str | None = None) -> str:
    """Where one scope's limiter state lives: the tenant's, or one key's (+ ":<label>")."""
    tag = tenant_tag(tenant_id)
    return f"rl:v1:{tag}:k:{key_id}" if key_id is not None else f"rl:v1:{tag}:t:{tenant_id}"


def lease_key(tenant_id: int, lease_id: str) -> str:
    return f"rl:v1:{tenant_tag(tenant_id)}:lease:{lease_id}"


def usage_key(tenant_id: int) -> str:
    return f"rlbuf:v1:{tenant_tag(tenant_id)}:usage"


def throttle_key(tenant_id: int) -> str:
    return f"rlbuf:v1:{tenant_tag(tenant_id)}:throttle"


# The dirty-buffer index: a set of the buffer keys written since the flusher last claimed them,
# added to by the very script that writes the buffer (so the flusher reads the work, never the
# keyspace). On one Redis (or a Sentinel's master) it is one set. On a Cluster a script may
# only touch keys of one hash slot, so there is one set per slot, named with a hash tag that
# lands in that slot: the flusher reads the sets of the slots its tenants' keys are in.
DIRTY_KEY = "rlbuf:v1:dirty"


@cache
def _slot_tags() -> tuple[str, ...]:
    """For each slot, a short string whose CRC16 lands in it (the first such integer)."""
    tags: dict[int, str] = {}
    number = 0
    while len(tags) < REDIS_CLUSTER_HASH_SLOTS:
        tags.setdefault(key_slot(str(number).encode()), str(number))
        number += 1
    return tuple(tags[slot] for slot in range(REDIS_CLUSTER_HASH_SLOTS))


def dirty_key_of_slot(slot: int) -> str:
    return f"{DIRTY_KEY}:{{{_slot_tags()[slot]}}}"


def dirty_key(tenant_id: int) -> str:
    """The index this tenant's buffers are listed in (in their hash slot on a cluster)."""
    if not is_cluster("ratelimit"):
        return DIRTY_KEY
    return dirty_key_of_slot(key_slot(tenant_tag(tenant_id).encode()))


def burst_of(limit: int, burst_percent: int) -> int:
    """Bucket depth B = ceil(limit x burst% / 100), at least 1."""
    return max(1, math.ceil(limit * burst_percent / 100))


@dataclass(frozen=True)
class LimitPlan:
    """What ADMIT is given for one key: the limits it is checked against (key scope first),
    their state keys, and the packed limits argument (ARGV[5])."""

    limits: tuple[Limit, ...]
    keys: tuple[str, ...]
    packed: str


def _scope_limits(
    values: tuple[tuple[str, int | None], ...], scope: str, prefix: str, burst_percent: int
) -> list[Limit]:
    found = []
    for field, value in values:
        if value is None or field not in KINDS:
            continue
        kind, label = KINDS[field]
        burst = burst_of(value, burst_percent) if kind.is_rate else 0
        found.append(Limit(f"{scope}-{label}", kind, int(value), burst, f"{prefix}:{label}"))
    return found


def pack_limits(limits: tuple[Limit, ...]) -> str:
    """ADMIT's ARGV[5]: "kind limit burst name" per limit, joined by ";"."""
    return ";".join(f"{x.kind} {x.limit} {x.burst} {x.name}" for x in limits)


@lru_cache(maxsize=4096)
def _plan(
    tenant_id: int,
    key_id: str,
    burst_percent: int,
    key_values: tuple[tuple[str, int | None], ...],
    tenant_values: tuple[tuple[str, int | None], ...],
) -> LimitPlan:
    limits = (
        *_scope_limits(key_values, "key", state_prefix(tenant_id, key_id), burst_percent),
        *_scope_limits(tenant_values, "tenant", state_prefix(tenant_id), burst_percent),
    )
    return LimitPlan(limits, tuple(x.key for x in limits), pack_limits(limits))


def plan_for(record: KeyRecord) -> LimitPlan:
    """The limits one request of this key is checked against, key scope first (memoized:
    the same limits give the same plan, so the hot path builds no strings)."""
    return _plan(
        record.tenant_id,
        record.key_id,
        record.burst_percent,
        tuple(record.key_limits.items()),
        tuple(record.tenant_limits.items()),
    )


def plan_limits(record: KeyRecord) -> tuple[Limit, ...]:
    return plan_for(record).limits


def clamp_reservation(tokens: int) -> int:
    """Tokens ADMIT reserves: the caller's prompt + max_tokens, within 0..the policy maximum.

    Each limit is further charged at most its own per-period value (see docs/ratelimit.md), so
    an oversized request is never locked out; the real count is settled as debt afterwards.
    """
    return max(0, min(int(tokens), settings.RATELIMIT_MAX_RESERVATION_TOKENS))
