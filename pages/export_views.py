"""Usage you can bill from: per UTC day and key (requests, prompt and completion tokens, errors,
429s) as a streamed CSV, for one tenant or the whole node, over the chosen window's days. The
same rows as `manage.py export_usage` (tenants/usage.py writes both)."""

from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from pages.access import EXPORT_USAGE, console_permission_required
from pages.exports import csv_response
from pages.views import window_of
from tenants.models import Tenant
from tenants.usage import EXPORT_COLUMNS, usage_export_rows


def _export(request: HttpRequest, name: str, tenant: Tenant | None) -> HttpResponseBase:
    try:
        win = window_of(request)
    except ValueError as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain; charset=utf-8")
    first, last = win.days
    rows = usage_export_rows(first, last, tenant_id=tenant.pk if tenant else None)
    return csv_response(f"{name}-{first.isoformat()}-{last.isoformat()}", EXPORT_COLUMNS, rows)


# A download is a file on the user's disk already: no cache keeps a second copy.
@never_cache
@require_GET
@console_permission_required(*EXPORT_USAGE)
def node_usage_csv(request: HttpRequest) -> HttpResponseBase:
    return _export(request, "usage-node", None)


@never_cache
@require_GET
@console_permission_required(*EXPORT_USAGE)
def tenant_usage_csv(request: HttpRequest, slug: str) -> HttpResponseBase:
    tenant = get_object_or_404(Tenant, slug=slug)
    return _export(request, f"usage-{tenant.slug}", tenant)
