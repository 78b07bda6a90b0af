"""Reads that span models."""

from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import Sum

from tenants.models import Tenant, UsageMinute


def _period(tenant_id: int, start: datetime) -> dict:
    totals = UsageMinute.objects.filter(tenant_id=tenant_id, minute__gte=start).aggregate(
        requests=Sum("requests"),
        prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"),
    )
    counts = {name: int(value or 0) for name, value in totals.items()}
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
    slug = Tenant.objects.values_list("slug", flat=True).get(pk=tenant_id)
    return {
        "tenant": slug,
        "today": _period(tenant_id, day),
        "this_month": _period(tenant_id, month),
        "as_of": now.isoformat(),
        "flush_interval_seconds": settings.RATELIMIT_FLUSH_SECONDS,
    }
