"""Failed API-key authentications per client address, on the same ADMIT script.

Each failed authentication of a well-formed token (unknown key id, wrong secret, revoked,
expired, inactive tenant) costs one unit of a GCRA bucket per client address:
API_AUTH_FAILURES_PER_MINUTE a minute, with a burst of that same number (0: off). Once the
bucket is spent, the address's requests are refused with 429 before any key lookup, so a flood
of made-up tokens costs no Postgres query; tenants/auth.py decides which requests are checked
(a key already cached in the process still gets in). Redis holds only an HMAC of the address,
under `rl:v1:{authfail}:addr:<hmac>`; an IPv6 address counts as its /64, the block one
subscriber usually holds, so rotating through it buys nothing.

While Redis cannot answer, a per-process limiter with the same numbers takes over whatever
RATELIMIT_FAILURE_MODE says, as for logins: failing open would hand the flood to Postgres,
failing closed would refuse every key not yet cached. A refusal is remembered in process until
the retry time it gave (a GCRA arrival time only moves forward, so it holds at least that
long): a flood from one address then costs no Redis round trip either.
"""

import hashlib
import hmac
import ipaddress
import time
from collections import OrderedDict

from django.conf import settings

from core.errors import RateLimited
from ratelimit import metrics
from ratelimit.decision import Decision
from ratelimit.headers import go_duration
from ratelimit.limiter import check_buckets, runtime
from ratelimit.limits import Limit, LimitKind
from ratelimit.local import LocalLimiter

TAG = "{authfail}"
UNUSED_KEY = f"rl:v1:{TAG}:unused"  # ADMIT's lease and audit keys: never touched here
NAME = "auth-failures"
MAX_REMEMBERED = 10_000  # addresses whose refusal this process remembers
MARGIN_S = 0.001  # a hair early rather than late: if this clock runs slow, Redis decides

metrics.backend_errors.labels("authfail")  # the series exists before the first error


class _Local:
    """This process's fallback limiter and remembered refusals (key -> monotonic end)."""

    def __init__(self, owner: object) -> None:
        self.owner = owner
        self.limiter = LocalLimiter(divisor=1, lease_ttl_s=1)  # the full numbers, as login's
        self.refused: OrderedDict[str, float] = OrderedDict()

    def refused_for(self, key: str) -> float | None:
        until = self.refused.get(key)
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            del self.refused[key]
            return None
        return left

    def remember(self, key: str, seconds: float) -> None:
        if seconds <= MARGIN_S:
            return
        self.refused[key] = time.monotonic() + seconds - MARGIN_S
        self.refused.move_to_end(key)
        while len(self.refused) > MAX_REMEMBERED:
            self.refused.popitem(last=False)


_local: _Local | None = None


def _state() -> _Local:
    # Rebuilt with the limiter's runtime, so limiter.reset_state() forgets this too.
    global _local
    if _local is None or _local.owner is not runtime():
        _local = _Local(runtime())
    return _local


def _subject(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _key(address: str | None) -> str | None:
    if not address or settings.API_AUTH_FAILURES_PER_MINUTE <= 0:
        return None
    value = f"authfail-addr:{_subject(address)}".encode()
    digest = hmac.new(settings.SECRET_KEY.encode(), value, hashlib.sha256).hexdigest()[:32]
    return f"rl:v1:{TAG}:addr:{digest}"


def _limit(key: str, *, peek: bool) -> Limit:
    per_minute = settings.API_AUTH_FAILURES_PER_MINUTE
    if peek:
        # A look that counts nothing: a token-kind limit reserving 0 tokens costs 0 (ADMIT and
        # the local limiter alike), and a bucket one unit shallower refuses exactly when one
        # more failure (a request-kind unit, same emission interval) would be refused.
        return Limit(NAME, LimitKind.TOKENS, per_minute, per_minute - 1, key)
    return Limit(NAME, LimitKind.REQUESTS, per_minute, per_minute, key)


async def _decide(limit: Limit) -> Decision:
    return await check_buckets(
        (limit,), unused_key=UNUSED_KEY, operation="authfail", local=_state().limiter
    )


def _refusal(key: str, retry_s: float) -> RateLimited:
    _state().remember(key, retry_s)
    retry_us = max(1, int(retry_s * 1_000_000))
    headers = {
        "Retry-After": str(max(1, -(-retry_us // 1_000_000))),
        "retry-after-ms": str(max(1, -(-retry_us // 1000))),
    }
    message = (
        "Too many failed authentications from your address. "
        f"Please try again in {go_duration(retry_us)}."
    )
    return RateLimited(message, headers=headers)


async def refuse_if_blocked(address: str | None) -> None:
    """Raise RateLimited (429) while this address has no failed authentication left.
    Counts nothing; costs no I/O while a refusal is remembered."""
    key = _key(address)
    if key is None:
        return
    left = _state().refused_for(key)
    if left is not None:
        raise _refusal(key, left)
    decision = await _decide(_limit(key, peek=True))
    if not decision.allowed:
        raise _refusal(key, decision.retry_after_us / 1_000_000)


async def count_failure(address: str | None) -> None:
    """Count one failed authentication of this address; RateLimited (429) when it had none
    left (possible when concurrent failures passed refuse_if_blocked together)."""
    key = _key(address)
    if key is None:
        return
    decision = await _decide(_limit(key, peek=False))
    if not decision.allowed:
        raise _refusal(key, decision.retry_after_us / 1_000_000)
