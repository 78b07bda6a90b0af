"""Redis clients for the node: one shared pool for general use, one with short timeouts for
the rate limiter. With REDIS_URL unset both point at one in-process fakeredis server that runs
the same Lua scripts (lupa), so `make run` works without a Redis; checks refuse it in production.

REDIS_URL (and RATELIMIT_REDIS_URL) may name one server, a master watched by Redis Sentinel or
a Redis Cluster (core/redisurl.py has the forms). Callers see one type, redis.Redis: a Sentinel
client is one; a RedisCluster answers the same commands the node uses (single-key commands,
EVALSHA on keys of one hash slot, SCRIPT LOAD on every master), so it is handed out as one.
"""

import asyncio
import weakref
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, cast

import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
import redis.asyncio.sentinel as asentinel
import redis.cluster
import redis.sentinel
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.redisurl import RedisTarget, parse_redis_url

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


def _target(purpose: str) -> RedisTarget:
    return _parsed(_url(purpose), settings.REDIS_CLUSTER)


@lru_cache(maxsize=16)
def _parsed(url: str, cluster: bool) -> RedisTarget:
    # Cached: is_cluster() is asked on every admission (the limiter's keys depend on it).
    return parse_redis_url(url, cluster=cluster)


def _data_kwargs(target: RedisTarget) -> dict[str, Any]:
    return {"username": target.username, "password": target.password, "ssl": target.ssl}


def _sentinel_kwargs(target: RedisTarget, kwargs: dict[str, Any]) -> dict[str, Any]:
    # The Sentinels get the same short timeouts: a dead one must cost what a dead master does.
    timeouts = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    return {**timeouts, "password": target.sentinel_password}


def _cluster_kwargs(purpose: str, kwargs: dict[str, Any], retry: Any) -> dict[str, Any]:
    kwargs = dict(kwargs)
    if purpose == "ratelimit":
        # RedisCluster retries a timed-out command on its own by default; ADMIT must not be.
        kwargs["retry"] = retry(NoBackoff(), 0)
    else:
        kwargs.pop("retry", None)
    return kwargs


def _new_async(purpose: str) -> aredis.Redis:
    target, kwargs = _target(purpose), _client_kwargs(purpose)
    if target.kind == "single":
        return aredis.Redis.from_url(target.url, **kwargs)
    if target.kind == "sentinel":
        sentinel = asentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            list(target.nodes), sentinel_kwargs=_sentinel_kwargs(target, kwargs), **kwargs
        )
        master = sentinel.master_for(target.service, db=target.db, **_data_kwargs(target))
        return cast(aredis.Redis, master)
    nodes = [acluster.ClusterNode(host, port) for host, port in target.nodes]
    cluster = acluster.RedisCluster(
        startup_nodes=nodes, **_data_kwargs(target), **_cluster_kwargs(purpose, kwargs, AsyncRetry)
    )
    return cast(aredis.Redis, cluster)  # see the module docstring


def _new_sync(purpose: str) -> redis.Redis:
    target, kwargs = _target(purpose), _client_kwargs(purpose)
    if target.kind == "single":
        return redis.Redis.from_url(target.url, **kwargs)
    if target.kind == "sentinel":
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            list(target.nodes), sentinel_kwargs=_sentinel_kwargs(target, kwargs), **kwargs
        )
        master = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
            target.service, db=target.db, **_data_kwargs(target)
        )
        return cast(redis.Redis, master)
    nodes = [redis.cluster.ClusterNode(host, port) for host, port in target.nodes]  # type: ignore[no-untyped-call, unused-ignore]
    cluster = redis.cluster.RedisCluster(
        startup_nodes=nodes, **_data_kwargs(target), **_cluster_kwargs(purpose, kwargs, Retry)
    )
    return cast(redis.Redis, cluster)  # see the module docstring


def is_cluster(purpose: str = "default") -> bool:
    """Whether this purpose's Redis is a Cluster (its keys then need hash tags per script)."""
    return not settings.REDIS_EMULATED and _target(purpose).kind == "cluster"


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
            client = _new_async(purpose)
        clients[purpose] = client
    return client


@cache
def get_sync_redis(purpose: str = "default") -> redis.Redis:
    """The blocking client, for management commands and threads outside the event loop."""
    if settings.REDIS_EMULATED:
        import fakeredis

        return fakeredis.FakeRedis(server=_fake_server())
    return _new_sync(purpose)


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
    if client is None or settings.REDIS_EMULATED:
        return
    if isinstance(client, acluster.RedisCluster):
        # A cluster client keeps a pool per node and refreshes its slot map on errors itself.
        return
    await client.connection_pool.disconnect(inuse_connections=False)


def drop_idle_connections_sync(purpose: str = "default") -> None:
    """drop_idle_connections() for the blocking client (its pool takes its own lock)."""
    client = get_sync_redis(purpose)
    if not settings.REDIS_EMULATED and not isinstance(client, redis.cluster.RedisCluster):
        client.connection_pool.disconnect(inuse_connections=False)
