"""admit / settle / heartbeat: the rate limiter's Python API.

One admission is one EVALSHA of ADMIT (ratelimit/lua/admit.lua) on the limiter's own Redis pool
(short timeouts, no retries). When Redis cannot answer, RATELIMIT_FAILURE_MODE decides: open
(admit, counted), closed (503) or local (a conservative per-process limiter); a circuit breaker
makes an outage cost one timeout per probe instead of one per request.
"""

import asyncio
import ipaddress
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import Overloaded
from core.redis import (
    drop_idle_connections,
    drop_idle_connections_sync,
    get_redis,
    get_sync_redis,
)
from ratelimit import backlog, denycache, metrics
from ratelimit.breaker import CircuitBreaker
from ratelimit.decision import Decision, parse_reply
from ratelimit.headers import denial_error, rate_headers
from ratelimit.limits import (
    Limit,
    LimitKind,
    LimitPlan,
    clamp_reservation,
    dirty_key,
    lease_key,
    pack_limits,
    plan_for,
    throttle_key,
    usage_key,
)
from ratelimit.local import INFLIGHT_RETRY_US, LocalLimiter
from ratelimit.scripts import ADMIT, COUNT_USAGE, HEARTBEAT, SETTLE, Arg, Script
from tenants.keycache import KeyRecord

logger = logging.getLogger(__name__)

# What "Redis cannot answer" looks like: refused, reset, timed out, OOM, loading, read-only.
BACKEND_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
# Errors after which the pool's idle sockets may be dead or useless too: Redis restarted (each
# pooled socket would fail once when reused), a failover left us on a read-only replica, or a
# stall timed out. Reconnecting them costs less than one failed call each. (asyncio's timeout
# is the built-in TimeoutError, an OSError.)
STALE_ERRORS = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)

T = TypeVar("T")
R = TypeVar("R")  # a script's reply


@dataclass
class Admission:
    """An admitted request: settle it exactly once (in a `finally`), heartbeat long ones."""

    lease_id: str
    reserved_tokens: int
    headers: dict[str, str]
    failed_open: bool
    source: str  # "redis", "local" (fallback limiter) or "open" (unchecked)
    tenant_id: int
    api_key_pk: int
    keys: tuple[str, ...] = ()
    decision: Decision | None = None
    settled: bool = field(default=False, compare=False)


class _Runtime:
    """Per-process limiter state built from settings (rebuilt by reset_state())."""

    def __init__(self) -> None:
        self.breaker = CircuitBreaker(
            settings.RATELIMIT_BREAKER_ERRORS, settings.RATELIMIT_BREAKER_SECONDS
        )
        self.local = LocalLimiter(
            settings.RATELIMIT_LOCAL_DIVISOR, settings.RATELIMIT_LEASE_TTL_SECONDS
        )
        # Login throttling's fallback keeps the full per-minute numbers (see login.py).
        self.login_local = LocalLimiter(divisor=1, lease_ttl_s=1)


_runtime: _Runtime | None = None


def runtime() -> _Runtime:
    global _runtime
    if _runtime is None:
        _runtime = _Runtime()
    return _runtime


def reset_state() -> None:
    """Forget the breaker, the local limiter and queued work (tests, settings changes)."""
    global _runtime
    if _runtime is not None:
        _runtime.breaker.reset()
    _runtime = None
    backlog.clear()
    denycache.clear()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def call_timeout() -> float:
    # redis-py's socket timeout bounds each read; this outer bound also covers a stalled
    # connect-and-handshake, and is generous so the socket timeout is what normally fires.
    return settings.RATELIMIT_REDIS_TIMEOUT_MS / 1000 * 4 + 0.05


def record_backend_error(operation: str, exc: BaseException) -> None:
    metrics.backend_errors.labels(operation).inc()
    runtime().breaker.failure()
    logger.warning("rate limiter: Redis %s failed (%s)", operation, type(exc).__name__)


