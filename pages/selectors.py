"""Reads for the console pages. Every sum and count happens in the database (GROUP BY over the
usage and audit rows); Python only places the aggregated buckets on a time grid."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict

from django.db.models import Aggregate, Count, F, Q, QuerySet, Sum
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Coalesce, TruncHour, TruncMinute
from django.utils import timezone

from ratelimit import status
from tenants.models import AdminAction, ApiKey, Tenant, ThrottleEvent, UsageMinute

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

    from ratelimit.status import LimitState, ScopeState

# A row of values(): column or aggregate name to value.
Row = Mapping[str, Any]

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


def _tokens() -> CombinedExpression:
    return F("prompt_tokens") + F("completion_tokens")


def _usage(win: Window) -> QuerySet[UsageMinute]:
    return UsageMinute.objects.filter(minute__gte=win.start, minute__lt=win.end)


def _throttles(win: Window) -> QuerySet[ThrottleEvent]:
    return ThrottleEvent.objects.filter(minute__gte=win.start, minute__lt=win.end)


def node_totals(win: Window) -> dict[str, int]:
    """Requests, tokens, errors and 429s of the whole node inside the window."""
    usage = _usage(win).aggregate(
        requests=Coalesce(Sum("requests"), 0),
        prompt_tokens=Coalesce(Sum("prompt_tokens"), 0),
        completion_tokens=Coalesce(Sum("completion_tokens"), 0),
        errors=Coalesce(Sum("errors"), 0),
    )
    throttled = _throttles(win).aggregate(n=Coalesce(Sum("count"), 0))["n"]
    counts = {
        "tenants": Tenant.objects.count(),
        "active_keys": ApiKey.objects.active().count(),
    }
    tokens = usage["prompt_tokens"] + usage["completion_tokens"]
    return {**usage, **counts, "tokens": tokens, "throttled": throttled}


def busiest_tenants(win: Window, limit: int = 5) -> list[Row]:
    """Tenants with the most accepted requests in the window (and their errors)."""
    rows = (
        _usage(win)
        .values("tenant__slug", "tenant__name")
        .annotate(requests=Sum("requests"), tokens=Sum(_tokens()), errors=Sum("errors"))
        # A tenant with only errors in the window (rows of 0 requests) is not busy.
        .filter(requests__gt=0)
        .order_by("-requests", "tenant__slug")
    )
    return list(rows[:limit])


def most_throttled_tenants(win: Window, limit: int = 5) -> list[Row]:
    """Tenants with the most 429s in the window, and how many of their keys were refused."""
    rows = (
        _throttles(win)
        .values("tenant__slug", "tenant__name")
        .annotate(throttled=Sum("count"), keys=Count("api_key", distinct=True))
        .order_by("-throttled", "tenant__slug")
    )
    return list(rows[:limit])


def usage_buckets(win: Window, *, tenant: Tenant | None = None) -> list[Row]:
    """Per-bucket sums of requests, tokens and errors (only buckets that have rows)."""
    rows = _usage(win)
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    return list(
        rows.annotate(bucket=_trunc(win))
        .values("bucket")
        .annotate(requests=Sum("requests"), tokens=Sum(_tokens()), errors=Sum("errors"))
        .order_by("bucket")
    )


def throttle_buckets(win: Window, *, tenant: Tenant | None = None) -> list[Row]:
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


def key_buckets(win: Window, tenant: Tenant) -> tuple[list[Row], list[Row]]:
    """Per-key, per-bucket requests, errors and 429s of one tenant's keys."""
    usage = (
        _usage(win)
        .filter(tenant=tenant)
        .annotate(bucket=_trunc(win))
        .values("api_key_id", "bucket")
        .annotate(requests=Sum("requests"), errors=Sum("errors"))
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


class KeyUsage(TypedDict):
    """The sums tenant_keys attaches to each key it returns."""

    requests: int
    tokens: int
    errors: int
    throttled: int


class TenantUsage(KeyUsage):
    """The sums tenants_with_usage attaches to each tenant it returns."""

    active_keys: int


Sums = dict[int, dict[str, int]]


def _sums(rows: QuerySet[Any], by: str, **sums: Aggregate) -> Sums:
    """One GROUP BY query: {group id: {name: sum}}."""
    return {row.pop(by): row for row in rows.order_by().values(by).annotate(**sums)}


def _attach(objects: list[Any], by: str, names: Iterable[str], *tables: Sums) -> list[Any]:
    """Set each of `names` on each object: its sum from `tables`, else 0."""
    # Separate grouped queries rather than one join: joining usage to throttles would multiply
    # their rows and inflate both sums, and correlated subqueries ran once per joined row.
    for obj in objects:
        for name in names:
            setattr(obj, name, 0)
        for table in tables:
            for name, value in table.get(getattr(obj, by), {}).items():
                setattr(obj, name, value)
    return objects


def _usage_columns(since: datetime, by: str, **where: object) -> tuple[Sums, Sums]:
    usage = _sums(
        UsageMinute.objects.filter(minute__gte=since, **where),
        by,
        requests=Sum("requests"),
        tokens=Sum(_tokens()),
        errors=Sum("errors"),
    )
    throttles = ThrottleEvent.objects.filter(minute__gte=since, **where)
    return usage, _sums(throttles, by, throttled=Sum("count"))


def tenants_with_usage(since: datetime) -> "list[WithAnnotations[Tenant, TenantUsage]]":
    """All tenants with their active keys, requests, tokens, errors and 429s since `since`."""
    live = ApiKey.objects.filter(revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
    )
    active = _sums(live, "tenant_id", active_keys=Count("id"))
    tenants = list(Tenant.objects.order_by("slug"))
    usage, throttles = _usage_columns(since, "tenant_id")
    return _attach(tenants, "id", TenantUsage.__annotations__, active, usage, throttles)


def tenant_keys(tenant: Tenant, since: datetime) -> "list[WithAnnotations[ApiKey, KeyUsage]]":
    """A tenant's keys, newest first, with requests, tokens, errors and 429s since `since`."""
    keys = list(tenant.keys.order_by("-created_at", "-id"))
    usage, throttles = _usage_columns(since, "api_key_id", tenant=tenant)
    return _attach(keys, "pk", KeyUsage.__annotations__, usage, throttles)


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


def throttle_summary(rows: QuerySet[ThrottleEvent]) -> list[Row]:
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


# A quota at or above this share is "near" on the tenants list (and over at 100).
NEAR_QUOTA_PERCENT = 80


@dataclass(frozen=True)
class PeriodQuota:
    """One calendar quota of a tenant: tokens recorded in Postgres (moved from Redis every
    flush), the limiter's live count (recorded + reserved by requests in flight; None without
    the quota), the quota itself (None: unlimited) and when the period ends."""

    name: str  # "today" | "this month"
    field: str  # tokens_per_day | tokens_per_month
    requests: int
    tokens: int
    quota: int | None
    counted: int | None
    resets_at: datetime

    @property
    def percent(self) -> int | None:
        if not self.quota:
            return None
        return (max(self.tokens, self.counted or 0) * 100) // self.quota


@dataclass(frozen=True)
class QuotaStatus:
    """A tenant's page's quota card: the two periods, the limiter's state (None: Redis
    cannot say right now) and, while a limit refuses, when the tenant is served again."""

    periods: tuple[PeriodQuota, ...]
    state: "ScopeState | None"

    @property
    def inflight(self) -> "LimitState | None":
        return self.state.get("max_inflight") if self.state is not None else None

    @property
    def blocking(self) -> list["LimitState"]:
        return [x for x in self.state.limits if x.blocked] if self.state is not None else []

    @property
    def served_again_at(self) -> datetime | None:
        return self.state.served_again_at if self.state is not None else None


def _period_starts(now: datetime) -> tuple[datetime, datetime, datetime, datetime]:
    """Today's and this month's UTC start, and their ends."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    next_month = (month + timedelta(days=32)).replace(day=1)
    return day, day + timedelta(days=1), month, next_month


def quota_status(tenant: Tenant, *, now: datetime | None = None) -> QuotaStatus:
    """Used today and this month against the tenant's quotas, and its limiter state now."""
    day, day_end, month, month_end = _period_starts(now or timezone.now())
    today = Q(minute__gte=day)
    sums = UsageMinute.objects.filter(tenant=tenant, minute__gte=month).aggregate(
        month_requests=Coalesce(Sum("requests"), 0),
        month_tokens=Coalesce(Sum(_tokens()), 0),
        day_requests=Coalesce(Sum("requests", filter=today), 0),
        day_tokens=Coalesce(Sum(_tokens(), filter=today), 0),
    )
    state = status.scope_state(status.Scope(tenant.pk, tenant.limits(), tenant.burst_percent))

    def counted(field: str) -> int | None:
        limit = state.get(field) if state is not None else None
        return limit.used if limit is not None else None

    periods = (
        PeriodQuota(
            "today",
            "tokens_per_day",
            sums["day_requests"],
            sums["day_tokens"],
            tenant.tokens_per_day,
            counted("tokens_per_day"),
            day_end,
        ),
        PeriodQuota(
            "this month",
            "tokens_per_month",
            sums["month_requests"],
            sums["month_tokens"],
            tenant.tokens_per_month,
            counted("tokens_per_month"),
            month_end,
        ),
    )
    return QuotaStatus(periods, state)


def quota_percents(tenants: Iterable[Tenant]) -> dict[int, int]:
    """Tenant id -> its fullest day or month quota in percent, as the limiter counts now, for
    the tenants that have a quota (one Redis round trip for all; {} when Redis cannot say)."""
    quoted = [t for t in tenants if t.tokens_per_day or t.tokens_per_month]
    scopes = [status.Scope(t.pk, t.limits(), t.burst_percent) for t in quoted]
    states = status.scope_states(scopes) if scopes else []
    if states is None:
        return {}
    found = {t.pk: state.quota_percent for t, state in zip(quoted, states, strict=True)}
    return {pk: percent for pk, percent in found.items() if percent is not None}
