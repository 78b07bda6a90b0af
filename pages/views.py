"""Console pages: the overview, tenants (list, create, detail, limits) and the admin-action log.
Views are thin: a form validates, a selector reads, a tenants.services function writes."""

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from pages import charts, selectors
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
from pages.forms import (
    AuditFilterForm,
    IssueKeyForm,
    LimitsForm,
    TenantCreateForm,
    confirmation_token,
)
from tenants.models import Tenant
from tenants.services import TenantError, tenant_create, tenant_set_limits

WINDOW_LABELS = {"1h": "1 hour", "6h": "6 hours", "24h": "24 hours", "7d": "7 days"}
AUDIT_PAGE_SIZE = 50
# The window an admin picked, kept for the pages that follow (links need not carry it).
WINDOW_SESSION_KEY = "console_window"


def _window(request: HttpRequest) -> selectors.Window:
    chosen = request.GET.get("window")
    if chosen in WINDOW_LABELS:
        request.session[WINDOW_SESSION_KEY] = chosen
    else:
        chosen = request.session.get(WINDOW_SESSION_KEY)
    return selectors.window(chosen)


def _window_context(win: selectors.Window) -> dict:
    return {"win": win, "window_label": WINDOW_LABELS[win.name], "windows": WINDOW_LABELS}


@require_GET
@console_permission_required(*READ_OVERVIEW)
def overview(request: HttpRequest) -> HttpResponse:
    win = _window(request)
    context = {
        "totals": selectors.node_totals(win),
        "busiest": selectors.busiest_tenants(win),
        "throttled": selectors.most_throttled_tenants(win),
        "charts": charts.node_charts(win),
        **_window_context(win),
    }
    return render(request, "console/overview.html", context)


@require_http_methods(["GET", "POST"])
@console_permission_required(*READ_TENANTS, post=(ADD_TENANT,))
def tenant_list(request: HttpRequest) -> HttpResponse:
    form = TenantCreateForm(request.POST or None)
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
    win = selectors.window("24h")
    context = {"tenants": selectors.tenants_with_usage(win.start), "form": form}
    return render(request, "console/tenants.html", context, status=400 if form.errors else 200)


def tenant_page(
    request: HttpRequest,
    tenant: Tenant,
    *,
    limits_form: LimitsForm | None = None,
    issue_form: IssueKeyForm | None = None,
) -> HttpResponse:
    """The tenant page, with any bound form that failed validation (then status 400)."""
    win = _window(request)
    keys = list(selectors.tenant_keys(tenant, win.start))
    context = {
        "tenant": tenant,
        "keys": keys,
        "key_charts": charts.key_charts(tenant, keys, win),
        "limits_form": limits_form or LimitsForm.for_tenant(tenant),
        "issue_form": issue_form or IssueKeyForm(),
        "recent_actions": selectors.admin_actions(tenant_slug=tenant.slug)[:10],
        **_window_context(win),
    }
    failed = any(f is not None and f.errors for f in (limits_form, issue_form))
    return render(request, "console/tenant.html", context, status=400 if failed else 200)


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
