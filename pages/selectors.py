"""Reads for the console pages. Every sum and count happens in the database (GROUP BY over the
usage and audit rows); Python only places the aggregated buckets on a time grid."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict

from django.db.models import Aggregate, Count, Q, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDay, TruncHour, TruncMinute
from django.db.models.functions.datetime import TruncBase
from django.utils import timezone

from ratelimit import status
from tenants.models import AdminAction, ApiKey, Tenant, ThrottleEvent
from tenants.usage import usage_series, usage_sums, usage_totals

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

    from ratelimit.status import LimitState, ScopeState

# A row of values(): column or aggregate name to value.
Row = Mapping[str, Any]

# Window choices for the charts: how far back, the bucket each point sums, and the label.
WINDOWS: dict[str, tuple[timedelta, timedelta, str]] = {
    "1h": (timedelta(hours=1), timedelta(minutes=1), "1 hour"),
    "6h": (timedelta(hours=6), timedelta(minutes=1), "6 hours"),
    "24h": (timedelta(hours=24), timedelta(minutes=1), "24 hours"),
    "7d": (timedelta(days=7), timedelta(hours=1), "7 days"),
    "30d": (timedelta(days=30), timedelta(days=1), "30 days"),
}
DEFAULT_WINDOW = "24h"
# A chosen date range of up to this many days is drawn per hour, a longer one per day.
HOURLY_UP_TO = timedelta(days=8)
# The longest date range a page or an export reads (a little over a year).
MAX_RANGE = timedelta(days=400)


@dataclass(frozen=True)
class Window:
    """A chart window: [start, end) in UTC, cut into buckets of `step`."""

    name: str
    start: datetime
    end: datetime
    step: timedelta
    label: str = ""

    @property
    def buckets(self) -> int:
        return int((self.end - self.start) / self.step)

    @property
    def per_minute(self) -> bool:
        return self.step == timedelta(minutes=1)

    @property
    def title(self) -> str:
        """How a page names the window: 'last 24 hours', or the dates of a range."""
        return self.label if self.name in ("range", "mtd") else f"last {self.label}"

    @property
    def unit(self) -> str:
        """'minute', 'hour' or 'day': what one bucket sums."""
        return {60: "minute", 3600: "hour"}.get(int(self.step.total_seconds()), "day")

    @property
    def query(self) -> str:
        """The query string that selects this window again (links keep the window)."""
        if self.name == "mtd":
            return "window=mtd"
        if self.name == "range":
            last = (self.end - timedelta(days=1)).date()
            return f"from={self.start.date().isoformat()}&to={last.isoformat()}"
        return f"window={self.name}"

    @property
    def days(self) -> tuple[date, date]:
        """The UTC days the window touches, first and last (for exports and the 429 CSV)."""
        return self.start.date(), (self.end - timedelta(microseconds=1)).date()


def _aligned(now: datetime, step: timedelta) -> datetime:
    seconds = step.total_seconds()
    return datetime.fromtimestamp(now.timestamp() // seconds * seconds, tz=UTC)


def window(name: str | None, *, now: datetime | None = None) -> Window:
    """The named window (unknown names fall back to 24 h), ending after the current bucket."""
    name = name if name in WINDOWS else DEFAULT_WINDOW
    span, step, label = WINDOWS[name]
    now = (now or timezone.now()).astimezone(UTC)
    # Align to the bucket so each point covers whole minutes (or hours, or days) of rows.
    end = _aligned(now, step) + step
    return Window(name=name, start=end - span, end=end, step=step, label=label)


def date_range(first: date, last: date) -> Window:
    """Whole UTC days `first` to `last` (inclusive): per hour up to 8 days, else per day."""
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    step = timedelta(hours=1) if end - start <= HOURLY_UP_TO else timedelta(days=1)
    label = f"{first.isoformat()} to {last.isoformat()}"
    return Window(name="range", start=start, end=end, step=step, label=label)


def month_to_date(*, today: date | None = None) -> Window:
    """The days of this UTC month so far, today included."""
    today = today or timezone.now().astimezone(UTC).date()
    win = date_range(today.replace(day=1), today)
    label = f"month to date ({win.label})"
    return Window(name="mtd", start=win.start, end=win.end, step=win.step, label=label)


def _trunc(win: Window, field: str = "minute") -> TruncBase:
    cls: type[TruncBase] = {"minute": TruncMinute, "hour": TruncHour}.get(win.unit, TruncDay)
    return cls(field, tzinfo=UTC)


def _throttles(win: Window) -> QuerySet[ThrottleEvent]:
    return ThrottleEvent.objects.filter(minute__gte=win.start, minute__lt=win.end)


def node_totals(win: Window) -> dict[str, int]:
    """Requests, tokens, errors and 429s of the whole node inside the window."""
    usage = usage_totals(win.start, win.end)
    throttled = _throttles(win).aggregate(n=Coalesce(Sum("count"), 0))["n"]
    counts = {
        "tenants": Tenant.objects.count(),
        "active_keys": ApiKey.objects.active().count(),
    }
    return {**usage, **counts, "throttled": throttled}


def busiest_tenants(win: Window, limit: int = 5) -> list[Row]:
    """Tenants with the most accepted requests in the window (and their errors)."""
    sums = usage_sums(win.start, win.end, by=("tenant_id",))
    # A tenant with only errors in the window (rows of 0 requests) is not busy.
    busy = {tenant_id: row for (tenant_id,), row in sums.items() if row["requests"] > 0}
    names = Tenant.objects.filter(pk__in=busy).values_list("pk", "slug", "name")
    rows: list[Row] = [
        {"tenant__slug": slug, "tenant__name": name, **_usage_of(busy[pk])}
        for pk, slug, name in names
    ]
    rows.sort(key=lambda row: (-row["requests"], row["tenant__slug"]))
    return rows[:limit]


def _usage_of(sums: Mapping[str, int]) -> dict[str, int]:
    return {name: sums[name] for name in ("requests", "tokens", "errors")}


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
    where: dict[str, Any] = {"tenant_id": tenant.pk} if tenant is not None else {}
    series = usage_series(win.start, win.end, win.step, **where)
    return [{"bucket": bucket, **sums} for (bucket,), sums in sorted(series.items())]


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


def key_buckets(
    win: Window, tenant: Tenant, *, only: Iterable[int] | None = None
) -> tuple[list[Row], list[Row]]:
    """Per-key, per-bucket requests, errors and 429s of one tenant's keys (or of the keys
    whose pks are `only`)."""
    where: dict[str, object] = {"tenant_id": tenant.pk}
    if only is not None:
        where["api_key_id__in"] = list(only)
    series = usage_series(win.start, win.end, win.step, by=("api_key_id",), **where)
    usage: list[Row] = [
        {"api_key_id": key_pk, "bucket": bucket, **sums}
        for (bucket, key_pk), sums in sorted(series.items(), key=lambda i: (i[0][1], i[0][0]))
    ]
    throttled = (
        _throttles(win)
        .filter(**where)
        .annotate(bucket=_trunc(win))
        .values("api_key_id", "bucket")
        .annotate(throttled=Sum("count"))
        .order_by("api_key_id", "bucket")
    )
    return usage, list(throttled)


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


def _usage_columns(
    start: datetime, end: datetime | None, by: str, **where: object
) -> tuple[Sums, Sums]:
    # Without an end: up to now, the current minute included.
    end = end or timezone.now() + timedelta(minutes=1)
    usage = {
        group: _usage_of(sums)
        for (group,), sums in usage_sums(start, end, by=(by,), **where).items()
    }
    throttles = ThrottleEvent.objects.filter(minute__gte=start, minute__lt=end, **where)
    return usage, _sums(throttles, by, throttled=Sum("count"))


def tenants_with_usage(
    since: datetime, until: datetime | None = None, *, search: str = ""
) -> "list[WithAnnotations[Tenant, TenantUsage]]":
    """Tenants (whose slug or name contains `search`, if given) with their active keys,
    requests, tokens, errors and 429s in [since, until)."""
    live = ApiKey.objects.filter(revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
    )
    active = _sums(live, "tenant_id", active_keys=Count("id"))
    tenants = Tenant.objects.order_by("slug")
    if search:
        tenants = tenants.filter(Q(slug__icontains=search) | Q(name__icontains=search))
    usage, throttles = _usage_columns(since, until, "tenant_id")
    return _attach(list(tenants), "id", TenantUsage.__annotations__, active, usage, throttles)


def tenant_keys(
    tenant: Tenant, since: datetime, until: datetime | None = None
) -> "list[WithAnnotations[ApiKey, KeyUsage]]":
    """A tenant's keys, newest first, with requests, tokens, errors and 429s in
    [since, until)."""
    keys = list(tenant.keys.order_by("-created_at", "-id"))
    usage, throttles = _usage_columns(since, until, "api_key_id", tenant_id=tenant.pk)
    return _attach(keys, "pk", KeyUsage.__annotations__, usage, throttles)


def keys_matching(keys: list[Any], search: str) -> list[Any]:
    """The keys whose key id or name contains `search` (any case); all of them without one."""
    needle = search.casefold()
    return [key for key in keys if needle in key.key_id.casefold() or needle in key.name.casefold()]


def sorted_rows(rows: list[Any], sort: str, allowed: Iterable[str]) -> tuple[list[Any], str]:
    """Rows sorted by an allowed attribute ("-name": descending), ties by their order so far;
    an unknown sort leaves the order as it is. Returns the rows and the sort applied."""
    name = sort.removeprefix("-")
    if name not in allowed:
        return rows, ""

    # A stable sort: ties keep the selector's order (slug, or newest key first).
    def key(row: Any) -> tuple[bool, Any]:
        value = getattr(row, name)
        # Empty values (a key never used) sort after every value, never compared with one.
        return value is None, value if value is not None else 0

    return sorted(rows, key=key, reverse=sort.startswith("-")), sort


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
    # From the rollups (whole days, then hours and minutes at the edge): no month of minutes.
    end = now or timezone.now()
    today, this_month = (
        usage_totals(day, end, tenant_id=tenant.pk),
        usage_totals(month, end, tenant_id=tenant.pk),
    )
    sums = {
        "day_requests": today["requests"],
        "day_tokens": today["tokens"],
        "month_requests": this_month["requests"],
        "month_tokens": this_month["tokens"],
    }
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
