"""The per-process fallback limiter used while Redis cannot answer (RATELIMIT_FAILURE_MODE=local).

It applies the same GCRA and lease rules as the Lua scripts to a conservative share of each
limit: limit // RATELIMIT_LOCAL_DIVISOR (at least 1), the divisor being the number of processes
expected to share the limits. Day and month quotas are not checked here: their counters live
in Redis only, and a short outage costs at most a few minutes of the per-minute share.
"""

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ratelimit.decision import Decision, LimitState
from ratelimit.limits import Limit, LimitKind

MINUTE_US = 60_000_000
INFLIGHT_RETRY_US = 1_000_000
MAX_HELD = 10_000

# One limit checked: the limit, its cost, allowed, retry after (us), its state, its new TAT.
_Checked = tuple[Limit, int, bool, int, LimitState, int]


@dataclass
class _Held:
    limits: tuple[Limit, ...]
    costs: tuple[int, ...]


class LocalLimiter:
    """In-memory GCRA buckets and lease sets keyed like their Redis twins."""

    def __init__(
        self, divisor: int, lease_ttl_s: float, clock: Callable[[], float] = time.monotonic
    ):
        self.divisor = max(1, divisor)
        self.lease_ttl_us = int(lease_ttl_s * 1_000_000)
        self._clock = clock
        self._tats: dict[str, int] = {}
        self._leases: dict[str, dict[str, int]] = {}
        self._held: dict[str, _Held] = {}
        # Settles may come from the flusher thread while the event loop admits.
        self._lock = threading.Lock()

    def _now(self) -> int:
        return int(self._clock() * 1_000_000)

    def share(self, limit: Limit) -> Limit:
        value = max(1, limit.limit // self.divisor)
        burst = max(1, math.ceil(limit.burst / self.divisor)) if limit.burst else 0
        return replace(limit, limit=value, burst=min(burst, value) if burst else 0)

    def _gcra(self, limit: Limit, cost: int, now: int) -> tuple[bool, int, LimitState, int]:
        interval = -(-MINUTE_US // limit.limit)
        tat = max(self._tats.get(limit.key, now), now)
        new_tat = tat + cost * interval
        depth = max(limit.burst, cost) * interval
        if new_tat - now <= depth:
            left = (limit.burst * interval - (new_tat - now)) // interval
            return True, 0, LimitState(limit, max(left, 0), new_tat - now), new_tat
        left = (limit.burst * interval - (tat - now)) // interval
        return False, new_tat - depth - now, LimitState(limit, max(left, 0), tat - now), tat

    def _inflight(self, limit: Limit, now: int) -> tuple[bool, int, LimitState, int]:
        leases = self._leases.setdefault(limit.key, {})
        for lease_id in [k for k, expiry in leases.items() if expiry <= now]:
            del leases[lease_id]
        live = len(leases)
        if live < limit.limit:
            return True, 0, LimitState(limit, limit.limit - live - 1, self.lease_ttl_us), 0
        first = min(leases.values()) - now
        return False, min(first, INFLIGHT_RETRY_US), LimitState(limit, 0, first), 0

    def admit(self, limits: Sequence[Limit], reserve: int, lease_id: str) -> Decision:
        """Check every locally checkable limit; all or nothing, like ADMIT."""
        shares = tuple(self.share(limit) for limit in limits if not limit.is_quota)
        with self._lock:
            now = self._now()
            results: list[_Checked] = []
            for limit in shares:
                cost = 1 if limit.kind is LimitKind.REQUESTS else min(reserve, limit.limit)
                if limit.kind is LimitKind.INFLIGHT:
                    results.append((limit, 0, *self._inflight(limit, now)))
                else:
                    results.append((limit, cost, *self._gcra(limit, cost, now)))
            denied = [r for r in results if not r[2]]
            if denied:
                worst = max(denied, key=lambda r: r[3])
                states = tuple(r[4] for r in results)
                return Decision(False, worst[4], worst[3], now, states)
            self._commit(results, lease_id, now)
            return Decision(True, None, 0, now, tuple(r[4] for r in results))

    def _commit(self, results: list[_Checked], lease_id: str, now: int) -> None:
        for limit, _, _, _, _, new_tat in results:
            if limit.kind is LimitKind.INFLIGHT:
                self._leases[limit.key][lease_id] = now + self.lease_ttl_us
            else:
                self._tats[limit.key] = new_tat
        self._held[lease_id] = _Held(tuple(r[0] for r in results), tuple(r[1] for r in results))
        # Bound memory against callers that never settle: the oldest holds go first.
        while len(self._held) > MAX_HELD:
            del self._held[next(iter(self._held))]
        if len(self._tats) > MAX_HELD:
            self._tats = {k: v for k, v in self._tats.items() if v > now}

    def settle(self, lease_id: str, actual_tokens: int) -> bool:
        """Release the lease and apply refund or debt; False when already settled."""
        with self._lock:
            held = self._held.pop(lease_id, None)
            if held is None:
                return False
            now = self._now()
            for limit, cost in zip(held.limits, held.costs, strict=True):
                if limit.kind is LimitKind.INFLIGHT:
                    self._leases.get(limit.key, {}).pop(lease_id, None)
                elif limit.kind is LimitKind.TOKENS and actual_tokens != cost:
                    interval = -(-MINUTE_US // limit.limit)
                    tat = max(self._tats.get(limit.key, now), now)
                    self._tats[limit.key] = tat + (actual_tokens - cost) * interval
            return True

    def clear(self) -> None:
        with self._lock:
            self._tats.clear()
            self._leases.clear()
            self._held.clear()
