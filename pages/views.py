"""Console pages: the overview, tenants (list, create, detail, limits) and the admin-action log.
Views are thin: a form validates, a selector reads, a tenants.services function writes."""

from datetime import UTC, date

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from pages import adapter_reads, charts, selectors
from pages.access import (
    ADD_TENANT,
    CHANGE_TENANT,
    READ_AUDIT,
    READ_OVERVIEW,
    READ_TENANT,
    READ_TENANTS,
    actor_of,
    console_permission_required,
)
from pages.adapter_forms import GrantAdapterForm
from pages.forms import (
    AuditFilterForm,
    IssueKeyForm,
    LimitsForm,
    PresetForm,
    TenantCreateForm,
    TenantRenameForm,
    confirmation_token,
    preset_initial,
)
from tenants.models import Tenant
from tenants.services import TENANT_SETTINGS, TenantError, tenant_create, tenant_set_limits

AUDIT_PAGE_SIZE = 50
TENANTS_PAGE_SIZE = 50
KEYS_PAGE_SIZE = 25
# Columns the tenants list and a tenant's keys may be sorted by (?sort=name, ?sort=-name).
USAGE_SORTS = ("requests", "tokens", "errors", "throttled")
TENANT_SORTS = ("slug", "name", "active_keys", *USAGE_SORTS)
KEY_SORTS = ("key_id", "name", "created_at", "last_used_at", *USAGE_SORTS)


def _day(text: str, field: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"“{field}” must be a date as YYYY-MM-DD, not “{text}”.") from None


def window_of(request: HttpRequest) -> selectors.Window:
    """The window the query string asks for: ?from=&to= (whole UTC days), ?window=mtd (month
    to date) or a named window; raises ValueError (a message for the user) for a bad range."""
    first, last = request.GET.get("from", "").strip(), request.GET.get("to", "").strip()
    if not first and not last:
        name = request.GET.get("window")
        return selectors.month_to_date() if name == "mtd" else selectors.window(name)
    if not first:
        raise ValueError("Choose the first day of the range (“From”).")
    start = _day(first, "From")
    end = _day(last, "To") if last else timezone.now().astimezone(UTC).date()
    if end < start:
        raise ValueError("“To” must be on or after “From”.")
    if end - start > selectors.MAX_RANGE:
        raise ValueError(f"A range may span at most {selectors.MAX_RANGE.days} days.")
    return selectors.date_range(start, end)


# The window an admin picked, kept for the pages that follow (links need not carry it).
WINDOW_SESSION_KEY = "console_window"


def chosen_window(request: HttpRequest) -> selectors.Window:
    """The query's window; with none asked for, the named window (or month to date) picked
    earlier in this session. A bad range shows the default window and says why."""
    chosen = request.GET.get("window")
    asked = chosen or request.GET.get("from") or request.GET.get("to")
    if not asked:
        saved = request.session.get(WINDOW_SESSION_KEY)
        return selectors.month_to_date() if saved == "mtd" else selectors.window(saved)
    try:
        win = window_of(request)
    except ValueError as exc:
        messages.error(request, str(exc))
        return selectors.window(None)
    if chosen in (*selectors.WINDOWS, "mtd") and not request.GET.get("from"):
        request.session[WINDOW_SESSION_KEY] = chosen
    return win


def window_context(win: selectors.Window) -> dict:
    named = {name: label for name, (_, _, label) in selectors.WINDOWS.items()}
    return {"win": win, "window_label": win.title, "windows": named}


def _paged(request: HttpRequest, rows: list, size: int, allowed: tuple[str, ...]) -> dict:
    """Sort (?sort=) and page (?page=) a list; with the query string the links keep."""
    rows, sort = selectors.sorted_rows(rows, request.GET.get("sort", ""), allowed)
    page = Paginator(rows, size).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return {"page": page, "sort": sort, "query": query.urlencode()}


@require_GET
@console_permission_required(*READ_OVERVIEW)
def overview(request: HttpRequest) -> HttpResponse:
    win = chosen_window(request)
    context = {
        "totals": selectors.node_totals(win),
        "busiest": selectors.busiest_tenants(win),
        "throttled": selectors.most_throttled_tenants(win),
        "charts": charts.node_charts(win),
        **window_context(win),
    }
    return render(request, "console/overview.html", context)


