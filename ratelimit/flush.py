"""Moves the usage counters and the 429 audit buffer from Redis to Postgres, exactly once.

Per tenant, SETTLE counts usage (and COUNT_ERROR error answers) in `rlbuf:v1:{t:<id>}:usage`
and ADMIT counts refusals in `rlbuf:v1:{t:<id>}:throttle`. The script that writes a buffer
also lists it in the dirty-buffer index (ratelimit/limits.dirty_key: one set, or one per hash
slot on a cluster), so a flush reads the index, never the keyspace. For each listed buffer:

1. CLAIM (lua/claim.lua) RENAMEs it to `<live>:batch:<uuid>` and lists the batch in its place:
   atomic, so the requests that settle afterwards start a new live hash (listed again) and
   nothing is counted twice or lost between the read and the delete;
2. in ONE Postgres transaction, insert UsageBatch("<kind>:<uuid>") and add the batch's rows
   to UsageMinute / ThrottleEvent (upserts that add to what is there; the writes are the
   tenants app's services: usage_batch_apply, usage_minutes_add, throttle_events_add);
3. DEL the batch key and drop it from the index.

A process that dies after 1 leaves the batch key listed: the next flush (any process) applies
it. One that dies after 2 leaves a listed batch key whose id is already in UsageBatch: the next
flush only deletes it. Two flushers on one batch: UsageBatch.batch_id is unique, so the
second's transaction inserts nothing. See docs/usage-accounting.md.
"""

import logging
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Required, TypedDict

import redis
import redis.cluster
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from core.redis import get_sync_redis, is_cluster
from ratelimit import backlog, metrics
from ratelimit.limits import DIRTY_KEY, dirty_key
from ratelimit.scripts import CLAIM, preload_sync
from tenants.models import ApiKey, Tenant
from tenants.services import (
    Refusals,
    adapter_usage_days_add,
    throttle_events_add,
    usage_batch_apply,
    usage_batches_prune,
    usage_minutes_add,
)

logger = logging.getLogger(__name__)

KINDS = ("usage", "throttle")

# A buffer hash as HGETALL returns it (bytes without decode_responses).
Fields = Mapping[bytes | str, bytes | str]


class _Refused(TypedDict, total=False):
    """One audit row read from a throttle buffer: count, first and last seen, addresses."""

    n: Required[int]
    f: datetime
    l: datetime  # noqa: E741 (the letters of ADMIT's audit buffer fields)
    a: Required[list[str]]


