"""The hourly and daily rollups always agree with the per-minute rows they sum, and every read
over a span gives what summing the raw minutes would."""

import importlib
import random
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Sum
from hypothesis import given, settings
from hypothesis import strategies as st

from tenants.models import UsageDay, UsageHour, UsageMinute
from tenants.services import (
    api_key_issue,
    tenant_create,
    usage_batch_apply,
    usage_minutes_add,
    usage_rollups_rebuild,
)
from tenants.usage import COLUMNS, pieces, usage_series, usage_sums

pytestmark = pytest.mark.django_db

ORIGIN = datetime(2026, 10, 30, 21, 17, tzinfo=UTC)  # crosses a month end and day ends
SPAN_MINUTES = 4 * 24 * 60


def _keys():
    acme = tenant_create(slug="acme", actor="t")
    globex = tenant_create(slug="globex", actor="t")
    return [
        api_key_issue(tenant=t, name=n, actor="t").api_key
        for t, n in ((acme, "a"), (acme, "b"), (globex, "c"))
    ]


def _random_usage(keys, rng: random.Random, batches: int = 30) -> None:
    """Batches of random minutes, written as the flusher writes them (some minutes twice)."""
    for _ in range(batches):
        rows = {}
        for _ in range(rng.randint(1, 40)):
            key = rng.choice(keys)
            minute = ORIGIN + timedelta(minutes=rng.randrange(SPAN_MINUTES))
            rows[(key.tenant_id, key.pk, minute)] = [rng.randint(0, 50) for _ in COLUMNS]
        usage_minutes_add(rows=rows)


def _raw(start: datetime, end: datetime, **where) -> dict[str, int]:
    rows = UsageMinute.objects.filter(minute__gte=start, minute__lt=end, **where)
    sums = rows.aggregate(**{name: Sum(name) for name in COLUMNS})
    return {name: int(value or 0) for name, value in sums.items()}


def _rolled(start: datetime, end: datetime, **where) -> dict[str, int]:
    sums = usage_sums(start, end, **where).get((), dict.fromkeys(COLUMNS, 0))
    return {name: sums[name] for name in COLUMNS}


def test_rollup_sums_equal_raw_sums_over_random_windows() -> None:
    keys = _keys()
    _random_usage(keys, random.Random(17))
    offsets = st.integers(min_value=-120, max_value=SPAN_MINUTES + 120)
    seconds = st.sampled_from([0, 0, 0, 30])

    @settings(max_examples=150, deadline=None, database=None)
    @given(a=offsets, b=offsets, s=seconds, tenant=st.sampled_from([None, 0, 1]))
    def check(a: int, b: int, s: int, tenant: int | None) -> None:
        start = ORIGIN + timedelta(minutes=min(a, b), seconds=s)
        end = ORIGIN + timedelta(minutes=max(a, b))
        where = {} if tenant is None else {"tenant_id": keys[tenant * 2].tenant_id}
        assert _rolled(start, end, **where) == _raw(start, end, **where)

    check()


def test_the_pieces_tile_the_span_with_the_coarsest_rows() -> None:
    start = datetime(2026, 11, 1, 22, 30, tzinfo=UTC)
    end = datetime(2026, 11, 4, 1, 15, tzinfo=UTC)
    cut = [(p.grain.field, p.start, p.end) for p in pieces(start, end)]
    assert cut == [
        ("minute", start, datetime(2026, 11, 1, 23, tzinfo=UTC)),
        ("hour", datetime(2026, 11, 1, 23, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)),
        ("day", datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC)),
        ("hour", datetime(2026, 11, 4, tzinfo=UTC), datetime(2026, 11, 4, 1, tzinfo=UTC)),
        ("minute", datetime(2026, 11, 4, 1, tzinfo=UTC), end),
    ]


