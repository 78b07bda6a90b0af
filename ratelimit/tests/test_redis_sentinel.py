"""The node behind Redis Sentinel (a master, a replica and three Sentinels from redis-server):
the clients and the cache find the master through the Sentinels, and when the master dies
during traffic the limiter follows the documented failure policy (RATELIMIT_FAILURE_MODE and
the breaker, docs/ratelimit.md) until the Sentinels promote the replica, then runs on the new
master again without a restart."""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core.errors import Overloaded
from core.redis import get_redis, get_sync_redis, is_cluster, reset_clients
from ratelimit import flush, limiter
from ratelimit.limits import dirty_key, usage_key
from ratelimit.tests.helpers import make_record
from ratelimit.tests.redisnodes import MASTER_PORT, REPLICA_PORT, master_port, redis_sentinel
from tenants import keysnapshot
from tenants.models import UsageMinute
from tests.childproc import child_env, django_script, start_child

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sentinel(tmp_path: Path, settings) -> Iterator[tuple[object, str]]:
    with redis_sentinel(tmp_path) as (nodes, url):
        settings.REDIS_URL = settings.RATELIMIT_REDIS_URL = url
        settings.RATELIMIT_REDIS_TIMEOUT_MS = 200  # a shared, loaded box
        settings.RATELIMIT_BREAKER_ERRORS = 3
        settings.RATELIMIT_BREAKER_SECONDS = 0.3
        reset_clients()
        limiter.reset_state()
        yield nodes, url
        reset_clients()


CACHE = """
from django.conf import settings
from django.core.cache import cache
print(settings.CACHES["default"]["OPTIONS"]["CLIENT_CLASS"])
print(cache.add("once:abc", 1, timeout=60), cache.add("once:abc", 1, timeout=60))

import asyncio
from channels.layers import get_channel_layer

async def through_the_channel_layer():
    layer = get_channel_layer()
    name = await layer.new_channel()
    await layer.send(name, {"type": "ping"})
    return (await layer.receive(name))["type"]

print(asyncio.run(through_the_channel_layer()))
"""


def test_the_clients_and_the_cache_reach_the_master_through_the_sentinels(sentinel, issued) -> None:
    _, url = sentinel
    assert not is_cluster()
    key = issued.api_key
    record = make_record(tenant_id=key.tenant_id, api_key_pk=key.pk, key_id=key.key_id)

    async def traffic() -> None:
        admission = await limiter.admit(record, tokens=5)
        assert admission.source == "redis"
        assert await limiter.settle(admission, prompt_tokens=2, completion_tokens=3)
        version = await get_redis().get(keysnapshot.VERSION_KEY)  # issuing the key moved it
        await keysnapshot.remember("KEYsnap", '{"k": 1}', version)
        recalled = await keysnapshot.recall("KEYsnap")
        assert recalled is not None and recalled.payload == '{"k": 1}'

    asyncio.run(traffic())
    master = redis.Redis(port=MASTER_PORT)
    assert master.exists(usage_key(key.tenant_id)) and master.exists(dirty_key(key.tenant_id))
    assert flush.flush().requests == 1
    child = start_child(django_script(CACHE), child_env(REDIS_URL=url))
    assert child.stdout is not None
    lines = child.stdout.read().splitlines()
    assert child.wait(timeout=60) == 0
    assert lines == ["django_redis.client.SentinelClient", "True False", "ping"]
    assert master.exists("cache:1:once:abc")


async def _traffic(record, until_redis_after: float, deadline: float) -> list[tuple[float, str]]:
    """Admit and settle in a loop; each outcome ("redis", "local", "open" or "503") with its
    time. Ends once 20 admissions in a row came from Redis after `until_redis_after`."""
    outcomes: list[tuple[float, str]] = []
    streak = 0
    while time.monotonic() < deadline:
        try:
            admission = await limiter.admit(record, tokens=1)
        except Overloaded:
            outcomes.append((time.monotonic(), "503"))
            streak = 0
            await asyncio.sleep(0.01)
            continue
        outcomes.append((time.monotonic(), admission.source))
        await limiter.settle(admission, prompt_tokens=1, completion_tokens=0)
        streak = streak + 1 if admission.source == "redis" else 0
        if streak >= 20 and time.monotonic() > until_redis_after:
            break
        await asyncio.sleep(0.005)
    return outcomes


@pytest.mark.parametrize(
    ("mode", "during"), [("local", "local"), ("open", "open"), ("closed", "503")]
)
def test_a_failover_during_traffic_follows_the_failure_mode_then_the_new_master(
    sentinel, issued, settings, mode, during
) -> None:
    nodes, _ = sentinel
    settings.RATELIMIT_FAILURE_MODE = mode
    limiter.reset_state()
    key = issued.api_key
    record = make_record(
        tenant_id=key.tenant_id, api_key_pk=key.pk, key_id=key.key_id, key={"rpm": 100_000}
    )

    async def run() -> list[tuple[float, str]]:
        warm = await _traffic(record, 0, time.monotonic() + 30)  # before: all from Redis
        assert {source for _, source in warm} == {"redis"}
        nodes.kill(MASTER_PORT)
        killed = time.monotonic()
        outcomes = await _traffic(record, killed + 1.5, time.monotonic() + 90)
        return [(at - killed, source) for at, source in outcomes]

    outcomes = asyncio.run(run())
    sources = [source for _, source in outcomes]
    # While no master answers, the documented fallback of this mode answers, nothing else.
    assert set(sources) == {"redis", during}, set(sources)
    assert during in sources
    # Then Redis again, for good: the Sentinels promoted the replica and the pool found it.
    assert sources[-20:] == ["redis"] * 20
    assert master_port() == REPLICA_PORT
    promoted = redis.Redis(port=REPLICA_PORT)
    assert promoted.execute_command("ROLE")[0] == b"master"
    # The admissions after the failover were written to the new master.
    assert promoted.exists(usage_key(key.tenant_id))

    async def ping() -> bool:
        # The limiter's client connects within RATELIMIT_REDIS_TIMEOUT_MS (50 ms): on a busy
        # machine one connect may take longer; the new master must answer within a few tries.
        for _ in range(50):
            try:
                return bool(await get_redis("ratelimit").ping())
            except redis.RedisError:
                await asyncio.sleep(0.1)
        return False

    assert asyncio.run(ping())
    pool: Any = get_sync_redis("ratelimit").connection_pool  # a SentinelConnectionPool
    assert pool.get_master_address()[1] == REPLICA_PORT
    # Its buffers still reach Postgres: at least the admissions made on the new master.
    after = sum(1 for at, source in outcomes if source == "redis" and at > 0)
    assert flush.flush().requests >= after  # every settle on the new master
    assert UsageMinute.objects.filter(api_key_id=key.pk).exists()
