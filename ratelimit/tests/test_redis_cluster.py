"""The node on a real Redis Cluster (three masters from redis-server, created with redis-cli
--cluster create): every Lua script runs (no CROSSSLOT: each call's keys share a hash slot),
the flusher finds every buffer through the per-slot dirty index, limits stay exact when several
OS processes hammer one tenant, and the cache (django-redis) and the key snapshot work there."""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.crc import key_slot

from core.errors import RateLimited
from core.redis import get_redis, get_sync_redis, is_cluster, reset_clients
from ratelimit import errorcount, flush, limiter, login
from ratelimit.limits import dirty_key, tenant_tag
from ratelimit.tests.helpers import make_record
from ratelimit.tests.redisnodes import redis_cluster
from tenants import keycache, keysnapshot
from tenants.models import ThrottleEvent, UsageMinute
from tenants.services import tenant_create
from tests.childproc import child_env, django_script, start_child

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_cluster(Path(tmp_path_factory.mktemp("cluster"))) as url:
        yield url


@pytest.fixture
def on_cluster(cluster_url: str, settings) -> Iterator[str]:
    settings.REDIS_URL = settings.RATELIMIT_REDIS_URL = cluster_url
    settings.RATELIMIT_DENY_CACHE = False  # every refusal through Redis's own audit buffer
    settings.RATELIMIT_REDIS_TIMEOUT_MS = 2000  # a loaded, shared box: no fallback by slowness
    reset_clients()
    limiter.reset_state()
    get_sync_redis("ratelimit").flushall()  # every master
    yield cluster_url
    reset_clients()


def _errors() -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "ratelimit_backend_errors":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


def _two_tenants_on_two_masters(issued_key) -> tuple[int, int]:
    # The issued key's tenant, and a second tenant whose slot is on another master.
    first = issued_key.tenant_id
    client: Any = get_sync_redis("ratelimit")  # a RedisCluster
    node = client.get_node_from_key(tenant_tag(first))
    for n in range(50):
        other = tenant_create(slug=f"other-{n}", limits={}, actor="test").pk
        if client.get_node_from_key(tenant_tag(other)) != node:
            return first, other
    raise AssertionError("no tenant landed on another master")


def test_every_lua_script_runs_on_the_cluster_and_the_flush_finds_every_buffer(
    on_cluster, issued
) -> None:
    assert is_cluster("ratelimit") and is_cluster()
    key = issued.api_key
    first, other = _two_tenants_on_two_masters(key)
    assert key_slot(tenant_tag(first).encode()) != key_slot(tenant_tag(other).encode())
    record = make_record(
        tenant_id=first,
        api_key_pk=key.pk,
        key_id=key.key_id,
        key={"rpm": 3, "max_inflight": 5},
        burst_percent=100,
    )
    stranger = make_record(tenant_id=other, api_key_pk=key.pk, key_id=key.key_id)
    before = _errors()

    async def traffic() -> None:
        held = await limiter.admit(record, tokens=10, client_addr="192.0.2.1")  # ADMIT
        assert held.source == "redis"
        assert await limiter.heartbeat(held)  # HEARTBEAT
        assert await limiter.settle(held, prompt_tokens=4, completion_tokens=3)  # SETTLE
        await limiter.admit(record, tokens=1)
        await limiter.admit(record, tokens=1)
        with pytest.raises(RateLimited):  # ADMIT's denial writes the audit buffer
            await limiter.admit(record, tokens=1, client_addr="192.0.2.2")
        await errorcount.count_error(record)  # COUNT_ERROR
        local = limiter.Admission(
            lease_id="x", reserved_tokens=0, headers={}, failed_open=True, source="open",
            tenant_id=other, api_key_pk=key.pk,
        )  # fmt: skip
        await limiter.settle(local, prompt_tokens=2, completion_tokens=1)  # COUNT_USAGE
        decision = await login.check_login(address="192.0.2.9", username="ada")  # ADMIT, buckets
        assert decision.allowed
        version = await get_redis().get(keysnapshot.VERSION_KEY)  # issuing the key moved it
        await keysnapshot.remember("KEYsnap", '{"k": 1}', version)  # REMEMBER_KEY
        recalled = await keysnapshot.recall("KEYsnap")  # RECALL_KEY
        assert recalled is not None and recalled.payload == '{"k": 1}'

    asyncio.run(traffic())
    keycache.bump_version(["KEYsnap"])  # one MULTI on the {keys} slot
    assert asyncio.run(keysnapshot.recall("KEYsnap")) is None
    del stranger
    assert _errors() == before, "a script failed on the cluster (CROSSSLOT?)"
    client = get_sync_redis("ratelimit")
    # Each tenant's buffer is listed in its own slot's index, on its own master.
    assert dirty_key(first) != dirty_key(other)
    assert client.smembers(dirty_key(other)) == {f"rlbuf:v1:{tenant_tag(other)}:usage".encode()}
    report = flush.flush()  # CLAIM on each slot's index
    assert (report.requests, report.prompt_tokens, report.completion_tokens) == (2, 6, 4)
    assert (report.errors, report.refusals) == (1, 1)
    assert UsageMinute.objects.filter(api_key_id=key.pk).count() >= 1
    assert ThrottleEvent.objects.get().count == 1
    assert not client.exists(dirty_key(first)) and not client.exists(dirty_key(other))
    assert _errors() == before


HAMMER = """
import asyncio, sys
from core.errors import QuotaExhausted, RateLimited
from ratelimit import limiter
from ratelimit.tests.helpers import make_record

record = make_record(tenant_id=77, api_key_pk=9, key={"tokens_per_day": int(sys.argv[1])})
print("ready", flush=True)
sys.stdin.readline()

async def main():
    admitted = 0
    while True:
        try:
            admission = await limiter.admit(record, tokens=1)
        except (QuotaExhausted, RateLimited):
            break
        assert admission.source == "redis", admission.source
        admitted += 1
        await limiter.settle(admission, prompt_tokens=1, completion_tokens=0, count_usage=False)
    print(admitted, flush=True)

asyncio.run(main())
"""


def test_a_limit_stays_exact_when_four_processes_hammer_one_tenant(on_cluster) -> None:
    limit = 400
    env = child_env(REDIS_URL=on_cluster, RATELIMIT_REDIS_URL=on_cluster)
    env["RATELIMIT_REDIS_TIMEOUT_MS"] = "2000"  # a loaded box: no fallback by a slow answer
    children = [start_child(django_script(HAMMER, str(limit)), env) for _ in range(4)]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        counts = [int(child.stdout.readline()) for child in children if child.stdout]
        for child in children:
            assert child.wait(timeout=120) == 0
    finally:
        for child in children:
            child.kill()
    assert sum(counts) == limit, counts
    assert sum(1 for c in counts if c > 0) >= 2, counts  # they really raced


CACHE = """
from django.conf import settings
from django.core.cache import cache
print(settings.CACHES["default"]["OPTIONS"]["CONNECTION_FACTORY"])
print(cache.add("once:abc", 1, timeout=60), cache.add("once:abc", 1, timeout=60))
print(cache.get("once:abc"))
"""


def test_the_cache_is_shared_through_the_cluster(on_cluster) -> None:
    child = start_child(django_script(CACHE), child_env(REDIS_URL=on_cluster))
    assert child.stdout is not None
    lines = child.stdout.read().splitlines()
    assert child.wait(timeout=60) == 0
    assert lines == ["console.rediscache.ClusterConnectionFactory", "True False", "1"]
    # In the cluster, on the master of its slot, with django-redis's key prefix.
    assert get_sync_redis().exists("cache:1:once:abc") == 1