def test_series_per_hour_and_per_day_equal_raw_buckets() -> None:
    keys = _keys()
    _random_usage(keys, random.Random(5))
    start, end = ORIGIN - timedelta(minutes=17), ORIGIN + timedelta(days=3, minutes=41)
    for step in (timedelta(hours=1), timedelta(days=1)):
        series = usage_series(start, end, step, by=("api_key_id",))
        for (bucket, key_pk), sums in series.items():
            lo, hi = max(bucket, start), min(bucket + step, end)
            assert {c: sums[c] for c in COLUMNS} == _raw(lo, hi, api_key_id=key_pk)
        total = sum(s["requests"] for s in series.values())
        assert total == _raw(start, end)["requests"]


def test_a_batch_applied_twice_is_rolled_up_once() -> None:
    (key, *_) = _keys()
    minute = datetime(2026, 11, 3, 10, 5, tzinfo=UTC)
    rows = {(key.tenant_id, key.pk, minute): [3, 30, 20, 1]}
    for _ in range(2):
        usage_batch_apply(batch_id="usage:x", rows=1, write=lambda: usage_minutes_add(rows=rows))
    hour = UsageHour.objects.get(api_key=key)
    day = UsageDay.objects.get(api_key=key)
    assert (hour.hour, hour.requests, hour.prompt_tokens, hour.errors) == (
        minute.replace(minute=0),
        3,
        30,
        1,
    )
    assert (day.day, day.requests, day.completion_tokens) == (
        minute.replace(hour=0, minute=0),
        3,
        20,
    )


def test_a_failed_batch_leaves_no_rollup() -> None:
    (key, *_) = _keys()
    rows = {(key.tenant_id, key.pk, ORIGIN): [1, 1, 1, 0]}

    def write() -> None:
        usage_minutes_add(rows=rows)
        raise RuntimeError("flusher died mid-batch")

    with pytest.raises(RuntimeError):
        usage_batch_apply(batch_id="usage:y", rows=1, write=write)
    assert not UsageHour.objects.exists() and not UsageDay.objects.exists()


def test_the_rebuild_recomputes_rollups_of_rows_written_around_them(capsys) -> None:
    keys = _keys()
    _random_usage(keys, random.Random(3), batches=10)
    expected = sorted(UsageHour.objects.values_list("api_key_id", "hour", "requests", "errors"))
    # Rows loaded in bulk (a restore) have no rollups until the rebuild.
    UsageMinute.objects.create(
        tenant_id=keys[0].tenant_id, api_key=keys[0], minute=ORIGIN - timedelta(days=2), requests=9
    )
    UsageHour.objects.all().delete()
    call_command("rollup_usage")
    assert "usage rollups rebuilt" in capsys.readouterr().out
    rebuilt = sorted(UsageHour.objects.values_list("api_key_id", "hour", "requests", "errors"))
    extra = (keys[0].pk, (ORIGIN - timedelta(days=2)).replace(minute=0), 9, 0)
    assert rebuilt == sorted([*expected, extra])
    assert usage_rollups_rebuild()["day"] == UsageDay.objects.count()
    assert _rolled(ORIGIN - timedelta(days=3), ORIGIN + timedelta(days=5)) == _raw(
        ORIGIN - timedelta(days=3), ORIGIN + timedelta(days=5)
    )


def test_the_migrations_backfill_equals_the_incremental_rollups() -> None:
    keys = _keys()
    _random_usage(keys, random.Random(11), batches=8)
    before = sorted(UsageDay.objects.values_list("api_key_id", "day", "requests", "errors"))
    hours = sorted(UsageHour.objects.values_list("api_key_id", "hour", "prompt_tokens"))
    UsageHour.objects.all().delete()
    UsageDay.objects.all().delete()
    migration = importlib.import_module("tenants.migrations.0007_usage_rollups")
    with connection.cursor() as cursor:
        for sql in migration.BACKFILL:
            cursor.execute(sql)
    assert sorted(UsageDay.objects.values_list("api_key_id", "day", "requests", "errors")) == before
    assert sorted(UsageHour.objects.values_list("api_key_id", "hour", "prompt_tokens")) == hours
