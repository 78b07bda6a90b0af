"""Reads that span models."""

from datetime import UTC, datetime, timedelta

from asgiref.sync import sync_to_async
from django.conf import settings

from tenants.models import Tenant
from tenants.usage import usage_totals


def _period(tenant_id: int, start: datetime, end: datetime) -> dict:
    # From the daily and hourly rollups: a month of a busy tenant is ~30 rows per key.
    totals = usage_totals(start, end, tenant_id=tenant_id)
    counts = {name: totals[name] for name in ("requests", "prompt_tokens", "completion_tokens")}
    counts["total_tokens"] = counts["prompt_tokens"] + counts["completion_tokens"]
    return {"start": start.isoformat(), **counts}


@sync_to_async
def tenant_usage_summary(tenant_id: int) -> dict:
    """The tenant's usage today and this month (UTC calendar), as recorded in Postgres.

    Usage reaches Postgres from Redis in batches (RATELIMIT_FLUSH_SECONDS), so these figures
    lag the live counters by at most one flush interval; `as_of` says when they were read.
    """
    now = datetime.now(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    # The current minute's row included (its minute is at most now).
    end = now + timedelta(minutes=1)
    slug = Tenant.objects.values_list("slug", flat=True).get(pk=tenant_id)
    return {
        "tenant": slug,
        "today": _period(tenant_id, day, end),
        "this_month": _period(tenant_id, month, end),
        "as_of": now.isoformat(),
        "flush_interval_seconds": settings.RATELIMIT_FLUSH_SECONDS,
    }
