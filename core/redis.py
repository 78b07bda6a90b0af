"""Redis clients for the node: one shared pool for general use, one with short timeouts for
the rate limiter. With REDIS_URL unset both point at one in-process fakeredis server that runs
the same Lua scripts (lupa), so `make run` works without a Redis; checks refuse it in production.
"""

import asyncio
import weakref
from functools import cache
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aredis
from django.conf import settings

if TYPE_CHECKING:
    # Imported where used at run time: production never loads the emulation.
    import fakeredis

# redis.asyncio connections belong to the event loop that opened them; tests and management
# commands run several loops in one process, so each loop gets its own client.
_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aredis.Redis]]"
_async_clients = weakref.WeakKeyDictionary()


@cache
def _fake_server() -> "fakeredis.FakeServer":
    import fakeredis

    return fakeredis.FakeServer()


def _client_kwargs(purpose: str) -> dict[str, Any]:
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


async def drop_idle_connections(purpose: str = "default") -> None:
    """Close the idle connections of this loop's client (they reconnect on their next use).

    After Redis restarts, every pooled socket is dead, but redis.asyncio hands one out without
    noticing (it checks its own buffer, not the socket), so each fails once when reused; with
    no retries, that is one failed call per stale socket. Called after a connection error, this
    makes a restart cost one failed call. Connections in use are left to their callers.
    """
    client = _async_clients.get(asyncio.get_running_loop(), {}).get(purpose)
    if client is not None and not settings.REDIS_EMULATED:
        await client.connection_pool.disconnect(inuse_connections=False)


def drop_idle_connections_sync(purpose: str = "default") -> None:
    """drop_idle_connections() for the blocking client (its pool takes its own lock)."""
    if not settings.REDIS_EMULATED:
        get_sync_redis(purpose).connection_pool.disconnect(inuse_connections=False)