async def guarded(
    operation: str,
    script: Script[R],
    keys: Sequence[str],
    args: Sequence[Arg],
    *,
    on_reply: Callable[[R], T],
    fallback: Callable[[], T],
) -> T:
    """Run one script on the limiter's pool behind the circuit breaker: on_reply(reply) when
    Redis answers, fallback() when the breaker is open or Redis cannot answer in time (the
    error counted under `operation`). Every limiter call to Redis but the readiness probe
    (health()) goes through here."""
    if not runtime().breaker.allow():
        return fallback()
    try:
        async with asyncio.timeout(call_timeout()):
            reply = await script.run(get_redis("ratelimit"), keys, args)
    except BACKEND_ERRORS as exc:
        if isinstance(exc, STALE_ERRORS):
            await _drop_idle_connections()
        return _unanswered(operation, exc, fallback)
    return _answered(reply, on_reply)


def guarded_sync(
    operation: str,
    script: Script[R],
    keys: Sequence[str],
    args: Sequence[Arg],
    *,
    on_reply: Callable[[R], T],
    fallback: Callable[[], T],
) -> T:
    """guarded() for blocking code outside an event loop (a thread): the same breaker and
    decisions on the blocking pool, whose socket timeout bounds the call."""
    if not runtime().breaker.allow():
        return fallback()
    try:
        reply = script.run_sync(get_sync_redis("ratelimit"), keys, args)
    except BACKEND_ERRORS as exc:
        if isinstance(exc, STALE_ERRORS):
            with suppress(*BACKEND_ERRORS):
                drop_idle_connections_sync("ratelimit")
        return _unanswered(operation, exc, fallback)
    return _answered(reply, on_reply)


async def _drop_idle_connections() -> None:
    # Best effort: closing a socket that is already dead may fail in its own way.
    with suppress(*BACKEND_ERRORS):
        await drop_idle_connections("ratelimit")


def _unanswered(operation: str, exc: BaseException, fallback: Callable[[], T]) -> T:
    record_backend_error(operation, exc)
    return fallback()


def _answered(reply: R, on_reply: Callable[[R], T]) -> T:
    # Before on_reply, which may raise a 429: a refusal is still an answer from Redis.
    runtime().breaker.success()
    return on_reply(reply)


def _audit_address(addr: str | None) -> str:
    """The caller's address as a normalized IP; anything else is not sampled (the audit
    buffer stores addresses comma-separated under |-separated fields)."""
    if not addr:
        return ""
    try:
        return str(ipaddress.ip_address(addr.strip()))
    except ValueError:
        return ""


def _admit_args(
    record: KeyRecord, packed: str, reserve: int, lease_id: str, addr: str | None
) -> list[str]:
    numbers = (
        reserve,
        _ms(settings.RATELIMIT_LEASE_TTL_SECONDS),
        _ms(settings.RATELIMIT_LEASE_RECORD_TTL_SECONDS),
        settings.RATELIMIT_AUDIT_SAMPLE_ADDRESSES,
        _ms(settings.RATELIMIT_BUFFER_TTL_SECONDS),
        INFLIGHT_RETRY_US,
    )
    address = _audit_address(addr)
    return [lease_id, f"{record.api_key_pk}|", address, " ".join(map(str, numbers)), packed]


def _deny(record: KeyRecord, decision: Decision, result: str) -> Exception:
    metrics.decisions.labels(result, decision.binding_name).inc()
    metrics.throttled.labels(record.tenant_slug).inc()
    return denial_error(decision, record)


def _admission(
    record: KeyRecord,
    lease_id: str,
    reserve: int,
    source: str,
    decision: Decision | None = None,
    keys: tuple[str, ...] = (),
) -> Admission:
    return Admission(
        lease_id=lease_id,
        reserved_tokens=reserve,
        headers=rate_headers(decision) if decision is not None else {},
        failed_open=source == "open",
        source=source,
        tenant_id=record.tenant_id,
        api_key_pk=record.api_key_pk,
        keys=keys,
        decision=decision,
    )


