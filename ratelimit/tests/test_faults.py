"""Failure modes against a redis-server this test starts on its own free port, then pauses
(SIGSTOP, CLIENT PAUSE) and kills: each mode behaves as documented, within the timeout, the
breaker opens, every fail-open is counted, and the limiter recovers (NOSCRIPT included)."""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from prometheus_client import REGISTRY

from core.errors import Overloaded, RateLimited
from core.redis import get_redis, get_sync_redis, reset_clients
from ratelimit import backlog, flush, limiter
from ratelimit.limits import usage_key
from ratelimit.scripts import ALL
from ratelimit.tests.helpers import make_record, usage_totals
from tenants.models import UsageMinute

TIMEOUT_MS = 50
# What a call may cost beyond the timeout on a busy 2-core box (scheduling, reconnects).
SLACK = 0.3

T = TypeVar("T")


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OwnRedis:
    """A throwaway redis-server on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.port, self.workdir = _free_port(), workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port)]
            + ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            + ["--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=0.2)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def own_redis(tmp_path: Path, settings) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    settings.RATELIMIT_REDIS_URL = server.url
    settings.RATELIMIT_REDIS_TIMEOUT_MS = TIMEOUT_MS
    settings.RATELIMIT_BREAKER_ERRORS = 3
    settings.RATELIMIT_BREAKER_SECONDS = 0.5
    reset_clients()
    limiter.reset_state()
    try:
        yield server
    finally:
        server.kill()
        reset_clients()


async def _timed(call: Awaitable[T]) -> tuple[T, float]:
    started = time.perf_counter()
    return await call, time.perf_counter() - started


RECORD = make_record(tenant={"rpm": 40}, burst_percent=20)  # B = 8


async def test_open_admits_unchecked_within_the_timeout_and_counts_it(own_redis, settings) -> None:
    settings.RATELIMIT_FAILURE_MODE = "open"
    await limiter.admit(RECORD, tokens=1)  # warm: pooled connection, script loaded
    fail_open = _metric("ratelimit_fail_open_total")
    errors = _metric("ratelimit_backend_errors_total", operation="admit")
    own_redis.signal(signal.SIGSTOP)
    admission, elapsed = await _timed(limiter.admit(RECORD, tokens=1))
    assert admission.failed_open and admission.source == "open" and admission.headers == {}
    # One timeout, never a retried one: a second attempt would take at least twice as long.
    assert TIMEOUT_MS / 1000 * 0.8 <= elapsed < 2 * TIMEOUT_MS / 1000
    assert _metric("ratelimit_fail_open_total") == fail_open + 1
    assert _metric("ratelimit_backend_errors_total", operation="admit") == errors + 1


async def test_closed_refuses_with_503_within_the_timeout(own_redis, settings) -> None:
    settings.RATELIMIT_FAILURE_MODE = "closed"
    await limiter.admit(RECORD, tokens=1)
    own_redis.signal(signal.SIGSTOP)
    started = time.perf_counter()
    with pytest.raises(Overloaded) as refused:
        await limiter.admit(RECORD, tokens=1)
    elapsed = time.perf_counter() - started
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
    assert elapsed <= TIMEOUT_MS / 1000 + SLACK


async def test_local_applies_a_conservative_per_process_share(own_redis, settings) -> None:
    settings.RATELIMIT_FAILURE_MODE = "local"
    settings.RATELIMIT_LOCAL_DIVISOR = 4  # 40 rpm -> 10 rpm here, burst 8 -> 2
    own_redis.signal(signal.SIGSTOP)
    local = [await limiter.admit(RECORD, tokens=1) for _ in range(2)]
    assert {a.source for a in local} == {"local"} and not local[0].failed_open
    assert local[1].headers["x-ratelimit-limit-requests"] == "10"
    with pytest.raises(RateLimited) as denied:
        await limiter.admit(RECORD, tokens=1)
    assert denied.value.headers["Retry-After"] == "6"  # one request per 6 s locally
    assert await limiter.settle(local[0], prompt_tokens=2, completion_tokens=3) is True
    assert await limiter.settle(local[0], prompt_tokens=2, completion_tokens=3) is False
    assert list(backlog.take_usage().values()) == [[1, 2, 3, 0]]


async def test_the_breaker_opens_after_repeated_errors_and_closes_on_recovery(
    own_redis, settings
) -> None:
    settings.RATELIMIT_FAILURE_MODE = "open"
    await limiter.admit(RECORD, tokens=1)
    own_redis.signal(signal.SIGSTOP)
    for _ in range(3):
        _, elapsed = await _timed(limiter.admit(RECORD, tokens=1))
        assert elapsed >= TIMEOUT_MS / 1000 * 0.8  # each one paid the timeout
    assert _metric("ratelimit_circuit_open") == 1
    admission, elapsed = await _timed(limiter.admit(RECORD, tokens=1))
    assert admission.failed_open and elapsed < 0.01  # open circuit: Redis not even tried
    health = await limiter.health()
    assert health["ok"] is False and health["error"] == "circuit open"
    own_redis.signal(signal.SIGCONT)
    await asyncio.sleep(0.55)
    probe = await limiter.admit(RECORD, tokens=1)
    assert probe.source == "redis" and _metric("ratelimit_circuit_open") == 0


async def test_client_pause_costs_one_timeout(own_redis, settings) -> None:
    settings.RATELIMIT_FAILURE_MODE = "open"
    await limiter.admit(RECORD, tokens=1)
    redis.Redis(port=own_redis.port).execute_command("CLIENT", "PAUSE", 400, "ALL")
    admission, elapsed = await _timed(limiter.admit(RECORD, tokens=1))
    assert admission.failed_open and elapsed <= TIMEOUT_MS / 1000 + SLACK


async def test_a_killed_and_restarted_redis_is_used_again_after_noscript(
    own_redis, settings
) -> None:
    settings.RATELIMIT_FAILURE_MODE = "open"
    await limiter.admit(RECORD, tokens=1)
    own_redis.kill()
    admission, elapsed = await _timed(limiter.admit(RECORD, tokens=1))
    assert admission.failed_open and elapsed <= TIMEOUT_MS / 1000 + SLACK
    own_redis.start()  # same port, empty script cache
    reloads = _metric("ratelimit_noscript_reloads_total")
    await asyncio.sleep(settings.RATELIMIT_BREAKER_SECONDS)
    for _ in range(3):  # the pool may still hold a dead connection or two
        admission = await limiter.admit(RECORD, tokens=1)
        if admission.source == "redis":
            break
        await asyncio.sleep(settings.RATELIMIT_BREAKER_SECONDS)
    assert admission.source == "redis"
    assert _metric("ratelimit_noscript_reloads_total") == reloads + 1


async def test_a_settle_that_meets_an_outage_is_retried_exactly_once(own_redis, settings) -> None:
    settings.RATELIMIT_FAILURE_MODE = "open"
    record = make_record(tenant_id=9, key={"max_inflight": 1})
    admission = await limiter.admit(record, tokens=1)
    own_redis.signal(signal.SIGSTOP)
    assert await limiter.settle(admission, prompt_tokens=5, completion_tokens=6) is False
    assert backlog.pending_count() == 1
    own_redis.signal(signal.SIGCONT)
    client = get_sync_redis("ratelimit")
    assert backlog.retry_settles(client) == 1
    assert backlog.retry_settles(client) == 0
    assert usage_totals(client.hgetall(usage_key(9))) == {"r": 1, "p": 5, "c": 6}
    # Retrying the same SETTLE again (as after a lost reply) counts nothing more.
    backlog.defer(limiter._settle_call(admission, 5, 6))
    assert backlog.retry_settles(client) == 1
    assert usage_totals(client.hgetall(usage_key(9))) == {"r": 1, "p": 5, "c": 6}


@pytest.mark.django_db(transaction=True)
async def test_readyz_reports_limiter_trouble(own_redis, settings) -> None:
    # The probe's first call connects and loads its script: three round trips within the
    # test's 50 ms timeout, which a busy machine missed once (a fresh-clone CI); warm it first.
    for _ in range(600):  # up to 30 s
        if (await limiter.health())["ok"]:
            break
        await asyncio.sleep(0.05)
    ready = (await AsyncClient().get("/readyz")).json()["checks"]["ratelimit"]
    assert ready["ok"] is True and ready["mode"] == settings.RATELIMIT_FAILURE_MODE, ready
    own_redis.signal(signal.SIGSTOP)
    started = time.perf_counter()
    response = await AsyncClient().get("/readyz")
    check = response.json()["checks"]["ratelimit"]
    assert check["ok"] is False and check["error"] == "TimeoutError"
    assert response.status_code == 503 and time.perf_counter() - started < 10


async def test_it_recovers_from_script_flush_mid_run(own_redis, settings) -> None:
    # On this test's own server: SCRIPT FLUSH empties every database's script cache.
    record = make_record(tenant={"rpm": 600})
    first = await limiter.admit(record, tokens=1)
    reloads = _metric("ratelimit_noscript_reloads_total")
    redis.Redis(port=own_redis.port).script_flush()
    second = await limiter.admit(record, tokens=1)
    assert second.source == "redis"
    assert await limiter.settle(first, prompt_tokens=1, completion_tokens=1) is True
    assert await limiter.settle(second, prompt_tokens=1, completion_tokens=1) is True
    assert _metric("ratelimit_noscript_reloads_total") == reloads + 2  # ADMIT, then SETTLE


def test_the_flusher_thread_preloads_the_scripts_on_a_fresh_redis(own_redis, settings) -> None:
    settings.RATELIMIT_FLUSH_SECONDS = 60  # only the start-up work runs during this test
    fresh = redis.Redis(port=own_redis.port)
    shas = [script.sha for script in ALL]
    assert fresh.script_exists(*shas) == [False] * len(ALL)
    flush.start_flusher()
    try:
        deadline = time.monotonic() + 3
        while fresh.script_exists(*shas) != [True] * len(ALL) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fresh.script_exists(*shas) == [True] * len(ALL)
    finally:
        flush.stop_flusher()


POOLED = 5  # sockets the limiter's pool holds when Redis restarts


async def _fill_the_pool(record) -> None:
    # Concurrent calls each take a socket of their own; back in the pool, they all stay open.
    admissions = await asyncio.gather(*(limiter.admit(record, tokens=1) for _ in range(POOLED)))
    assert {a.source for a in admissions} == {"redis"}
    assert len(get_redis("ratelimit").connection_pool._available_connections) == POOLED


def _restart(server: OwnRedis) -> None:
    server.kill()
    server.start()  # same port; every socket of the pool now leads to the dead process


async def test_a_restarted_redis_costs_one_failed_call_not_one_per_pooled_socket(
    own_redis, settings
) -> None:
    settings.RATELIMIT_FAILURE_MODE = "open"
    settings.RATELIMIT_REDIS_TIMEOUT_MS = 500  # reconnects and NOSCRIPT reloads, on a busy box
    reset_clients()
    record = make_record(tenant={"rpm": 6000})
    await _fill_the_pool(record)
    _restart(own_redis)
    first = await limiter.admit(record, tokens=1)
    assert first.source == "open"  # its socket was dead: the one failed call
    # The failure dropped the pool's other idle sockets: concurrent calls, each on a socket
    # of the pool, all reach Redis (before the fix, each stale one failed once more).
    after = await asyncio.gather(*(limiter.admit(record, tokens=1) for _ in range(POOLED)))
    assert [a.source for a in after] == ["redis"] * POOLED


async def test_a_settle_on_a_dead_socket_is_retried_at_once(own_redis, settings) -> None:
    record = make_record(tenant_id=9, key={"max_inflight": 1})
    admission = await limiter.admit(record, tokens=1)
    # Every client connection dropped, the data kept (as a restart with persistence does).
    redis.Redis(port=own_redis.port).client_kill_filter(_type="normal", skip_me=True)
    assert await limiter.settle(admission, prompt_tokens=5, completion_tokens=6) is True
    assert backlog.pending_count() == 0
    client = get_sync_redis("ratelimit")
    assert usage_totals(client.hgetall(usage_key(9))) == {"r": 1, "p": 5, "c": 6}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["local", "open"])
async def test_usage_of_a_fallback_admission_is_billed_from_redis_once_it_answers(
    own_redis, settings, issued, mode
) -> None:
    settings.RATELIMIT_FAILURE_MODE = mode
    key = issued.api_key
    record = make_record(tenant_id=key.tenant_id, api_key_pk=key.pk, tenant={"rpm": 600})
    await _fill_the_pool(record)
    _restart(own_redis)
    admission = await limiter.admit(record, tokens=1)
    assert admission.source == mode  # admitted without Redis: no lease there to settle
    assert await limiter.settle(admission, prompt_tokens=2, completion_tokens=3) is True
    client = get_sync_redis("ratelimit")
    assert usage_totals(client.hgetall(usage_key(key.tenant_id))) == {"r": 1, "p": 2, "c": 3}
    backlog.clear()  # this process dies: whatever it kept in memory is gone
    report = await sync_to_async(flush.flush)(client)  # any process's flush bills it
    assert (report.requests, report.prompt_tokens, report.completion_tokens) == (1, 2, 3)
    row = await UsageMinute.objects.aget(api_key=key)
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (1, 2, 3)


async def test_usage_waits_in_the_process_when_redis_still_cannot_answer(
    own_redis, settings
) -> None:
    settings.RATELIMIT_FAILURE_MODE = "open"
    errors = _metric("ratelimit_backend_errors_total", operation="count_usage")
    own_redis.signal(signal.SIGSTOP)
    admission = await limiter.admit(RECORD, tokens=1)
    assert await limiter.settle(admission, prompt_tokens=2, completion_tokens=3) is True
    assert list(backlog.take_usage().values()) == [[1, 2, 3, 0]]
    assert _metric("ratelimit_backend_errors_total", operation="count_usage") == errors + 1
