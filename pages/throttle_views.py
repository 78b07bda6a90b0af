"""A tenant's 429 audit: the aggregated ThrottleEvent rows, filtered, paged, and as CSV."""

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, timedelta

from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from pages import selectors
from pages.access import READ_THROTTLES, console_permission_required
from pages.exports import csv_response
from pages.forms import ThrottleFilterForm
from tenants.models import Tenant, ThrottleEvent

PAGE_SIZE = 100
# The CSV without a "From" date: the 30 days up to "To" (or today).
DEFAULT_CSV_DAYS = 30
CSV_COLUMNS = (
    "minute",
    "key_id",
    "key_name",
    "reason",
    "count",
    "first_seen",
    "last_seen",
    "sample_addresses",
)
# A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _filtered(
    request: HttpRequest, tenant: Tenant
) -> tuple[ThrottleFilterForm, QuerySet[ThrottleEvent]]:
    reasons = selectors.throttle_reasons(tenant)
    form = ThrottleFilterForm(request.GET or None, tenant=tenant, reasons=reasons)
    rows = selectors.throttle_events(tenant, form.filters())
    # Bad filters show (and export) nothing rather than everything.
    return form, rows.none() if form.is_bound and not form.is_valid() else rows


@require_GET
@console_permission_required(*READ_THROTTLES)
def tenant_throttles(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = get_object_or_404(Tenant, slug=slug)
    form, rows = _filtered(request, tenant)
    page = Paginator(rows, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "tenant": tenant,
        "form": form,
        "page": page,
        "summary": selectors.throttle_summary(rows),
        "query": query.urlencode(),
    }
    return render(request, "console/throttles.html", context)


def _safe(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _csv_row(event: ThrottleEvent) -> list[str]:
    values = (
        event.minute.isoformat(),
        event.api_key.key_id,
        event.api_key.name,
        event.reason,
        event.count,
        event.first_seen.isoformat(),
        event.last_seen.isoformat(),
        " ".join(str(a) for a in event.sample_addresses or []),
    )
    return [_safe(v) for v in values]


def _bounded(filters: selectors.ThrottleFilter) -> selectors.ThrottleFilter:
    """The filters with both ends set: the CSV covers the chosen range, never all of time."""
    until = filters.until or timezone.now().astimezone(UTC).date()
    earliest = until - selectors.MAX_RANGE
    since = max(filters.since or until - timedelta(days=DEFAULT_CSV_DAYS - 1), earliest)
    return replace(filters, since=since, until=until)


def _csv_rows(rows: QuerySet[ThrottleEvent]) -> Iterator[list[str]]:
    for event in rows.iterator(chunk_size=2000):
        yield _csv_row(event)


# A download is a file on the user's disk already: no browser or proxy cache keeps a second
# copy of the client addresses in it (pages are only `private`; this is `no-store`).
@never_cache
@require_GET
@console_permission_required(*READ_THROTTLES)
def tenant_throttles_csv(request: HttpRequest, slug: str) -> HttpResponseBase:
    tenant = get_object_or_404(Tenant, slug=slug)
    reasons = selectors.throttle_reasons(tenant)
    form = ThrottleFilterForm(request.GET or None, tenant=tenant, reasons=reasons)
    filters = _bounded(form.filters())
    rows = selectors.throttle_events(tenant, filters)
    # Bad filters export nothing rather than everything.
    rows = rows.none() if form.is_bound and not form.is_valid() else rows
    name = f"429-audit-{tenant.slug}-{filters.since}-{filters.until}"
    return csv_response(name, CSV_COLUMNS, _csv_rows(rows))