def _fallback(
    record: KeyRecord, limits: tuple[Limit, ...], reserve: int, lease_id: str
) -> Admission:
    mode = settings.RATELIMIT_FAILURE_MODE
    if mode == "open":
        metrics.fail_open.inc()
        metrics.decisions.labels("failed_open", "none").inc()
        return _admission(record, lease_id, reserve, "open")
    if mode == "closed":
        metrics.decisions.labels("failed_closed", "none").inc()
        raise Overloaded(
            "Rate limiting is unavailable right now; please retry shortly.",
            headers={"Retry-After": "1"},
        )
    decision = runtime().local.admit(limits, reserve, lease_id)
    if not decision.allowed:
        raise _deny(record, decision, "local_denied")
    metrics.decisions.labels("local_allowed", "none").inc()
    return _admission(record, lease_id, reserve, "local", decision)


def refuse_if_denied(record: KeyRecord, client_addr: str | None = None) -> None:
    """Raise the 429 at once if Redis refused this key moments ago on a limit that cannot have
    recovered yet (ratelimit/denycache.py); audited like every refusal. Cheap: no I/O."""
    cached = denycache.still_denied(record)
    if cached is not None:
        backlog.count_throttle(record, cached.binding_name, _audit_address(client_addr))
        raise _deny(record, cached, "cached_denied")


async def admit(record: KeyRecord, *, tokens: int, client_addr: str | None = None) -> Admission:
    """Admit one request of this key reserving `tokens` (prompt + max_tokens), or raise
    RateLimited / QuotaExhausted (429, headers on the exception, audited) or Overloaded."""
    refuse_if_denied(record, client_addr)
    plan = plan_for(record)
    reserve = clamp_reservation(tokens)
    lease_id = os.urandom(16).hex()  # 128 random bits, as a uuid4 has, at a tenth the cost
    keys = [lease_key(record.tenant_id, lease_id), throttle_key(record.tenant_id), *plan.keys]
    keys.append(dirty_key(record.tenant_id))  # KEYS[3+n]: where a denial lists its audit
    args = _admit_args(record, plan.packed, reserve, lease_id, client_addr)
    started = time.perf_counter()
    return await guarded(
        "admit",
        ADMIT,
        keys,
        args,
        on_reply=partial(_admitted, record, plan, reserve, lease_id, started),
        fallback=partial(_fallback, record, plan.limits, reserve, lease_id),
    )


def _admitted(
    record: KeyRecord,
    plan: LimitPlan,
    reserve: int,
    lease_id: str,
    started: float,
    reply: bytes | str,
) -> Admission:
    """ADMIT's answer: the admission, or the 429 (remembered by the denial cache)."""
    metrics.admission_seconds.observe(time.perf_counter() - started)
    decision = parse_reply(plan.limits, reply)
    if not decision.allowed:
        denycache.remember(record, decision)
        raise _deny(record, decision, "denied")
    metrics.decisions.labels("allowed", "none").inc()
    return _admission(record, lease_id, reserve, "redis", decision, plan.keys)


async def check_buckets(
    limits: tuple[Limit, ...], *, unused_key: str, operation: str, local: LocalLimiter
) -> Decision:
    """One all-or-nothing ADMIT of plain buckets: no lease, no reservation, no audit (login and
    failed-authentication throttling). `unused_key` stands for ADMIT's lease and audit keys,
    never touched, in the buckets' hash slot. While Redis cannot answer, `local` decides with
    the same numbers, whatever RATELIMIT_FAILURE_MODE says."""
    args = ["", "", "", f"0 1 1 0 1 {INFLIGHT_RETRY_US}", pack_limits(limits)]
    keys = [unused_key, unused_key, *(limit.key for limit in limits)]
    return await guarded(
        operation,
        ADMIT,
        keys,
        args,
        on_reply=partial(parse_reply, limits),
        fallback=partial(local.admit, limits, 0, ""),
    )


