"""Redis clients for the node: one shared pool for general use, one with short timeouts for
the rate limiter. With REDIS_URL unset both point at one in-process fakeredis server that runs
the same Lua scripts (lupa), so `make run` works without a Redis; checks refuse it in production.
"""

import asyncio
import weakref
from functools import cache

import redis
import redis.asyncio as aredis
from django.conf import settings

# redis.asyncio connections belong to the event loop that opened them; tests and management
# commands run several loops in one process, so each loop gets its own client.
_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aredis.Redis]]"
_async_clients = weakref.WeakKeyDictionary()


@cache
def _fake_server():  # type: ignore[no-untyped-def]
    import fakeredis

    return fakeredis.FakeServer()


def _client_kwargs(purpose: str) -> dict:
    if purpose == "ratelimit":
        timeout = settings.RATELIMIT_REDIS_TIMEOUT_MS / 1000
        # No blind retries: ADMIT is not idempotent and an outage must cost one timeout.
        return {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": None}
    return {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}


def _url(purpose: str) -> str:
    return settings.RATELIMIT_REDIS_URL if purpose == "ratelimit" else settings.REDIS_URL


def get_redis(purpose: str = "default") -> aredis.Redis:
    """The asyncio client for this event loop (`purpose` is "default" or "ratelimit")."""
    loop = asyncio.get_running_loop()
    clients = _async_clients.setdefault(loop, {})
    client = clients.get(purpose)
    if client is None:
        if settings.REDIS_EMULATED:
            import fakeredis

            client = fakeredis.aioredis.FakeRedis(server=_fake_server())
        else:
            client = aredis.Redis.from_url(_url(purpose), **_client_kwargs(purpose))
        clients[purpose] = client
    return client


@cache
def get_sync_redis(purpose: str = "default") -> redis.Redis:
    """The blocking client, for management commands and threads outside the event loop."""
    if settings.REDIS_EMULATED:
        import fakeredis

        return fakeredis.FakeRedis(server=_fake_server())
    return redis.Redis.from_url(_url(purpose), **_client_kwargs(purpose))


def reset_clients() -> None:
    """Forget every client (tests that point REDIS_URL elsewhere call this)."""
    _async_clients.clear()
    get_sync_redis.cache_clear()
