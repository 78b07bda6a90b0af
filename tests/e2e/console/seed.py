"""Past traffic: usage and 429 rows written through the models, as the rate limiter's flush
would have written them over the last hours.

The browser journey makes its own traffic through the API for the current minutes; these rows
give the charts a history (hours of real traffic would not fit in a test) and the other
tenants something to rank against. They are real Postgres rows, read like any others."""

import math
from datetime import timedelta

from django.utils import timezone

from tenants.models import ApiKey, ThrottleEvent, UsageMinute
from tenants.services import usage_minutes_add

REASONS = ("key-rpm", "tenant-tpm")


def _minute(minutes_ago: int):
    return timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=minutes_ago)


def seed_usage(key: ApiKey, *, minutes: int = 600, scale: int = 40) -> dict[str, int]:
    """A smooth day-curve of accepted requests (and a few errors, in bursts) over the last
    `minutes`, starting a minute ago; returns the totals."""
    rows = []
    for ago in range(1, minutes + 1):
        requests = int(scale * (1.2 + math.sin(ago / 17)) * (1 + (ago % 7) / 10))
        rows.append(
            UsageMinute(
                tenant=key.tenant,
                api_key=key,
                minute=_minute(ago),
                requests=requests,
                prompt_tokens=requests * 42,
                completion_tokens=requests * 18,
                errors=requests // 8 if ago % 47 < 3 else 0,
            )
        )
    # Through the flusher's write, so the hourly and daily rollups the console reads get them.
    usage_minutes_add(
        rows={
            (key.tenant_id, key.pk, r.minute): [
                r.requests,
                r.prompt_tokens,
                r.completion_tokens,
                r.errors,
            ]
            for r in rows
        }
    )
    requests = sum(r.requests for r in rows)
    errors = sum(r.errors for r in rows)
    return {"requests": requests, "tokens": requests * 60, "errors": errors}


def seed_throttles(key: ApiKey, *, minutes: int = 600, every: int = 9) -> dict[str, int]:
    """Bursts of 429s every `every` minutes, alternating reasons; returns the count per reason."""
    totals = dict.fromkeys(REASONS, 0)
    rows = []
    for ago in range(2, minutes + 1, every):
        reason = REASONS[(ago // every) % 2]
        count = 3 + (ago % 11)
        minute = _minute(ago)
        rows.append(
            ThrottleEvent(
                tenant=key.tenant,
                api_key=key,
                reason=reason,
                minute=minute,
                count=count,
                first_seen=minute + timedelta(seconds=4),
                last_seen=minute + timedelta(seconds=51),
                sample_addresses=["203.0.113.7", "198.51.100.23"],
            )
        )
        totals[reason] += count
    ThrottleEvent.objects.bulk_create(rows)
    return totals
