"""Login throttling for the console, on the same ADMIT script: one GCRA bucket per client
address and one per username (keyed by an HMAC, so Redis never holds a username). Each attempt
costs one unit in both; an address gets RATELIMIT_LOGIN_ADDRESS_PER_MINUTE attempts a minute,
a username RATELIMIT_LOGIN_USERNAME_PER_MINUTE, each with a burst of that same number.

While Redis cannot answer, a per-process limiter with the same numbers takes over whatever
RATELIMIT_FAILURE_MODE says: failing open would invite password guessing, failing closed would
lock the admins out of the console they need during an outage.
"""

import asyncio
import hashlib
import hmac
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from django.conf import settings

from console.redis import get_redis
from ratelimit.decision import Decision, parse_reply
from ratelimit.limiter import BACKEND_ERRORS, call_timeout, record_backend_error, runtime
from ratelimit.limits import Limit, pack_limits
from ratelimit.local import INFLIGHT_RETRY_US
from ratelimit.scripts import ADMIT

TAG = "{login}"
UNUSED_KEY = f"rl:v1:{TAG}:unused"  # ADMIT's record and audit keys: never touched here


@dataclass(frozen=True)
class LoginDecision:
    """Whether this attempt may proceed, and if not for how long (seconds) and why."""

    allowed: bool
    retry_after: float
    limit: str | None


def _digest(kind: str, value: str) -> str:
    mac = hmac.new(settings.SECRET_KEY.encode(), f"{kind}:{value}".encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


def _limits(address: str | None, username: str) -> tuple[Limit, ...]:
    found = []
    if address:
        per_minute = settings.RATELIMIT_LOGIN_ADDRESS_PER_MINUTE
        key = f"rl:v1:{TAG}:addr:{_digest('addr', address)}"
        found.append(Limit("login-address", "r", per_minute, per_minute, key))
    per_minute = settings.RATELIMIT_LOGIN_USERNAME_PER_MINUTE
    key = f"rl:v1:{TAG}:user:{_digest('user', username.strip().lower())}"
    found.append(Limit("login-username", "r", per_minute, per_minute, key))
    return tuple(found)


async def _check_redis(limits: tuple[Limit, ...]) -> Decision:
    # A pure check: no lease ("" id), no audit (""), so only the two buckets are written.
    args = ["", "", "", f"0 1 1 0 1 {INFLIGHT_RETRY_US}", pack_limits(limits)]
    keys = [UNUSED_KEY, UNUSED_KEY, *(limit.key for limit in limits)]
    async with asyncio.timeout(call_timeout()):
        reply = await ADMIT.run(get_redis("ratelimit"), keys, args)
    return parse_reply(limits, reply)


async def check_login(*, address: str | None, username: str) -> LoginDecision:
    """Count one login attempt for this address and username; allowed or retry after."""
    limits = _limits(address, username)
    decision = None
    if runtime().breaker.allow():
        try:
            decision = await _check_redis(limits)
            runtime().breaker.success()
        except BACKEND_ERRORS as exc:
            record_backend_error("login", exc)
    if decision is None:
        decision = runtime().login_local.admit(limits, 0, "")
    binding = decision.binding.limit.name if decision.binding else None
    return LoginDecision(decision.allowed, decision.retry_after_us / 1_000_000, binding)


def check_login_sync(*, address: str | None, username: str) -> LoginDecision:
    """check_login() for synchronous views (Django's login form)."""
    return async_to_sync(check_login)(address=address, username=username)
