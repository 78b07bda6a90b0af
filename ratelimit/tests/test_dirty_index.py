"""The flusher reads the dirty-buffer index, never the keyspace: the scripts that write a usage
or audit buffer list it in the same call, a flush claims exactly the listed buffers, and its
Redis work is the same with 20,000 unrelated keys as with none (no SCAN, no KEYS)."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.errors import RateLimited
from core.redis import get_sync_redis, reset_clients
from ratelimit import errorcount, flush, limiter
from ratelimit.limits import DIRTY_KEY, dirty_key, throttle_key, usage_key
from ratelimit.scripts import preload_sync
from ratelimit.tests.helpers import make_record
from ratelimit.tests.redisnodes import Nodes
from tenants.keycache import KeyRecord
from tenants.models import UsageMinute

pytestmark = pytest.mark.django_db(transaction=True)

OWN_PORT = 7631  # a server of its own: INFO commandstats counts only this test's commands


@pytest.fixture
def own_redis(tmp_path: Path, settings) -> Iterator[redis.Redis]:
    nodes = Nodes(tmp_path)
    nodes.start(OWN_PORT)
    try:
        settings.REDIS_URL = settings.RATELIMIT_REDIS_URL = f"redis://127.0.0.1:{OWN_PORT}/0"
        settings.RATELIMIT_REDIS_TIMEOUT_MS = 2000  # a loaded box: no fallback by slowness
        settings.RATELIMIT_DENY_CACHE = False
        reset_clients()
        limiter.reset_state()
        yield redis.Redis(port=OWN_PORT)
    finally:
        reset_clients()
        nodes.stop()


def _records(issued) -> tuple[KeyRecord, KeyRecord]:
    key = issued.api_key
    first = make_record(
        tenant_id=key.tenant_id, api_key_pk=key.pk, key_id=key.key_id, key={"rpm": 1},
        burst_percent=100,
    )  # fmt: skip
    second = make_record(tenant_id=key.tenant_id + 1000, api_key_pk=key.pk, key_id=key.key_id)
    return first, second


def _traffic(first, second) -> None:
    async def run() -> None:
        admission = await limiter.admit(first, tokens=3)
        assert admission.source == "redis"
        await limiter.settle(admission, prompt_tokens=2, completion_tokens=1)
        with pytest.raises(RateLimited):
            await limiter.admit(first, tokens=1, client_addr="192.0.2.7")
        await errorcount.count_error(second)

    asyncio.run(run())


def test_the_writers_list_exactly_the_buffers_they_write_and_a_flush_empties_the_list(
    own_redis, issued
) -> None:
    first, second = _records(issued)
    assert dirty_key(first.tenant_id) == dirty_key(second.tenant_id) == DIRTY_KEY
    own_redis.set("unrelated", 1)
    _traffic(first, second)
    listed = {m.decode() for m in own_redis.smembers(DIRTY_KEY)}
    assert listed == {
        usage_key(first.tenant_id),
        throttle_key(first.tenant_id),
        usage_key(second.tenant_id),
    }
    assert own_redis.pttl(DIRTY_KEY) > 0  # the index expires like the buffers it lists
    report = flush.flush()
    assert (report.usage_batches, report.throttle_batches) == (2, 1)
    assert (report.requests, report.errors, report.refusals) == (1, 1, 1)
    assert not own_redis.exists(DIRTY_KEY)
    assert own_redis.get("unrelated") == b"1"
    assert flush.flush().usage_batches == 0  # nothing listed, nothing claimed


def test_a_listed_buffer_that_expired_is_only_dropped_from_the_list(own_redis, issued) -> None:
    first, _ = _records(issued)
    own_redis.sadd(DIRTY_KEY, usage_key(first.tenant_id))  # its buffer expired meanwhile
    report = flush.flush()
    assert report.usage_batches == 0
    assert not own_redis.exists(DIRTY_KEY)


def _commands(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _flush_commands(client: redis.Redis) -> dict[str, int]:
    client.config_resetstat()
    flush.flush()
    calls = _commands(client)
    calls.pop("info", None)
    return calls


def test_unrelated_keys_are_never_scanned_nor_touched(own_redis, issued) -> None:
    first, second = _records(issued)
    preload_sync(get_sync_redis("ratelimit"))  # as the flusher thread does when it starts
    _traffic(first, second)
    without = _flush_commands(own_redis)
    pipe = own_redis.pipeline(transaction=False)
    for i in range(20_000):
        pipe.set(f"unrelated:{i}", i)
    pipe.execute()
    limiter.reset_state()
    _traffic_again(first, second, own_redis)
    with_keys = _flush_commands(own_redis)
    assert "scan" not in with_keys and "keys" not in with_keys
    # The same commands, the same number of times: the flush's cost is its work.
    assert with_keys == without, (with_keys, without)
    assert own_redis.dbsize() >= 20_000
    assert own_redis.get("unrelated:19999") == b"19999"
    assert UsageMinute.objects.exists()


def _traffic_again(first, second, client: redis.Redis) -> None:
    # The same writes as _traffic, the key's rate reset so its first admission passes again.
    for key in client.scan_iter("rl:v1:*"):
        client.delete(key)
    _traffic(first, second)