async def charge_refusal(record: KeyRecord, *, client_addr: str | None = None) -> None:
    """A request refused before admission (bad input, a prompt too long) still spends one unit
    of the key's and tenant's request rates, so a flood of such requests meets 429s (and the
    denial cache, before its bodies are parsed) like any other flood. Raises that 429 once the
    rate is spent. A pure check: no lease, no tokens; Redis down: nothing is charged."""
    refuse_if_denied(record, client_addr)
    limits = tuple(x for x in plan_for(record).limits if x.kind is LimitKind.REQUESTS)
    if not limits:
        return
    keys = [lease_key(record.tenant_id, ""), throttle_key(record.tenant_id)]
    keys += [limit.key for limit in limits]
    keys.append(dirty_key(record.tenant_id))
    args = _admit_args(record, pack_limits(limits), 0, "", client_addr)
    await guarded(
        "charge",
        ADMIT,
        keys,
        args,
        on_reply=partial(_charged, record, limits),
        fallback=lambda: None,
    )


def _charged(record: KeyRecord, limits: tuple[Limit, ...], reply: bytes | str) -> None:
    decision = parse_reply(limits, reply)
    if not decision.allowed:
        denycache.remember(record, decision)
        raise _deny(record, decision, "denied")


def _settle_call(
    admission: Admission,
    prompt: int,
    completion: int,
    count_usage: bool = True,
    adapter: str = "",
) -> backlog.Call:
    keys = [lease_key(admission.tenant_id, admission.lease_id), usage_key(admission.tenant_id)]
    args: list[Arg] = [
        admission.lease_id,
        prompt,
        completion,
        f"{admission.api_key_pk}|" if count_usage else "",
        _ms(settings.RATELIMIT_BUFFER_TTL_SECONDS),
        adapter,
    ]
    return backlog.Call([*keys, *admission.keys, dirty_key(admission.tenant_id)], args)


async def settle(
    admission: Admission,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    count_usage: bool = True,
    adapter: str = "",
) -> bool:
    """Apply the real token count and release the lease, exactly once per lease (a second call
    does nothing). True when this call applied it; False when it was already settled or Redis
    could not answer twice in a row (then it is queued and retried by the flusher: SETTLE is
    idempotent). count_usage=False releases a request that never ran (refunded, not counted
    as usage). Usage is in Redis's usage buffer when this returns, whenever Redis answers;
    a request that decoded with an adapter (its NAME) is counted for that adapter too."""
    prompt, completion = max(0, int(prompt_tokens)), max(0, int(completion_tokens))
    if admission.source != "redis":
        return await _settle_locally(admission, prompt, completion, count_usage, adapter)
    call = _settle_call(admission, prompt, completion, count_usage, adapter)
    try:
        settled = await _settle_once(admission, call)
        if settled is None:
            # At once, once more: the failed call dropped the pool's idle sockets (a Redis
            # restart leaves them all dead), and SETTLE is idempotent: a retry of one that ran
            # finds no lease record and does nothing.
            settled = await _settle_once(admission, call)
    except asyncio.CancelledError:
        # Cancelled mid-call, the script may or may not have run: a retry is safe either way.
        backlog.defer(call)
        raise
    return _settle_later(call) if settled is None else settled


async def _settle_once(admission: Admission, call: backlog.Call) -> bool | None:
    """One SETTLE: its answer (see settle()), or None when Redis could not answer."""
    return await guarded(
        "settle",
        SETTLE,
        call.keys,
        call.args,
        on_reply=partial(_settled, admission),
        fallback=_no_answer,
    )


def _no_answer() -> None:
    return None


def _settled(admission: Admission, reply: list[int]) -> bool:
    admission.settled = True
    return int(reply[0]) == 1


