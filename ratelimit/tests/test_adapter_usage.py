"""Usage per adapter: a settled request that decoded with an adapter is counted for that adapter
too, in the same Redis buffer and the same SETTLE as its key's usage, and reaches
AdapterUsageDay (tenant, adapter, UTC day) with the flush, exactly once; a request without an
adapter adds nothing there."""

import asyncio
from datetime import UTC, datetime

import pytest

from core.redis import get_sync_redis
from ratelimit import backlog, flush, limiter
from ratelimit.limiter import Admission
from ratelimit.tests.helpers import make_record
from tenants.adapter_selectors import AdapterUsageRow, adapter_usage
from tenants.models import AdapterUsageDay, UsageMinute

pytestmark = pytest.mark.django_db


def _record(issued):
    key = issued.api_key
    return make_record(tenant_id=key.tenant_id, api_key_pk=key.pk, key_id=key.key_id)


def _serve(record, adapters: list[str], prompt: int = 7, completion: int = 5) -> None:
    async def run() -> None:
        for adapter in adapters:
            admission = await limiter.admit(record, tokens=prompt + completion)
            await limiter.settle(
                admission, prompt_tokens=prompt, completion_tokens=completion, adapter=adapter
            )

    asyncio.run(run())


def _today() -> list[AdapterUsageRow]:
    today = datetime.now(UTC).date()
    return adapter_usage(start=today, end=today)


def _row(adapter: str, requests: int, prompt: int, completion: int) -> AdapterUsageRow:
    return AdapterUsageRow(datetime.now(UTC).date(), "acme", adapter, requests, prompt, completion)


def test_each_adapter_gets_its_requests_and_tokens_and_the_key_all_of_them(issued) -> None:
    _serve(_record(issued), ["support", "support", "legal", ""])
    report = flush.flush()
    assert _today() == [_row("legal", 1, 7, 5), _row("support", 2, 14, 10)]
    assert report.requests == 4 and report.adapter_rows == 2
    assert sum(UsageMinute.objects.values_list("requests", flat=True)) == 4


def test_requests_without_an_adapter_add_no_adapter_row(issued) -> None:
    _serve(_record(issued), ["", ""])
    flush.flush()
    assert not AdapterUsageDay.objects.exists()
    assert sum(UsageMinute.objects.values_list("requests", flat=True)) == 2


def test_a_second_settle_and_a_second_flush_count_nothing_more(issued) -> None:
    record = _record(issued)

    async def settle_twice() -> None:
        admission = await limiter.admit(record, tokens=12)
        for _ in range(2):
            await limiter.settle(admission, prompt_tokens=7, completion_tokens=5, adapter="a")

    asyncio.run(settle_twice())
    flush.flush()
    flush.flush()
    assert _today() == [_row("a", 1, 7, 5)]


def test_a_batch_applied_twice_is_written_once(issued) -> None:
    # A flusher that died after its Postgres step leaves the batch listed; the next one applies
    # it again, and the UsageBatch marker makes that a no-op for the adapter rows too.
    _serve(_record(issued), ["a"])
    client = get_sync_redis("ratelimit")
    [batch] = flush.claim_all(client)
    report = flush.FlushReport()
    assert flush.write_batch(client, batch, report) is True
    assert flush.write_batch(client, batch, report) is False
    flush.apply_batch(client, batch, report)
    assert _today() == [_row("a", 1, 7, 5)]


def test_later_flushes_add_to_the_days_row(issued) -> None:
    record = _record(issued)
    _serve(record, ["a"])
    flush.flush()
    _serve(record, ["a", "a"], prompt=1, completion=2)
    flush.flush()
    assert _today() == [_row("a", 3, 9, 9)]


def test_a_request_admitted_without_redis_is_counted_for_its_adapter(issued) -> None:
    # Admitted by the fallback (failure mode open), settled while Redis answers: COUNT_USAGE.
    key = issued.api_key
    admission = Admission(
        lease_id="open-1",
        reserved_tokens=12,
        headers={},
        failed_open=True,
        source="open",
        tenant_id=key.tenant_id,
        api_key_pk=key.pk,
    )
    asyncio.run(limiter.settle(admission, prompt_tokens=3, completion_tokens=4, adapter="a"))
    # And one whose usage Redis could not take either: the process's backlog.
    backlog.count_usage(key.tenant_id, key.pk, 5, 6, "a")
    backlog.count_usage(key.tenant_id, key.pk, 1, 1, "")
    flush.flush()
    assert _today() == [_row("a", 2, 8, 10)]
    assert sum(UsageMinute.objects.values_list("requests", flat=True)) == 3
