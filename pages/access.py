"""Who may use the console, and the headers every console page carries.

Every console view needs an active staff account AND the Django permissions of the tenants app
for what it shows (view_*) and what it does (add/change_*), as the Django admin would: staff
status alone is only the door. Superusers hold every permission. The map of views to
permissions is written once, here, and in docs/console.md.
"""

from collections.abc import Callable, Iterable
from functools import wraps
from typing import TypeVar

from django.contrib.auth.models import Permission
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import render
from django.urls import reverse
from django.utils.cache import patch_cache_control

# Only our own static files run or style the pages: no inline script, no CDN, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

View = Callable[..., HttpResponseBase]
R = TypeVar("R", bound=HttpResponseBase)

VIEW_TENANT = "tenants.view_tenant"
VIEW_APIKEY = "tenants.view_apikey"
VIEW_USAGE = "tenants.view_usageminute"
VIEW_THROTTLES = "tenants.view_throttleevent"
VIEW_ACTIONS = "tenants.view_adminaction"
ADD_TENANT = "tenants.add_tenant"
CHANGE_TENANT = "tenants.change_tenant"  # limits
ADD_APIKEY = "tenants.add_apikey"  # issue
# Rotate and revoke: revoking stamps revoked_at and keeps the row (its usage and audit stay),
# so it is a change, as for the Django admin's revoke action (pages/admin.py).
CHANGE_APIKEY = "tenants.change_apikey"
# The Users page, reading and writing (Administrator). Not auth.change_user: with that, the
# Django admin would let an account edit any user, superusers and itself included.
MANAGE_USERS = "tenants.manage_console_users"
# Renaming, suspending and resuming a tenant: the Administrator's (tenants), not the Operator's
# (keys and limits), who has change_tenant for the limits form.
LIFECYCLE = (CHANGE_TENANT, ADD_TENANT)

# Reading a page needs the view permission of every model whose rows or figures it shows.
READ_OVERVIEW = (VIEW_TENANT, VIEW_APIKEY, VIEW_USAGE, VIEW_THROTTLES)
READ_TENANTS = READ_OVERVIEW
READ_TENANT = (*READ_OVERVIEW, VIEW_ACTIONS)
READ_THROTTLES = (VIEW_TENANT, VIEW_APIKEY, VIEW_THROTTLES)
READ_AUDIT = (VIEW_ACTIONS,)
READ_KEY = (VIEW_TENANT, VIEW_APIKEY)
# The usage CSV (per day and key, with 429s): what the overview shows, as a file.
EXPORT_USAGE = READ_OVERVIEW

# LoRA adapters served by name (tenants/adapters.py): every role reads them; registering,
# removing, granting and revoking are the Administrator's (manage_adapters).
VIEW_ADAPTER = "tenants.view_adapter"
VIEW_ADAPTER_GRANT = "tenants.view_adaptergrant"
VIEW_ADAPTER_USAGE = "tenants.view_adapterusageday"
MANAGE_ADAPTERS = "tenants.manage_adapters"
# The Adapters page lists each adapter with how many tenants hold it.
READ_ADAPTERS = (VIEW_ADAPTER, VIEW_ADAPTER_GRANT)
# An adapter's page: its grants (tenants by slug) and its usage per day and tenant.
READ_ADAPTER = (*READ_ADAPTERS, VIEW_TENANT, VIEW_ADAPTER_USAGE)


def is_console_user(user: object) -> bool:
    """Active staff accounts may sign in to the console (the Django admin requires the same)."""
    return bool(getattr(user, "is_active", False) and getattr(user, "is_staff", False))


def console_headers(response: R) -> R:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    # Pages show tenant data: never kept by a shared cache.
    patch_cache_control(response, private=True)
    return response


def permission_labels(perms: Iterable[str]) -> list[str]:
    """'tenants.add_apikey (Can add api key)' for each permission, in the order given."""
    perms = list(perms)
    names = {
        f"{app}.{codename}": name
        for app, codename, name in Permission.objects.filter(
            codename__in=[p.split(".", 1)[1] for p in perms]
        ).values_list("content_type__app_label", "codename", "name")
    }
    return [f"{p} ({names[p]})" if p in names else p for p in perms]


def forbidden(request: HttpRequest, missing: list[str]) -> HttpResponse:
    """The console's 403 page, naming every permission the account lacks."""
    context = {"missing": permission_labels(missing)}
    return render(request, "console/forbidden.html", context, status=403)


def console_permission_required(*perms: str, post: tuple[str, ...] = ()) -> Callable[[View], View]:
    """Anonymous visitors go to the console login; signed-in non-staff users get Django's 403;
    staff lacking one of `perms` (or, on a POST, of `post`) get the console's 403 page, before
    the view runs, so a refused POST changes and audits nothing."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponseBase:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path(), reverse("console:login"))
            if not is_console_user(request.user):
                raise PermissionDenied("This account has no console access.")
            needed = perms + (post if request.method == "POST" else ())
            missing = [p for p in dict.fromkeys(needed) if not request.user.has_perm(p)]
            if missing:
                return console_headers(forbidden(request, missing))
            return console_headers(view(request, *args, **kwargs))

        return wrapped

    return decorate


def actor_of(request: HttpRequest) -> str:
    """The audit trail's name for the signed-in console user."""
    return f"console:{request.user.get_username()}"
