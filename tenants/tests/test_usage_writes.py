"""The writes of usage and of the 429 audit (tenants/services.py, called by the rate limiter's
flusher): a batch is applied once whatever retries it, and every upsert adds to what is there."""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from tenants.models import ThrottleEvent, UsageBatch, UsageMinute
from tenants.services import (
    Refusals,
    throttle_events_add,
    usage_batch_apply,
    usage_batches_prune,
    usage_minutes_add,
)

pytestmark = pytest.mark.django_db

MINUTE = datetime(2030, 1, 2, 3, 4, tzinfo=UTC)


def _usage_row() -> tuple[int, int, int, int]:
    row = UsageMinute.objects.get()
    return row.requests, row.prompt_tokens, row.completion_tokens, row.errors


def test_a_batch_applied_twice_is_written_once(issued) -> None:
    key = issued.api_key
    rows = {(key.tenant_id, key.pk, MINUTE): [2, 10, 20, 1]}

    def write() -> None:
        usage_minutes_add(rows=rows)

    assert usage_batch_apply(batch_id="usage:one", rows=1, write=write) is True
    assert usage_batch_apply(batch_id="usage:one", rows=1, write=write) is False
    assert _usage_row() == (2, 10, 20, 1)
    assert UsageBatch.objects.get().rows == 1


def test_a_batch_whose_write_fails_is_not_marked_applied(issued) -> None:
    def fail() -> None:
        raise RuntimeError("Postgres went away")

    with pytest.raises(RuntimeError):
        usage_batch_apply(batch_id="usage:two", rows=1, write=fail)
    assert not UsageBatch.objects.exists()
    assert usage_batch_apply(batch_id="usage:two", rows=1, write=lambda: None) is True


def test_usage_adds_to_the_row_of_its_key_and_minute(issued) -> None:
    key = issued.api_key
    usage_minutes_add(rows={(key.tenant_id, key.pk, MINUTE): [1, 5, 7, 0]})
    usage_minutes_add(rows={(key.tenant_id, key.pk, MINUTE): [2, 1, 1, 3]})
    assert _usage_row() == (3, 6, 8, 3)


def _refusals(issued, count: int, first: int, last: int, addresses: list[str]) -> Refusals:
    key = issued.api_key
    return Refusals(
        tenant_id=key.tenant_id,
        api_key_id=key.pk,
        reason="key-rpm",
        minute=MINUTE,
        count=count,
        first_seen=MINUTE + timedelta(seconds=first),
        last_seen=MINUTE + timedelta(seconds=last),
        addresses=addresses,
    )


def test_refusals_add_up_widen_their_times_and_keep_a_few_addresses(issued) -> None:
    throttle_events_add(refusals=[_refusals(issued, 2, 10, 20, ["a"])], keep_addresses=2)
    later = _refusals(issued, 3, 5, 15, ["a", "b", "c"])
    throttle_events_add(refusals=[later], keep_addresses=2)
    event = ThrottleEvent.objects.get()
    assert event.count == 5
    assert (event.first_seen, event.last_seen) == (
        MINUTE + timedelta(seconds=5),
        MINUTE + timedelta(seconds=20),
    )
    assert event.sample_addresses == ["a", "b"]


def test_only_markers_older_than_the_cutoff_are_pruned() -> None:
    now = timezone.now()
    UsageBatch.objects.create(batch_id="usage:old", applied_at=now - timedelta(hours=2))
    UsageBatch.objects.create(batch_id="usage:new", applied_at=now)
    assert usage_batches_prune(applied_before=now - timedelta(hours=1)) == 1
    assert list(UsageBatch.objects.values_list("batch_id", flat=True)) == ["usage:new"]
