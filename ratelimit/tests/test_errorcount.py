"""Error answers are counted per key and minute in the usage buffer and moved to
UsageMinute.errors by the flusher, exactly once, also when they land between a batch's RENAME
and its write, and also while Redis cannot answer."""

import asyncio
import socket

import pytest
from django.db.models import Sum
from prometheus_client import REGISTRY

from core.redis import get_sync_redis, reset_clients
from ratelimit import backlog, errorcount, flush, limiter
from ratelimit.limits import usage_key
from ratelimit.tests.helpers import make_record
from tenants.models import UsageMinute
from tenants.services import api_key_issue

pytestmark = pytest.mark.django_db(transaction=True)


def _record(api_key):
    return make_record(tenant_id=api_key.tenant_id, api_key_pk=api_key.pk, key_id=api_key.key_id)


def _count(record, times: int = 1) -> None:
    async def run() -> None:
        for _ in range(times):
            await errorcount.count_error(record)

    asyncio.run(run())


def _errors_by_key() -> dict[int, int]:
    rows = UsageMinute.objects.values("api_key_id").annotate(n=Sum("errors"))
    return {row["api_key_id"]: row["n"] for row in rows}


@pytest.mark.parametrize(
    ("status", "counted"),
    [(400, True), (403, True), (404, True), (413, True), (500, True), (503, True)]
    + [(200, False), (401, False), (429, False)],
)
def test_every_error_but_401_and_429_counts(status: int, counted: bool) -> None:
    assert errorcount.counts_as_error(status) is counted


def test_errors_move_with_the_usage_of_their_key_once(issued, tenant) -> None:
    first, second = (
        _record(issued.api_key),
        _record(api_key_issue(tenant=tenant, name="second", actor="test").api_key),
    )

    async def serve_one() -> None:
        admission = await limiter.admit(first, tokens=3)
        await limiter.settle(admission, prompt_tokens=2, completion_tokens=1)

    asyncio.run(serve_one())
    _count(first, 3)
    _count(second)
    buffer = usage_key(tenant.pk)
    assert get_sync_redis().pttl(buffer) > 0  # the buffer never outlives its TTL
    report = flush.flush()
    assert (report.errors, report.requests) == (4, 1)
    assert _errors_by_key() == {first.api_key_pk: 3, second.api_key_pk: 1}
    row = UsageMinute.objects.get(api_key_id=first.api_key_pk)
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (1, 2, 1)
    assert flush.flush().errors == 0
    assert _errors_by_key() == {first.api_key_pk: 3, second.api_key_pk: 1}
    assert not get_sync_redis().exists(buffer)


def test_an_error_counted_while_a_batch_is_written_goes_to_the_next_batch(issued) -> None:
    record = _record(issued.api_key)
    _count(record)
    client = get_sync_redis("ratelimit")
    claimed = flush.claim_batches(client, "usage")  # renamed, not written yet
    _count(record)  # lands in a new live buffer
    report = flush.FlushReport()
    for batch in claimed:
        flush.apply_batch(client, batch, report)
    assert report.errors == 1
    assert flush.flush().errors == 1
    assert _errors_by_key() == {record.api_key_pk: 2}


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_errors_that_redis_cannot_take_wait_in_the_process(issued, settings) -> None:
    settings.RATELIMIT_REDIS_URL = f"redis://127.0.0.1:{_closed_port()}/0"
    settings.RATELIMIT_BREAKER_ERRORS = 10  # every call below tries Redis
    reset_clients()
    limiter.reset_state()
    before = REGISTRY.get_sample_value(
        "ratelimit_backend_errors_total", {"operation": "count_error"}
    )
    record = _record(issued.api_key)
    _count(record, 2)
    errorcount.count_error_soon(record)  # no event loop here: counted on the spot
    assert list(backlog.take_usage().values()) == [[0, 0, 0, 3]]
    after = REGISTRY.get_sample_value(
        "ratelimit_backend_errors_total", {"operation": "count_error"}
    )
    assert before is not None and after is not None  # the labels exist from the start
    assert after - before == 3
    backlog.count_error(record.tenant_id, record.api_key_pk)
    report = flush.flush(get_sync_redis())  # the flusher's own Redis is the default one
    assert report.local_rows == 1 and _errors_by_key() == {record.api_key_pk: 1}


def test_count_error_soon_runs_as_a_task_of_the_running_loop(issued) -> None:
    record = _record(issued.api_key)

    async def from_a_handler() -> None:
        errorcount.count_error_soon(record)
        assert len(errorcount._running) == 1  # held until done, not awaited by the caller
        await asyncio.gather(*errorcount._running)

    asyncio.run(from_a_handler())
    assert flush.flush().errors == 1


def test_a_writer_that_predates_the_column_still_inserts_usage(issued) -> None:
    from django.db import connection

    # The flush SQL of a replica not yet upgraded names no errors column: the database default
    # fills it in, so a rolling upgrade (migrate, then replace replicas) loses no usage.
    key = issued.api_key
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO tenants_usageminute (tenant_id, api_key_id, minute, requests, "
            "prompt_tokens, completion_tokens) VALUES (%s, %s, now(), 1, 2, 3)",
            [key.tenant_id, key.pk],
        )
    assert UsageMinute.objects.get().errors == 0
