"""Login throttling for the console, on the same ADMIT script (a pure check: no lease, no audit).

Three GCRA buckets, each with a burst of its per-minute number; keys hold HMACs, so Redis never
holds a username or an address. An address means an IPv4 address, or an IPv6 address's /64
(one host usually holds a whole /64, so its addresses are not separate clients).

- per address, any usernames: RATELIMIT_LOGIN_ADDRESS_PER_MINUTE (refuses);
- per (username, address) pair: RATELIMIT_LOGIN_PAIR_PER_MINUTE (refuses);
- per username, from all addresses together: RATELIMIT_LOGIN_USERNAME_PER_MINUTE, a ceiling
  that slows instead of refusing. Past it, an attempt still goes through on a bucket of its own
  pair, RATELIMIT_LOGIN_SLOWED_PER_MINUTE, instead of the ceiling.

The guarantee: an attempt for username U from address A is refused only when A used up its
address allowance, (U, A) its pair allowance, or U is over its ceiling and (U, A) used up its
slowed allowance. Each of those counts attempts from A alone, so attempts from other addresses
never refuse A: at worst they slow it to the slowed rate for U, the first attempt from an
address that tried nothing in the last minute always goes through, and the Retry-After that A
gets is exact (nobody else can spend A's buckets). Clients behind one IPv4 address (a NAT) or
one /64 share it; requests without a known address all share one.

While Redis cannot answer, a per-process limiter with the same numbers takes over whatever
RATELIMIT_FAILURE_MODE says: failing open would invite password guessing, failing closed would
lock the admins out of the console they need during an outage.
"""

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from django.conf import settings

from ratelimit.decision import Decision
from ratelimit.limiter import check_buckets, runtime
from ratelimit.limits import Limit, LimitKind

TAG = "{login}"
UNUSED_KEY = f"rl:v1:{TAG}:unused"  # ADMIT's record and audit keys: never touched here
CEILING = "login-username"
IPV6_GROUP_PREFIX = 64


@dataclass(frozen=True)
class LoginDecision:
    """Whether this attempt may proceed, and if not for how long (seconds) and why; slowed:
    the username was over its ceiling, so the attempt was judged on the slowed bucket."""

    allowed: bool
    retry_after: float
    limit: str | None
    slowed: bool = False


def address_group(address: str) -> str:
    """The address a limit counts: an IPv4 address as is, an IPv6 address as its /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:a.b.c.d is an IPv4 client
    if mapped is not None:
        return str(mapped)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/{IPV6_GROUP_PREFIX}", strict=False))
    return str(ip)


def _digest(kind: str, value: str) -> str:
    mac = hmac.new(settings.SECRET_KEY.encode(), f"{kind}:{value}".encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


def _bucket(name: str, kind: str, per_minute: int, value: str) -> Limit:
    per_minute = max(1, per_minute)  # 0 would divide by zero in the script
    key = f"rl:v1:{TAG}:{kind}:{_digest(kind, value)}"
    return Limit(name, LimitKind.REQUESTS, per_minute, per_minute, key)


def _lanes(address: str | None, username: str) -> tuple[tuple[Limit, ...], tuple[Limit, ...]]:
    """The normal lane (address, pair, ceiling) and the slowed one (address, pair, slowed)."""
    user = username.strip().lower()
    group = address_group(address) if address else ""
    # "\n" cannot occur in an address: no two (username, address) pairs share a value.
    pair = f"{user}\n{group}"
    shared = [_bucket("login-pair", "pair", settings.RATELIMIT_LOGIN_PAIR_PER_MINUTE, pair)]
    if group:
        per_minute = settings.RATELIMIT_LOGIN_ADDRESS_PER_MINUTE
        shared.insert(0, _bucket("login-address", "addr", per_minute, group))
    ceiling = _bucket(CEILING, "user", settings.RATELIMIT_LOGIN_USERNAME_PER_MINUTE, user)
    slowed = _bucket("login-slowed", "slow", settings.RATELIMIT_LOGIN_SLOWED_PER_MINUTE, pair)
    return (*shared, ceiling), (*shared, slowed)


async def _admit(limits: tuple[Limit, ...]) -> Decision:
    """One all-or-nothing check: in Redis, or in this process while Redis cannot answer."""
    return await check_buckets(
        limits, unused_key=UNUSED_KEY, operation="login", local=runtime().login_local
    )


async def check_login(*, address: str | None, username: str) -> LoginDecision:
    """Count one login attempt for this address and username; allowed or retry after."""
    normal, slowed = _lanes(address, username)
    decision = await _admit(normal)
    over_ceiling = not decision.allowed and decision.binding_name == CEILING
    if over_ceiling:
        # Two checks, each atomic: the first consumed nothing (all or nothing), so this one
        # spends the address and pair buckets once, and the pair's slowed bucket instead of
        # the ceiling that other addresses may keep spent.
        decision = await _admit(slowed)
    binding = decision.binding.limit.name if decision.binding else None
    return LoginDecision(
        decision.allowed, decision.retry_after_us / 1_000_000, binding, slowed=over_ceiling
    )


def check_login_sync(*, address: str | None, username: str) -> LoginDecision:
    """check_login() for synchronous views (Django's login form)."""
    return async_to_sync(check_login)(address=address, username=username)
