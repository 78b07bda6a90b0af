"""The usage flusher's Redis cost next to a keyspace of unrelated keys: before (SCAN the whole
keyspace for buffers, as every process did every 10 s) and after (read the dirty-buffer index).

    .venv/bin/python loadtest/bench_flush.py [--keys 100000] [--dirty 0,100] [--rounds 15]
                                             [--redis-url redis://127.0.0.1:6379/10 | --cluster]

By default it starts its own redis-server on a free loopback port and stops it at the end
(--redis-url: an existing, empty database; --cluster: a three-master Redis Cluster of its own on
ports 7601-7603, as ratelimit/tests/test_redis_cluster.py starts it). It writes --keys
unrelated keys, then for each count of dirty tenants (usage buffers written by the real
COUNT_ERROR script, which lists them in the index) times the claim step both ways, --rounds
times, buffers rewritten between rounds:

  before  the old claim_batches(): per kind, SCAN MATCH for leftover batches and for live
          buffers over the whole keyspace, then RENAME each found buffer;
  after   flush.claim_all(): SMEMBERS of the index, then one CLAIM script per chunk.

The Postgres half of a flush (one transaction per batch) is the same both ways and not timed.
On a cluster the flush reads the index sets of the slots its tenants are in (tenant ids from
Postgres); here --tenants ids (the dirty ones among them) stand in for that query.
Prints the median wall time and Redis CPU (INFO commandstats, usec) of each, and the ratio.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loadtest.harness import own_redis  # noqa: E402

PARSER = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
PARSER.add_argument("--keys", type=int, default=100_000)
PARSER.add_argument("--dirty", default="0,100", help="dirty tenants per round, comma-separated")
PARSER.add_argument("--rounds", type=int, default=15)
PARSER.add_argument("--redis-url", default="")
PARSER.add_argument("--cluster", action="store_true")
PARSER.add_argument("--tenants", type=int, default=1000, help="tenants on a cluster (>= dirty)")
ARGS = PARSER.parse_args()
SERVER = None
CLUSTER = ExitStack()
if ARGS.cluster:
    from ratelimit.tests.redisnodes import redis_cluster

    ARGS.redis_url = CLUSTER.enter_context(redis_cluster(Path(tempfile.mkdtemp(prefix="bench-"))))
elif not ARGS.redis_url:
    SERVER, ARGS.redis_url = own_redis()
os.environ["REDIS_URL"] = os.environ["RATELIMIT_REDIS_URL"] = ARGS.redis_url
# Generous: a 16,384-command pipeline on a loaded box is not an outage.
os.environ["RATELIMIT_REDIS_TIMEOUT_MS"] = "10000"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

import django  # noqa: E402

django.setup()

import redis  # noqa: E402

from core.redis import get_sync_redis  # noqa: E402
from ratelimit import flush  # noqa: E402
from ratelimit.limits import dirty_key, usage_key  # noqa: E402
from ratelimit.scripts import COUNT_ERROR, preload_sync  # noqa: E402

TENANT_BASE = 900_000


def _old_claim(client: redis.Redis, kind: str) -> list[str]:
    """claim_batches() as it was before the index (git 13d81c6), kept here to measure."""
    pattern = f"rlbuf:v1:{{t:*}}:{kind}"
    batches = [flush._text(k) for k in client.scan_iter(match=f"{pattern}:batch:*", count=500)]
    for live in client.scan_iter(match=pattern, count=500):
        batch_key = f"{flush._text(live)}:batch:{uuid.uuid4().hex}"
        try:
            client.rename(live, batch_key)
        except redis.ResponseError:
            continue
        batches.append(batch_key)
    return batches


def old_claim_all(client: redis.Redis) -> list[str]:
    return [b for kind in flush.KINDS for b in _old_claim(client, kind)]


def _fill(client: redis.Redis, count: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.set(f"cache:1:unrelated:{i}", i)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def _dirty(client: redis.Redis, tenants: int) -> None:
    for t in range(TENANT_BASE, TENANT_BASE + tenants):
        COUNT_ERROR.run_sync(client, [usage_key(t), dirty_key(t)], ["1|", 86_400_000])


def _clean(client: redis.Redis, batches: list[str], tenants: int) -> None:
    for batch in batches:
        client.delete(batch)
    for index in {dirty_key(t) for t in range(TENANT_BASE, TENANT_BASE + max(tenants, 1))}:
        client.delete(index)


def _redis_usec(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(v["usec"]) for name, v in stats.items() if name != "cmdstat_info")


def _measure(client: redis.Redis, claim, tenants: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(ARGS.rounds):
        _dirty(client, tenants)
        client.config_resetstat()
        started = time.perf_counter()
        batches = claim(client)
        walls.append((time.perf_counter() - started) * 1000)
        cpus.append(_redis_usec(client) / 1000)
        assert len(batches) == tenants, (len(batches), tenants)
        _clean(client, batches, tenants)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    if ARGS.cluster:
        ids = range(TENANT_BASE, TENANT_BASE + ARGS.tenants)
        flush._indexes = lambda: sorted({dirty_key(t) for t in ids})
    client = get_sync_redis("ratelimit")
    preload_sync(client)
    assert client.dbsize() == 0, "use an empty database"
    _fill(client, ARGS.keys)
    kind = f"cluster, 3 masters, {ARGS.tenants} tenants" if ARGS.cluster else "one server"
    print(f"{kind}; {ARGS.keys} unrelated keys; rounds: {ARGS.rounds}; median of each")
    print("dirty tenants | before ms (Redis CPU ms) | after ms (Redis CPU ms) | ratio wall (CPU)")
    for tenants in (int(x) for x in ARGS.dirty.split(",")):
        before = _measure(client, old_claim_all, tenants)
        after = _measure(client, flush.claim_all, tenants)
        ratio = before[0] / after[0], before[1] / max(after[1], 0.001)
        print(
            f"{tenants:>13} | {before[0]:>9.2f} ({before[1]:>7.2f}) | "
            f"{after[0]:>8.2f} ({after[1]:>6.2f}) | {ratio[0]:>7.0f}x ({ratio[1]:.0f}x)"
        )


try:
    main()
finally:
    if SERVER is not None:
        SERVER.kill()
        SERVER.wait()
    CLUSTER.close()