@require_http_methods(["GET", "POST"])
@console_permission_required(*READ_TENANTS, post=(ADD_TENANT,))
def tenant_list(request: HttpRequest) -> HttpResponse:
    # A new tenant's form starts from a preset: the one asked for, else TENANT_DEFAULT_PRESET.
    preset = PresetForm(request.GET or {"preset": settings.TENANT_DEFAULT_PRESET})
    chosen = preset.cleaned_data["preset"] if preset.is_valid() else None
    initial = preset_initial(chosen or settings.TENANT_DEFAULT_PRESET)
    form = TenantCreateForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            tenant = tenant_create(
                slug=data["slug"],
                name=data["name"],
                limits=form.settings(),
                actor=actor_of(request),
            )
        except TenantError as exc:  # a concurrent create of the same slug
            form.add_error("slug", str(exc))
        else:
            messages.success(request, f"Tenant “{tenant.slug}” created. Issue its first key below.")
            return redirect("console:tenant", slug=tenant.slug)
    win = chosen_window(request)
    search = request.GET.get("q", "").strip()
    tenants = selectors.tenants_with_usage(win.start, win.end, search=search)
    paged = _paged(request, tenants, TENANTS_PAGE_SIZE, TENANT_SORTS)
    shown = paged["page"].object_list
    percents = selectors.quota_percents(shown)  # the page's tenants only: one round trip
    for tenant in shown:
        tenant.quota_percent = percents.get(tenant.pk)
    context = {
        "tenants": tenants,
        "form": form,
        "search": search,
        "preset_form": preset,
        "default_preset": settings.TENANT_DEFAULT_PRESET,
        "near_percent": selectors.NEAR_QUOTA_PERCENT,
        **paged,
        **window_context(win),
    }
    return render(request, "console/tenants.html", context, status=400 if form.errors else 200)


def tenant_page(
    request: HttpRequest,
    tenant: Tenant,
    *,
    limits_form: LimitsForm | None = None,
    issue_form: IssueKeyForm | None = None,
    rename_form: TenantRenameForm | None = None,
    adapter_form: GrantAdapterForm | None = None,
) -> HttpResponse:
    """The tenant page, with any bound form that failed validation (then status 400)."""
    win = chosen_window(request)
    search = request.GET.get("q", "").strip()
    # Every key's sums: the chart ranks them all, the table shows those that match.
    keys = selectors.tenant_keys(tenant, win.start, win.end)
    paged = _paged(request, selectors.keys_matching(keys, search), KEYS_PAGE_SIZE, KEY_SORTS)
    first, last = win.days
    context = {
        "tenant": tenant,
        "keys": paged["page"].object_list,
        "key_count": len(keys),
        "search": search,
        **paged,
        "tenant_charts": charts.tenant_charts(tenant, keys, win),
        "range_query": f"since={first.isoformat()}&until={last.isoformat()}",
        "limits_form": limits_form or _limits_form(request, tenant),
        "preset_form": PresetForm(request.GET if "preset" in request.GET else None),
        "issue_form": issue_form or IssueKeyForm(),
        "rename_form": rename_form or TenantRenameForm(initial={"name": tenant.name}),
        "quota": selectors.quota_status(tenant),
        "flush_seconds": settings.RATELIMIT_FLUSH_SECONDS,
        "recent_actions": selectors.admin_actions(tenant_slug=tenant.slug)[:10],
        # None for an account that may not read adapters: the section is left out.
        "adapters": adapter_reads.tenant_section(request.user, tenant, win.days, adapter_form),
        **window_context(win),
    }
    forms = (limits_form, issue_form, rename_form, adapter_form)
    failed = any(f is not None and f.errors for f in forms)
    return render(request, "console/tenant.html", context, status=400 if failed else 200)


def _limits_form(request: HttpRequest, tenant: Tenant) -> LimitsForm:
    """The tenant's limits, or a preset's over them when the page was asked for one (?preset=;
    shown, not saved)."""
    preset = PresetForm(request.GET)
    name = preset.cleaned_data["preset"] if "preset" in request.GET and preset.is_valid() else None
    base = {field: getattr(tenant, field) for field in TENANT_SETTINGS}
    return LimitsForm(initial=preset_initial(name, base))


@require_GET
@console_permission_required(*READ_TENANT)
def tenant_detail(request: HttpRequest, slug: str) -> HttpResponse:
    return tenant_page(request, get_object_or_404(Tenant, slug=slug))


@require_POST
@console_permission_required(*READ_TENANT, CHANGE_TENANT)
def tenant_limits(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = get_object_or_404(Tenant, slug=slug)
    form = LimitsForm.for_tenant(tenant, request.POST)
    if not form.is_valid():
        return tenant_page(request, tenant, limits_form=form)
    changes = form.changes(tenant)
    if not changes:
        messages.info(request, "Nothing changed.")
        return redirect("console:tenant", slug=tenant.slug)
    review = form.review(tenant)
    token = confirmation_token(tenant, changes)
    if any(change.is_big_cut for change in review) and request.POST.get("confirm") != token:
        # Nothing is written until the admin has seen before and after and confirmed.
        context = {"tenant": tenant, "form": form, "review": review, "token": token}
        return render(request, "console/limits_confirm.html", context)
    tenant_set_limits(tenant=tenant, changes=changes, actor=actor_of(request))
    names = ", ".join(sorted(changes))
    shown = "; ".join(change.describe() for change in review)
    messages.success(
        request,
        f"Limits saved ({names}); every worker applies them within about a second. {shown}.",
    )
    return redirect("console:tenant", slug=tenant.slug)


@require_GET
@console_permission_required(*READ_AUDIT)
def audit_log(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET)
    data = form.cleaned_data if form.is_valid() else {}
    rows = selectors.admin_actions(
        tenant_slug=data.get("tenant") or None,
        action=data.get("action") or None,
        actor=data.get("actor") or None,
    )
    page = Paginator(rows, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {"form": form, "page": page, "query": query.urlencode()}
    return render(request, "console/audit.html", context)