def _settle_later(call: backlog.Call) -> bool:
    backlog.defer(call)  # the flusher retries it
    return False


async def _settle_locally(
    admission: Admission, prompt: int, completion: int, count_usage: bool, adapter: str
) -> bool:
    if admission.settled:
        return False
    # Before the first await: a second settle of this admission meanwhile does nothing.
    admission.settled = True
    if admission.source == "local":
        runtime().local.settle(admission.lease_id, prompt + completion)
    if count_usage:
        await _count_usage(admission, prompt, completion, adapter)
    return True


async def _count_usage(admission: Admission, prompt: int, completion: int, adapter: str) -> None:
    """The usage of a request admitted without Redis: in Redis's usage buffer if Redis answers
    now (from there any process's flush bills it, so it outlives this process), else in this
    process's backlog until the flusher writes it to Postgres. Never retried: COUNT_USAGE has
    no lease to make it idempotent."""
    keys = [usage_key(admission.tenant_id), dirty_key(admission.tenant_id)]
    args: list[Arg] = [
        f"{admission.api_key_pk}|",
        prompt,
        completion,
        _ms(settings.RATELIMIT_BUFFER_TTL_SECONDS),
        adapter,
    ]
    later = partial(
        backlog.count_usage, admission.tenant_id, admission.api_key_pk, prompt, completion, adapter
    )
    try:
        await guarded("count_usage", COUNT_USAGE, keys, args, on_reply=_ignore, fallback=later)
    except asyncio.CancelledError:
        # Cancelled mid-call (settle runs shielded, so the loop is closing): the script may or
        # may not have run. Counted here too: a rare double count rather than a delivered
        # answer never billed.
        later()
        raise


def _ignore(_reply: object) -> None:
    return None


async def heartbeat(admission: Admission) -> bool:
    """Extend the lease of a long request. False only when Redis says the lease is gone
    (settled, or expired and reclaimed); an unreachable Redis is not proof of loss."""
    if admission.source != "redis":
        return True
    keys = [lease_key(admission.tenant_id, admission.lease_id), *admission.keys]
    args: list[Arg] = [
        admission.lease_id,
        _ms(settings.RATELIMIT_LEASE_TTL_SECONDS),
        _ms(settings.RATELIMIT_LEASE_RECORD_TTL_SECONDS),
    ]
    return await guarded(
        "heartbeat",
        HEARTBEAT,
        keys,
        args,
        on_reply=lambda reply: int(reply[0]) == 1,
        fallback=lambda: True,
    )


async def _beat(admission: Admission, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        if not await heartbeat(admission):
            logger.warning("rate limiter: lease %s was lost", admission.lease_id[:8])
            return


@asynccontextmanager
async def keep_alive(admission: Admission, interval: float | None = None) -> AsyncIterator[None]:
    """Heartbeat the admission every RATELIMIT_HEARTBEAT_SECONDS while the block runs."""
    task = asyncio.create_task(_beat(admission, interval or settings.RATELIMIT_HEARTBEAT_SECONDS))
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def health() -> dict[str, bool | str]:
    """For /readyz: the breaker's state and one real script call on the limiter's pool."""
    state: dict[str, bool | str] = {"ok": True, "mode": settings.RATELIMIT_FAILURE_MODE}
    if runtime().breaker.is_open:
        return {**state, "ok": False, "error": "circuit open"}
    # Not through guarded(): a probe reports the breaker's state, it must not move it.
    probe = lease_key(0, "readyz-probe")
    try:
        async with asyncio.timeout(call_timeout()):
            # A heartbeat of a lease that never exists: reads only, but loads the script.
            await HEARTBEAT.run(get_redis("ratelimit"), [probe], ["readyz-probe", 1, 1])
    except BACKEND_ERRORS as exc:
        return {**state, "ok": False, "error": type(exc).__name__}
    return state
