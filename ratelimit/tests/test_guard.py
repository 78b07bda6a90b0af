"""Every limiter call to Redis goes through one guard (limiter.guarded, and guarded_sync for
blocking code): the breaker may skip Redis, a Redis error or a timeout is counted once and
answered by the fallback, an answer closes the breaker, and any other error is not swallowed."""

import asyncio
import socket
from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY

from core.redis import reset_clients
from ratelimit import limiter
from ratelimit.limits import lease_key
from ratelimit.scripts import HEARTBEAT, Arg, Script

KEYS = [lease_key(0, "guard-test")]
ARGS: list[Arg] = ["guard-test", 1, 1]  # a heartbeat of a lease that never exists


def _errors(operation: str = "heartbeat") -> float:
    labels = {"operation": operation}
    return float(REGISTRY.get_sample_value("ratelimit_backend_errors_total", labels) or 0.0)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def redis_down(settings) -> None:
    settings.RATELIMIT_REDIS_URL = f"redis://127.0.0.1:{_closed_port()}/0"
    settings.RATELIMIT_BREAKER_ERRORS = 3
    reset_clients()
    limiter.reset_state()


def _unexpected(reply: object) -> str:
    raise AssertionError(f"no reply expected, got {reply!r}")


def _guarded() -> str:
    async def call() -> str:
        return await limiter.guarded(
            "heartbeat", HEARTBEAT, KEYS, ARGS, on_reply=_unexpected, fallback=lambda: "fallback"
        )

    return asyncio.run(call())


def _guarded_sync() -> str:
    return limiter.guarded_sync(
        "heartbeat", HEARTBEAT, KEYS, ARGS, on_reply=_unexpected, fallback=lambda: "fallback"
    )


@pytest.mark.parametrize("call", [_guarded, _guarded_sync], ids=["async", "blocking"])
def test_a_redis_error_is_counted_once_and_the_fallback_answers(redis_down, call) -> None:
    before = _errors()
    assert call() == "fallback"
    assert _errors() - before == 1
    assert not limiter.runtime().breaker.is_open


@pytest.mark.parametrize("call", [_guarded, _guarded_sync], ids=["async", "blocking"])
def test_the_breaker_opens_after_n_errors_and_then_spares_redis(redis_down, call) -> None:
    before = _errors()
    for _ in range(3):
        assert call() == "fallback"
    assert limiter.runtime().breaker.is_open
    assert call() == "fallback"  # answered without trying Redis: nothing more counted
    assert _errors() - before == 3


class RateLimitedReply(Exception):
    pass


def test_an_answer_closes_the_breaker_even_when_it_becomes_an_error(settings) -> None:
    settings.RATELIMIT_BREAKER_ERRORS = 2
    limiter.reset_state()
    breaker = limiter.runtime().breaker
    breaker.failure()

    def refuse(reply: Sequence[int]) -> None:
        assert int(reply[0]) == 0  # the lease does not exist
        raise RateLimitedReply

    async def call() -> None:
        await limiter.guarded("heartbeat", HEARTBEAT, KEYS, ARGS, on_reply=refuse, fallback=str)

    with pytest.raises(RateLimitedReply):
        asyncio.run(call())
    breaker.failure()  # one failure since the answer: below the threshold of two
    assert not breaker.is_open


class SlowScript(Script[list[int]]):
    """A script that never answers in time."""

    async def run(self, client: object, keys: Sequence[str], args: Sequence[Arg]) -> list[int]:
        await asyncio.sleep(10)
        return [1]


class BrokenScript(Script[list[int]]):
    """A script whose call fails with an error that is not Redis's."""

    async def run(self, client: object, keys: Sequence[str], args: Sequence[Arg]) -> list[int]:
        raise ValueError("a bug, not an outage")

    def run_sync(self, client: object, keys: Sequence[str], args: Sequence[Arg]) -> list[int]:
        raise ValueError("a bug, not an outage")


def test_a_call_past_its_timeout_is_counted_and_falls_back(settings) -> None:
    settings.RATELIMIT_REDIS_TIMEOUT_MS = 10
    before = _errors()

    async def call() -> str:
        return await limiter.guarded(
            "heartbeat",
            SlowScript("slow", "", ""),
            KEYS,
            ARGS,
            on_reply=_unexpected,
            fallback=lambda: "late",
        )

    assert asyncio.run(call()) == "late"
    assert _errors() - before == 1


def test_an_error_that_is_not_redis_s_is_raised_not_counted() -> None:
    before = _errors()

    async def call() -> str:
        return await limiter.guarded(
            "heartbeat",
            BrokenScript("broken", "", ""),
            KEYS,
            ARGS,
            on_reply=_unexpected,
            fallback=lambda: "no",
        )

    with pytest.raises(ValueError, match="a bug"):
        asyncio.run(call())
    with pytest.raises(ValueError, match="a bug"):
        limiter.guarded_sync(
            "heartbeat",
            BrokenScript("broken", "", ""),
            KEYS,
            ARGS,
            on_reply=_unexpected,
            fallback=lambda: "no",
        )
    assert _errors() == before
