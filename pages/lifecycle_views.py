"""A tenant's lifecycle in the console: rename, suspend (with a typed confirmation), resume;
and one key's own limits. Thin: a form validates, a tenants.services function writes and
audits, every worker applies the change within the key cache's version poll."""

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from pages.access import (
    CHANGE_APIKEY,
    LIFECYCLE,
    READ_KEY,
    READ_TENANT,
    actor_of,
    console_permission_required,
)
from pages.forms import LIMIT_LABELS, KeyLimitsForm, SuspendTenantForm, TenantRenameForm
from pages.views import tenant_page
from ratelimit.status import Scope, scope_state
from tenants.models import ApiKey, Tenant
from tenants.services import (
    TenantError,
    api_key_set_limits,
    tenant_rename,
    tenant_resume,
    tenant_suspend,
)


@require_POST
@console_permission_required(*READ_TENANT, *LIFECYCLE)
def tenant_rename_view(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = get_object_or_404(Tenant, slug=slug)
    form = TenantRenameForm(request.POST)
    if not form.is_valid():
        return tenant_page(request, tenant, rename_form=form)
    old = tenant.name
    tenant = tenant_rename(tenant=tenant, name=form.cleaned_data["name"], actor=actor_of(request))
    if tenant.name == old:
        messages.info(request, "Nothing changed.")
    else:
        messages.success(request, f"Renamed “{old}” to “{tenant.name}”; the slug stays {slug}.")
    return redirect("console:tenant", slug=slug)


@require_http_methods(["GET", "POST"])
@console_permission_required(*READ_TENANT, *LIFECYCLE)
def tenant_suspend_view(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = get_object_or_404(Tenant, slug=slug)
    form = SuspendTenantForm(request.POST or None, tenant=tenant)
    if request.method == "POST" and form.is_valid():
        try:
            tenant_suspend(
                tenant=tenant, actor=actor_of(request), reason=form.cleaned_data["reason"]
            )
        except TenantError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(
                request,
                f"{slug} suspended: every key gets 403 tenant_suspended within about a second, "
                "open WebSockets are closed; usage and audit are kept.",
            )
        return redirect("console:tenant", slug=slug)
    context = {"tenant": tenant, "form": form, "keys": tenant.keys.filter(revoked_at=None).count()}
    return render(request, "console/suspend.html", context, status=400 if form.errors else 200)


@require_POST
@console_permission_required(*READ_TENANT, *LIFECYCLE)
def tenant_resume_view(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = get_object_or_404(Tenant, slug=slug)
    try:
        tenant_resume(tenant=tenant, actor=actor_of(request))
    except TenantError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{slug} resumed: its keys work again within about a second.")
    return redirect("console:tenant", slug=slug)


def _key_limits_page(request: HttpRequest, key: ApiKey, form: KeyLimitsForm) -> HttpResponse:
    tenant = key.tenant
    scope = Scope(tenant.pk, key.limit_overrides(), tenant.burst_percent, key_id=key.key_id)
    rows = [(form[name], LIMIT_LABELS[name], getattr(tenant, name)) for name in LIMIT_LABELS]
    context = {"key": key, "tenant": tenant, "form": form, "rows": rows}
    context["state"] = scope_state(scope)
    return render(request, "console/key_limits.html", context, status=400 if form.errors else 200)


@require_http_methods(["GET", "POST"])
@console_permission_required(*READ_KEY, post=(CHANGE_APIKEY,))
def key_limits_view(request: HttpRequest, slug: str, key_id: str) -> HttpResponse:
    key = get_object_or_404(
        ApiKey.objects.select_related("tenant"), tenant__slug=slug, key_id=key_id
    )
    form = KeyLimitsForm.for_key(key, request.POST if request.method == "POST" else None)
    if request.method != "POST" or not form.is_valid():
        return _key_limits_page(request, key, form)
    changes = form.changes(key)
    if not changes:
        messages.info(request, "Nothing changed.")
    else:
        api_key_set_limits(api_key=key, changes=changes, actor=actor_of(request))
        names = ", ".join(sorted(changes))
        messages.success(
            request,
            f"Limits of key {key_id} saved ({names}); every worker applies them within about "
            "a second.",
        )
    return redirect("console:tenant", slug=slug)
