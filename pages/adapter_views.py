"""The Adapters page (/console/adapters/) and each adapter's page: register a peft LoRA folder
under a name, grant it to tenants and revoke it (also from a tenant's page), remove it, and read
its usage per day and tenant. Reading needs the adapter view permissions, every write also
tenants.manage_adapters (Administrator). Thin: a form validates, tenants.adapters writes,
audits and tells every worker (which applies a change within about a second)."""

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from pages import adapter_reads
from pages.access import (
    MANAGE_ADAPTERS,
    READ_ADAPTER,
    READ_ADAPTERS,
    READ_TENANT,
    actor_of,
    console_permission_required,
)
from pages.adapter_forms import (
    AdapterAddForm,
    GrantAdapterForm,
    GrantTenantForm,
    RemoveAdapterForm,
    refusal,
)
from pages.views import chosen_window, tenant_page, window_context
from tenants.adapter_selectors import adapter_usage
from tenants.adapters import (
    AdapterRefused,
    adapter_add,
    adapter_grant,
    adapter_remove,
    adapter_revoke,
)
from tenants.models import Adapter, Tenant

USAGE_PAGE_SIZE = 50


@require_http_methods(["GET", "POST"])
@console_permission_required(*READ_ADAPTERS, post=(MANAGE_ADAPTERS,))
def adapter_list(request: HttpRequest) -> HttpResponse:
    form = AdapterAddForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            adapter = adapter_add(name=data["name"], path=data["path"], actor=actor_of(request))
        except AdapterRefused as exc:
            form.add_error(form.field_of_refusal(), refusal(exc))
        else:
            messages.success(
                request,
                f"Adapter “{adapter.name}” registered (rank {adapter.rank}). "
                "No tenant may use it until you grant it below.",
            )
            return redirect("console:adapter", name=adapter.name)
    context = {"adapters": adapter_reads.adapters_with_counts(), "form": form}
    return render(request, "console/adapters.html", context, status=400 if form.errors else 200)


def adapter_page(
    request: HttpRequest, adapter: Adapter, *, grant_form: GrantTenantForm | None = None
) -> HttpResponse:
    """An adapter's page, with a bound grant form that failed validation (then status 400)."""
    win = chosen_window(request)
    first, last = win.days
    usage = adapter_usage(start=first, end=last, adapter=adapter.name)
    page = Paginator(usage, USAGE_PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    if grant_form is None and request.user.has_perm(MANAGE_ADAPTERS):
        grant_form = GrantTenantForm(adapter=adapter)
    context = {
        "adapter": adapter,
        "grants": adapter_reads.grants_of_adapter(adapter),
        "grant_form": grant_form,
        "page": page,
        "query": query.urlencode(),
        "usage_total": adapter_reads.usage_total(usage),
        **window_context(win),
    }
    failed = grant_form is not None and grant_form.is_bound and bool(grant_form.errors)
    return render(request, "console/adapter.html", context, status=400 if failed else 200)


@require_GET
@console_permission_required(*READ_ADAPTER)
def adapter_detail(request: HttpRequest, name: str) -> HttpResponse:
    return adapter_page(request, get_object_or_404(Adapter, name=name))


@require_POST
@console_permission_required(*READ_ADAPTER, MANAGE_ADAPTERS)
def adapter_grant_view(request: HttpRequest, name: str) -> HttpResponse:
    adapter = get_object_or_404(Adapter, name=name)
    form = GrantTenantForm(request.POST, adapter=adapter)
    if form.is_valid():
        tenant = form.cleaned_data["tenant"]
        try:
            adapter_grant(adapter=adapter, tenant=tenant, actor=actor_of(request))
        except AdapterRefused as exc:
            form.add_error("tenant", refusal(exc))
        else:
            messages.success(request, _granted(adapter, tenant))
            return redirect("console:adapter", name=adapter.name)
    return adapter_page(request, adapter, grant_form=form)


def _granted(adapter: Adapter, tenant: Tenant) -> str:
    return (
        f"{tenant.slug} may now use “{adapter.name}” as its model; every worker applies the "
        "grant within about a second."
    )


@require_POST
@console_permission_required(*READ_ADAPTER, MANAGE_ADAPTERS)
def adapter_revoke_view(request: HttpRequest, name: str, slug: str) -> HttpResponse:
    """Revoke from either page: `back=tenant` returns to the tenant's page."""
    adapter = get_object_or_404(Adapter, name=name)
    tenant = get_object_or_404(Tenant, slug=slug)
    try:
        adapter_revoke(adapter=adapter, tenant=tenant, actor=actor_of(request))
    except AdapterRefused as exc:
        messages.error(request, refusal(exc))
    else:
        messages.success(
            request,
            f"{slug} may no longer use “{name}”: within about a second its requests for it get "
            "404 model_not_found, on open WebSockets too.",
        )
    if request.POST.get("back") == "tenant":
        return redirect("console:tenant", slug=slug)
    return redirect("console:adapter", name=name)


@require_http_methods(["GET", "POST"])
@console_permission_required(*READ_ADAPTER, MANAGE_ADAPTERS)
def adapter_remove_view(request: HttpRequest, name: str) -> HttpResponse:
    adapter = get_object_or_404(Adapter, name=name)
    form = RemoveAdapterForm(request.POST or None, adapter=adapter)
    if request.method == "POST" and form.is_valid():
        try:
            adapter_remove(adapter=adapter, actor=actor_of(request))
        except AdapterRefused as exc:
            messages.error(request, refusal(exc))
            return redirect("console:adapter", name=name)
        messages.success(
            request,
            f"Adapter “{name}” removed: its running requests finish, new ones get 404 "
            "model_not_found; its usage is kept under its name.",
        )
        return redirect("console:adapters")
    context = {"adapter": adapter, "form": form, "tenant_count": adapter.grants.count()}
    return render(
        request, "console/adapter_remove.html", context, status=400 if form.errors else 200
    )


@require_POST
@console_permission_required(*READ_TENANT, *READ_ADAPTER, MANAGE_ADAPTERS)
def tenant_adapter_grant(request: HttpRequest, slug: str) -> HttpResponse:
    """Grant from the tenant's page: the adapter chosen by name."""
    tenant = get_object_or_404(Tenant, slug=slug)
    form = GrantAdapterForm(request.POST, tenant=tenant)
    if form.is_valid():
        adapter = form.cleaned_data["adapter"]
        try:
            adapter_grant(adapter=adapter, tenant=tenant, actor=actor_of(request))
        except AdapterRefused as exc:
            form.add_error("adapter", refusal(exc))
        else:
            messages.success(request, _granted(adapter, tenant))
            return redirect("console:tenant", slug=slug)
    return tenant_page(request, tenant, adapter_form=form)