@dataclass
class FlushReport:
    """What one flush moved."""

    usage_batches: int = 0
    usage_rows: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    throttle_batches: int = 0
    throttle_rows: int = 0
    refusals: int = 0
    already_applied: int = 0
    dropped_rows: int = 0
    local_rows: int = 0
    adapter_rows: int = 0  # (key, minute, adapter) rows summed into AdapterUsageDay
    settles_retried: int = 0

    def add(self, other: "FlushReport") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> str:
        return (
            f"usage: {self.usage_rows} rows from {self.usage_batches} batches "
            f"({self.requests} requests, {self.prompt_tokens} prompt tokens, "
            f"{self.completion_tokens} completion tokens, {self.errors} errors); "
            f"throttles: {self.throttle_rows} rows from {self.throttle_batches} batches "
            f"({self.refusals} refusals); already applied: {self.already_applied}; "
            f"dropped (unknown keys): {self.dropped_rows}; from this process's fallback: "
            f"{self.local_rows} rows; settles retried: {self.settles_retried}"
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# Live buffers claimed per CLAIM call: one script holds its slot's shard for its whole run.
CLAIM_CHUNK = 200


def _kind_of(buffer_key: str) -> str:
    return "throttle" if ":throttle" in buffer_key else "usage"


Members = set[bytes] | set[bytes | str]


def _read_indexes(client: redis.Redis, indexes: list[str]) -> list[Members]:
    if isinstance(client, redis.cluster.RedisCluster):
        return _read_per_master(client, indexes)
    pipe = client.pipeline(transaction=False)
    for index in indexes:
        pipe.smembers(index)
    replies: list[Members] = pipe.execute()
    return replies


def _read_per_master(client: redis.cluster.RedisCluster, indexes: list[str]) -> list[Members]:
    """SMEMBERS of these per-slot indexes, one plain pipeline per master: redis-py's cluster
    pipeline spends about twice the Python per command (measured: 2.9 s against 1.7 s for all
    16,384 slots on a loaded box; docs/benchmarks.md).
    A slot that moved meanwhile answers MOVED: those few are asked again through the cluster
    client, which follows the redirect."""
    by_node: dict[str, list[int]] = {}
    for at, index in enumerate(indexes):
        node = client.get_node_from_key(index)  # type: ignore[no-untyped-call]
        by_node.setdefault(node.name, []).append(at)
    replies: list[Members] = [set() for _ in indexes]
    for name, positions in by_node.items():
        connection = client.get_node(node_name=name).redis_connection  # type: ignore[no-untyped-call]
        pipe = connection.pipeline(transaction=False)
        for at in positions:
            pipe.smembers(indexes[at])
        for at, reply in zip(positions, pipe.execute(raise_on_error=False), strict=True):
            replies[at] = client.smembers(indexes[at]) if isinstance(reply, Exception) else reply
    return replies


def _indexes() -> list[str]:
    if not is_cluster("ratelimit"):
        return [DIRTY_KEY]
    # One index per slot, but only a slot that holds a tenant's keys can list a buffer: the
    # flush reads as many sets as there are tenants (at most 16,384), not every slot. A tenant
    # deleted meanwhile has no API keys left to bill (its rows would be dropped anyway).
    return sorted({dirty_key(pk) for pk in Tenant.objects.values_list("pk", flat=True)})


def listed_buffers(client: redis.Redis) -> dict[str, list[str]]:
    """The dirty-buffer indexes that list something: index key -> its members, sorted."""
    indexes = _indexes()
    replies = _read_indexes(client, indexes)
    return {
        index: sorted(_text(m) for m in members)
        for index, members in zip(indexes, replies, strict=True)
        if members
    }


def _claim_live(client: redis.Redis, index: str, live: list[str]) -> list[str]:
    claimed: list[str] = []
    for start in range(0, len(live), CLAIM_CHUNK):
        keys = [index]
        for buffer_key in live[start : start + CLAIM_CHUNK]:
            keys += [buffer_key, f"{buffer_key}:batch:{uuid.uuid4().hex}"]
        claimed += [_text(k) for k in CLAIM.run_sync(client, keys, [])]
    return claimed


def claim_all(client: redis.Redis, kinds: tuple[str, ...] = KINDS) -> list[str]:
    """Batch keys to apply: leftovers of interrupted flushes, then every listed live buffer
    of these kinds claimed (renamed to a batch)."""
    batches: list[str] = []
    for index, members in listed_buffers(client).items():
        mine = [m for m in members if _kind_of(m) in kinds]
        batches += [m for m in mine if ":batch:" in m]
        batches += _claim_live(client, index, [m for m in mine if ":batch:" not in m])
    return batches


def claim_batches(client: redis.Redis, kind: str) -> list[str]:
    """claim_all() for one kind ("usage" or "throttle")."""
    return claim_all(client, (kind,))


def batch_id_of(batch_key: str) -> str:
    kind = "throttle" if ":throttle:batch:" in batch_key else "usage"
    return f"{kind}:{batch_key.rsplit(':', 1)[1]}"


def _minute(epoch_seconds: str) -> datetime:
    return datetime.fromtimestamp(int(epoch_seconds), tz=UTC)


def _tenants_of(api_key_pks: set[int]) -> dict[int, int]:
    return dict(ApiKey.objects.filter(pk__in=api_key_pks).values_list("pk", "tenant_id"))


# The usage buffer's field letters, in UsageMinute's column order (settle.lua writes r, p, c;
# count_error.lua writes e).
USAGE_LETTERS = "rpce"
# A request that decoded with an adapter is also counted in "<pk>|<minute>|<letter>|<adapter>"
# (settle.lua, count_usage.lua): AdapterUsageDay's columns.
ADAPTER_LETTERS = "rpc"
AdapterRows = dict[tuple[int, str, str], list[int]]  # (api key pk, minute, adapter) -> r, p, c


def _usage_rows(flat: Fields) -> tuple[dict[tuple[int, str], list[int]], AdapterRows]:
    rows: dict[tuple[int, str], list[int]] = {}
    adapters: AdapterRows = {}
    for name, value in flat.items():
        pk, minute, letter, *adapter = _text(name).split("|")
        if adapter:
            per = adapters.setdefault((int(pk), minute, adapter[0]), [0] * len(ADAPTER_LETTERS))
            per[ADAPTER_LETTERS.index(letter)] += int(value)
            continue
        row = rows.setdefault((int(pk), minute), [0] * len(USAGE_LETTERS))
        row[USAGE_LETTERS.index(letter)] += int(value)
    return rows, adapters


def _write_usage(flat: Fields, report: FlushReport) -> None:
    parsed, adapters = _usage_rows(flat)
    tenants = _tenants_of({pk for pk, _ in parsed} | {pk for pk, _, _ in adapters})
    rows = {}
    for (pk, minute), values in parsed.items():
        if pk not in tenants:
            report.dropped_rows += 1
            continue
        rows[(tenants[pk], pk, _minute(minute))] = values
        report.requests += values[0]
        report.prompt_tokens += values[1]
        report.completion_tokens += values[2]
        report.errors += values[3]
    usage_minutes_add(rows=rows)
    # In the batch's transaction with the minutes: exactly once along with them.
    adapter_usage_days_add(rows=_per_adapter_day(adapters, tenants, report))
    report.usage_rows += len(rows)
    report.usage_batches += 1


AdapterDays = dict[tuple[int, str, date], list[int]]  # (tenant id, adapter, UTC day) -> r, p, c


def _per_adapter_day(
    adapters: AdapterRows, tenants: dict[int, int], report: FlushReport
) -> AdapterDays:
    """The adapter rows summed per (tenant, adapter, UTC day); those of unknown keys dropped."""
    days: AdapterDays = {}
    for (pk, minute, adapter), values in adapters.items():
        if pk not in tenants:
            report.dropped_rows += 1
            continue
        day = days.setdefault((tenants[pk], adapter, _minute(minute).date()), [0, 0, 0])
        for i, value in enumerate(values):
            day[i] += value
        report.adapter_rows += 1
    return days


def _throttle_rows(flat: Fields) -> dict[tuple[int, str, str], _Refused]:
    rows: dict[tuple[int, str, str], _Refused] = {}
    for name, value in flat.items():
        pk, reason, minute, letter = _text(name).split("|")
        row = rows.setdefault((int(pk), reason, minute), {"n": 0, "a": []})
        if letter == "n":
            row["n"] += int(value)
        elif letter == "a":
            row["a"] = _text(value).split(",")
        elif letter == "f":
            row["f"] = _stamp(int(value))
        elif letter == "l":
            row["l"] = _stamp(int(value))
    return rows


def _refusals(tenant_id: int, pk: int, reason: str, minute: datetime, row: _Refused) -> Refusals:
    return Refusals(tenant_id, pk, reason, minute, row["n"], row["f"], row["l"], row["a"])


def _write_refusals(refusals: list[Refusals]) -> None:
    keep = settings.RATELIMIT_AUDIT_SAMPLE_ADDRESSES
    throttle_events_add(refusals=refusals, keep_addresses=keep)


def _write_throttles(flat: Fields, report: FlushReport) -> None:
    parsed = _throttle_rows(flat)
    tenants = _tenants_of({pk for pk, _, _ in parsed})
    refusals = []
    for (pk, reason, minute), row in sorted(parsed.items()):
        if pk not in tenants:
            report.dropped_rows += 1
            continue
        refusals.append(_refusals(tenants[pk], pk, reason, _minute(minute), row))
        report.throttle_rows += 1
        report.refusals += row["n"]
    _write_refusals(refusals)
    report.throttle_batches += 1


def write_batch(client: redis.Redis, batch_key: str, report: FlushReport) -> bool:
    """Step 2: apply one batch in one transaction; False if its id was already applied."""
    batch_id = batch_id_of(batch_key)
    flat = client.hgetall(batch_key)
    if not flat:  # deleted after its write by a flusher that died before unlisting it
        return False
    write = _write_usage if batch_id.startswith("usage:") else _write_throttles
    applied = usage_batch_apply(
        batch_id=batch_id, rows=len(flat), write=partial(write, flat, report)
    )
    if not applied:
        report.already_applied += 1
    return applied


def apply_batch(client: redis.Redis, batch_key: str, report: FlushReport) -> None:
    """Steps 2 and 3: write the batch to Postgres (once), then drop it from Redis."""
    write_batch(client, batch_key, report)
    pipe = client.pipeline(transaction=False)  # one slot, one round trip
    pipe.delete(batch_key)
    pipe.srem(_index_of(batch_key), batch_key)
    pipe.execute()


def _index_of(buffer_key: str) -> str:
    tenant_id = int(buffer_key.split("{t:", 1)[1].split("}", 1)[0])
    return dirty_key(tenant_id)


def _flush_local_usage(report: FlushReport) -> None:
    taken, per_adapter = backlog.take_usage(), backlog.take_adapter_usage()
    if not taken and not per_adapter:
        return
    try:
        tenants = _tenants_of({pk for _, pk, _ in taken} | {pk for _, pk, _, _ in per_adapter})
        rows = {(t, pk, _minute(str(m))): v for (t, pk, m), v in taken.items() if pk in tenants}
        adapters = {(pk, str(m), name): v for (_, pk, m, name), v in per_adapter.items()}
        # One transaction: the minutes and the adapters' days are written, or given back, together.
        with transaction.atomic():
            usage_minutes_add(rows=rows)
            adapter_usage_days_add(rows=_per_adapter_day(adapters, tenants, report))
    except Exception:
        backlog.restore_usage(taken)  # written next time instead
        backlog.restore_adapter_usage(per_adapter)
        raise
    report.local_rows += len(rows)
    report.dropped_rows += len(taken) - len(rows)


def _flush_local_throttles(report: FlushReport) -> None:
    taken = backlog.take_throttles()
    if not taken:
        return
    try:
        known = _tenants_of({pk for _, pk, _, _ in taken})
        refusals = []
        for (tenant_id, pk, reason, minute), row in sorted(taken.items()):
            if pk not in known:  # a key deleted since: nothing to attach the row to
                report.dropped_rows += 1
                continue
            stamped: _Refused = {**row, "f": _stamp(row["f"]), "l": _stamp(row["l"])}
            minute_at = _minute(str(minute))
            refusals.append(_refusals(tenant_id, pk, reason, minute_at, stamped))
            report.refusals += row["n"]
            report.local_rows += 1
        _write_refusals(refusals)
    except Exception:
        backlog.restore_throttles(taken)  # written next time instead
        raise


def _stamp(microseconds: int) -> datetime:
    return datetime.fromtimestamp(microseconds / 1_000_000, tz=UTC)


def _prune_markers() -> None:
    # A batch key lives at most RATELIMIT_BUFFER_TTL_SECONDS; its marker is useless after.
    cutoff = timezone.now() - timedelta(seconds=2 * settings.RATELIMIT_BUFFER_TTL_SECONDS)
    usage_batches_prune(applied_before=cutoff)


def flush(client: redis.Redis | None = None) -> FlushReport:
    """Move every usage and throttle buffer to Postgres; retry queued settles first."""
    client = client or get_sync_redis("ratelimit")
    report = FlushReport()
    _flush_local_usage(report)  # Postgres only: done even while Redis is down
    _flush_local_throttles(report)
    report.settles_retried = backlog.retry_settles(client)
    for batch_key in claim_all(client):
        apply_batch(client, batch_key, report)
    _prune_markers()
    return report


_stop = threading.Event()
_thread: threading.Thread | None = None
PROMPT_FLUSH_GAP = 0.25


def _loop(interval: float) -> None:
    try:
        # A worker's first requests then find the scripts loaded (no NOSCRIPT round trip).
        preload_sync(get_sync_redis("ratelimit"))
    except Exception as exc:  # Redis down at start: EVALSHA reloads on NOSCRIPT anyway
        logger.warning("ratelimit: cannot preload scripts (%s)", type(exc).__name__)
    while True:
        # Every `interval`, or soon after billed work was left in the process (backlog.pending),
        # but never more often than every PROMPT_FLUSH_GAP seconds.
        backlog.pending.wait(interval)
        if _stop.wait(min(interval, PROMPT_FLUSH_GAP)):
            return
        backlog.pending.clear()
        run_once()


def run_once() -> None:
    """One run of the flusher thread: counted (ok or failed) and logged, never raised."""
    try:
        report = flush()
    except Exception as exc:  # Redis or Postgres down: try again next interval
        metrics.flushes.labels("failed").inc()
        logger.warning("ratelimit flush failed (%s)", type(exc).__name__)
    else:
        metrics.flushes.labels("ok").inc()
        if report.usage_batches or report.throttle_batches or report.local_rows:
            logger.info("ratelimit flush: %s", report.summary())
    finally:
        # This thread's own database connection goes back after every run.
        close_old_connections()
        connection.close()


def start_flusher() -> threading.Thread | None:
    """Start the daemon thread that flushes every RATELIMIT_FLUSH_SECONDS (0: never)."""
    global _thread
    interval = settings.RATELIMIT_FLUSH_SECONDS
    if interval <= 0:
        return None
    if _thread is None or not _thread.is_alive():
        for result in ("ok", "failed"):
            metrics.flushes.labels(result)  # both series exist (at 0) before the first run
        _stop.clear()
        _thread = threading.Thread(
            target=_loop, args=(interval,), name="ratelimit-flusher", daemon=True
        )
        _thread.start()
    return _thread


def stop_flusher(timeout: float = 5.0) -> None:
    """Stop the thread after its current run (tests, shutdown)."""
    global _thread
    _stop.set()
    backlog.pending.set()  # wakes the loop out of its wait
    if _thread is not None:
        _thread.join(timeout)
    _thread = None
