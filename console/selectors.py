"""Reads for the console pages. Every sum and count happens in the database (GROUP BY over the
usage and audit rows); Python only places the aggregated buckets on a time grid."""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.db.models import (
    BigIntegerField,
    Count,
    F,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce, TruncHour, TruncMinute
from django.utils import timezone

from tenants.models import AdminAction, ApiKey, Tenant, ThrottleEvent, UsageMinute

# Window choices for the charts: how far back, and the bucket each point sums.
WINDOWS: dict[str, tuple[timedelta, timedelta]] = {
    "1h": (timedelta(hours=1), timedelta(minutes=1)),
    "6h": (timedelta(hours=6), timedelta(minutes=1)),
    "24h": (timedelta(hours=24), timedelta(minutes=1)),
    "7d": (timedelta(days=7), timedelta(hours=1)),
}
DEFAULT_WINDOW = "24h"


@dataclass(frozen=True)
class Window:
    """A chart window: [start, end) in UTC, cut into buckets of `step`."""

    name: str
    start: datetime
    end: datetime
    step: timedelta

    @property
    def buckets(self) -> int:
        return int((self.end - self.start) / self.step)

    @property
    def per_minute(self) -> bool:
        return self.step == timedelta(minutes=1)


def window(name: str | None, *, now: datetime | None = None) -> Window:
    """The named window (unknown names fall back to 24 h), ending after the current bucket."""
    name = name if name in WINDOWS else DEFAULT_WINDOW
    span, step = WINDOWS[name]
    now = (now or timezone.now()).astimezone(UTC)
    # Align to the bucket so each point covers whole minutes (or hours) of rows.
    floor = datetime.fromtimestamp(
        now.timestamp() // step.total_seconds() * step.total_seconds(), tz=UTC
    )
    end = floor + step
    return Window(name=name, start=end - span, end=end, step=step)


def _trunc(win: Window, field: str = "minute") -> TruncMinute | TruncHour:
    cls = TruncMinute if win.per_minute else TruncHour
    return cls(field, tzinfo=UTC)


def _tokens() -> F:
    return F("prompt_tokens") + F("completion_tokens")


def _usage(win: Window) -> QuerySet[UsageMinute]:
    return UsageMinute.objects.filter(minute__gte=win.start, minute__lt=win.end)


def _throttles(win: Window) -> QuerySet[ThrottleEvent]:
    return ThrottleEvent.objects.filter(minute__gte=win.start, minute__lt=win.end)


def node_totals(win: Window) -> dict[str, int]:
    """Requests, tokens and 429s of the whole node inside the window."""
    usage = _usage(win).aggregate(
        requests=Coalesce(Sum("requests"), 0),
        prompt_tokens=Coalesce(Sum("prompt_tokens"), 0),
        completion_tokens=Coalesce(Sum("completion_tokens"), 0),
    )
    throttled = _throttles(win).aggregate(n=Coalesce(Sum("count"), 0))["n"]
    counts = {
        "tenants": Tenant.objects.count(),
        "active_keys": ApiKey.objects.active().count(),
    }
    tokens = usage["prompt_tokens"] + usage["completion_tokens"]
    return {**usage, **counts, "tokens": tokens, "throttled": throttled}


def busiest_tenants(win: Window, limit: int = 5) -> list[dict]:
    """Tenants with the most accepted requests in the window."""
    rows = (
        _usage(win)
        .values("tenant__slug", "tenant__name")
        .annotate(requests=Sum("requests"), tokens=Sum(_tokens()))
        .order_by("-requests", "tenant__slug")
    )
    return list(rows[:limit])


def most_throttled_tenants(win: Window, limit: int = 5) -> list[dict]:
    """Tenants with the most 429s in the window, and how many of their keys were refused."""
    rows = (
        _throttles(win)
        .values("tenant__slug", "tenant__name")
        .annotate(throttled=Sum("count"), keys=Count("api_key", distinct=True))
        .order_by("-throttled", "tenant__slug")
    )
    return list(rows[:limit])


def usage_buckets(win: Window, *, tenant: Tenant | None = None) -> list[dict]:
    """Per-bucket sums of requests and tokens (only buckets that have rows)."""
    rows = _usage(win)
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    return list(
        rows.annotate(bucket=_trunc(win))
        .values("bucket")
        .annotate(requests=Sum("requests"), tokens=Sum(_tokens()))
        .order_by("bucket")
    )


def throttle_buckets(win: Window, *, tenant: Tenant | None = None) -> list[dict]:
    """Per-bucket sums of 429s (only buckets that have rows)."""
    rows = _throttles(win)
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    return list(
        rows.annotate(bucket=_trunc(win))
        .values("bucket")
        .annotate(throttled=Sum("count"))
        .order_by("bucket")
    )


def key_buckets(win: Window, tenant: Tenant) -> tuple[list[dict], list[dict]]:
    """Per-key, per-bucket requests and 429s of one tenant's keys."""
    usage = (
        _usage(win)
        .filter(tenant=tenant)
        .annotate(bucket=_trunc(win))
        .values("api_key_id", "bucket")
        .annotate(requests=Sum("requests"))
        .order_by("api_key_id", "bucket")
    )
    throttled = (
        _throttles(win)
        .filter(tenant=tenant)
        .annotate(bucket=_trunc(win))
        .values("api_key_id", "bucket")
        .annotate(throttled=Sum("count"))
        .order_by("api_key_id", "bucket")
    )
    return list(usage), list(throttled)


def _sum_since(model: type, value: object, since: datetime, outer: str) -> Coalesce:
    # A correlated subquery per column: joining usage and throttles in one query would
    # multiply their rows and inflate both sums.
    inner = (
        model.objects.filter(**{outer: OuterRef("pk")}, minute__gte=since)
        .values(outer)
        .annotate(total=Sum(value))
        .values("total")[:1]
    )
    return Coalesce(Subquery(inner, output_field=BigIntegerField()), Value(0))


def tenants_with_usage(since: datetime) -> QuerySet[Tenant]:
    """All tenants with their keys, requests, tokens and 429s since `since`."""
    active = Q(keys__revoked_at__isnull=True) & (
        Q(keys__expires_at__isnull=True) | Q(keys__expires_at__gt=timezone.now())
    )
    return Tenant.objects.annotate(
        active_keys=Count("keys", filter=active, distinct=True),
        requests=_sum_since(UsageMinute, "requests", since, "tenant"),
        tokens=_sum_since(UsageMinute, _tokens(), since, "tenant"),
        throttled=_sum_since(ThrottleEvent, "count", since, "tenant"),
    ).order_by("slug")


def tenant_keys(tenant: Tenant, since: datetime) -> QuerySet[ApiKey]:
    """A tenant's keys, newest first, with requests, tokens and 429s since `since`."""
    return tenant.keys.annotate(
        requests=_sum_since(UsageMinute, "requests", since, "api_key"),
        tokens=_sum_since(UsageMinute, _tokens(), since, "api_key"),
        throttled=_sum_since(ThrottleEvent, "count", since, "api_key"),
    ).order_by("-created_at", "-id")


@dataclass(frozen=True)
class ThrottleFilter:
    """The 429 audit filters; None means 'any'. `until` is inclusive (a whole UTC day)."""

    key_id: str | None = None
    reason: str | None = None
    since: date | None = None
    until: date | None = None


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def throttle_events(tenant: Tenant, filters: ThrottleFilter) -> QuerySet[ThrottleEvent]:
    """A tenant's 429 audit rows (newest minute first) matching the filters."""
    rows = tenant.throttles.select_related("api_key")
    if filters.key_id:
        rows = rows.filter(api_key__key_id=filters.key_id)
    if filters.reason:
        rows = rows.filter(reason=filters.reason)
    if filters.since:
        rows = rows.filter(minute__gte=_day_start(filters.since))
    if filters.until:
        rows = rows.filter(minute__lt=_day_start(filters.until) + timedelta(days=1))
    return rows.order_by("-minute", "api_key__key_id", "reason")


def throttle_summary(rows: QuerySet[ThrottleEvent]) -> list[dict]:
    """429 counts per reason for a filtered audit query, biggest first."""
    return list(
        rows.order_by().values("reason").annotate(total=Sum("count")).order_by("-total", "reason")
    )


def throttle_reasons(tenant: Tenant) -> list[str]:
    """The reasons that occur in a tenant's 429 audit (for the filter's choices)."""
    reasons = tenant.throttles.order_by("reason").values_list("reason", flat=True).distinct()
    return list(reasons)


def admin_actions(
    *, tenant_slug: str | None = None, action: str | None = None, actor: str | None = None
) -> QuerySet[AdminAction]:
    """Audited admin actions, newest first, optionally filtered."""
    rows = AdminAction.objects.select_related("tenant")
    if tenant_slug:
        rows = rows.filter(tenant__slug=tenant_slug)
    if action:
        rows = rows.filter(action=action)
    if actor:
        rows = rows.filter(actor__icontains=actor)
    return rows.order_by("-created_at", "-id")
