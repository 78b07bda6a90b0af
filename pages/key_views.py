"""Key pages: issue, rotate (both show the token once) and revoke (with a confirmation).

The token exists only in the response to the POST that created it: it is never put in the
session, a message, a redirect or a log, and that response is marked no-store. Each form carries
a one-time value, so reloading the token page (a re-POST) shows no token and changes nothing."""

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_http_methods, require_POST

from pages.access import (
    ADD_APIKEY,
    CHANGE_APIKEY,
    READ_KEY,
    READ_TENANT,
    actor_of,
    console_permission_required,
)
from pages.forms import GRACE_CHOICES, IssueKeyForm, RevokeKeyForm, RotateKeyForm
from pages.services import submission_claim
from pages.views import tenant_page
from tenants.durations import format_duration
from tenants.models import ApiKey, Tenant
from tenants.services import (
    IssuedKey,
    TenantError,
    api_key_issue,
    api_key_revoke,
    api_key_rotate,
)

ALREADY_USED = (
    "This form was already submitted, so nothing was done again. A token is shown only once: "
    "if it was not copied, rotate the key to get a new one."
)


def _key(slug: str, key_id: str) -> ApiKey:
    return get_object_or_404(
        ApiKey.objects.select_related("tenant"), tenant__slug=slug, key_id=key_id
    )


@sensitive_variables("issued")
def _token_page(request: HttpRequest, issued: IssuedKey, *, what: str, note: str) -> HttpResponse:
    context = {"key": issued.api_key, "tenant": issued.api_key.tenant, "token": issued.token}
    context.update(what=what, note=note)
    return render(request, "console/token.html", context)


@never_cache
@require_POST
@console_permission_required(*READ_TENANT, ADD_APIKEY)
@sensitive_variables("issued")
def key_issue(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = get_object_or_404(Tenant, slug=slug)
    form = IssueKeyForm(request.POST)
    if not form.is_valid():
        return tenant_page(request, tenant, issue_form=form)
    if not submission_claim(once=form.cleaned_data["once"]):
        messages.warning(request, ALREADY_USED)
        return redirect("console:tenant", slug=tenant.slug)
    data = form.cleaned_data
    try:
        issued = api_key_issue(
            tenant=tenant,
            name=data["name"],
            expires_in=form.expiry(),
            scopes=data["scopes"],
            actor=actor_of(request),
        )
    except TenantError as exc:
        messages.error(request, str(exc))
        return redirect("console:tenant", slug=tenant.slug)
    return _token_page(request, issued, what="issued", note="")


@never_cache
@require_http_methods(["GET", "POST"])
@console_permission_required(*READ_KEY, CHANGE_APIKEY)
@sensitive_variables("issued")
def key_rotate(request: HttpRequest, slug: str, key_id: str) -> HttpResponse:
    key = _key(slug, key_id)
    form = RotateKeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        if not submission_claim(once=form.cleaned_data["once"]):
            messages.warning(request, ALREADY_USED)
            return redirect("console:tenant", slug=slug)
        grace = form.cleaned_data["grace_delta"]
        try:
            issued = api_key_rotate(api_key=key, grace=grace, actor=actor_of(request))
        except TenantError as exc:
            messages.error(request, str(exc))
            return redirect("console:tenant", slug=slug)
        note = (
            f"The old token keeps working for {format_duration(grace)}."
            if grace.total_seconds() > 0
            else "The old token stopped working now."
        )
        return _token_page(request, issued, what="rotated", note=note)
    context = {"key": key, "tenant": key.tenant, "form": form, "choices": GRACE_CHOICES}
    return render(request, "console/rotate.html", context, status=400 if form.errors else 200)


@require_http_methods(["GET", "POST"])
@console_permission_required(*READ_KEY, CHANGE_APIKEY)
def key_revoke(request: HttpRequest, slug: str, key_id: str) -> HttpResponse:
    key = _key(slug, key_id)
    form = RevokeKeyForm(request.POST or None, api_key=key)
    if request.method == "POST" and form.is_valid():
        try:
            api_key_revoke(api_key=key, actor=actor_of(request))
        except TenantError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Key {key.key_id} revoked; it stops working everywhere now.")
        return redirect("console:tenant", slug=slug)
    context = {"key": key, "tenant": key.tenant, "form": form}
    return render(request, "console/revoke.html", context, status=400 if form.errors else 200)
