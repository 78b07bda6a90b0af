"""Console sign-in and sign-out, on Django's auth; only active staff accounts get in.

Attempts are limited per client address, per (username, address) pair and, as a ceiling that
slows rather than locks, per username, by the rate limiter's own Lua (ratelimit/login.py): an
attacker elsewhere cannot lock an admin out. The admin's login URL leads here too.
"""

import math

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import login, logout
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from core.clientaddr import client_ip
from pages.access import console_headers, is_console_user
from pages.users import sign_in_record
from ratelimit.login import check_login_sync


class ConsoleLoginForm(AdminAuthenticationForm):
    """Django's admin login form: refuses inactive and non-staff accounts with one message."""


def _next_url(request: HttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    safe = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if safe else reverse("console:overview")


@sensitive_post_parameters("password")
@never_cache
@csrf_protect
@require_http_methods(["GET", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    if request.method == "GET" and is_console_user(request.user):
        return redirect(_next_url(request))
    form = ConsoleLoginForm(request, data=request.POST if request.method == "POST" else None)
    if request.method == "POST":
        # Counted before the password is checked, so guessing costs attempts either way.
        refused = _throttled(request, form)
        if refused is not None:
            return refused
    if request.method == "POST":
        signed_in = form.is_valid()
        # The name as typed (not the password): a failed attempt has no account to name.
        sign_in_record(
            username=request.POST.get("username", ""),
            address=client_ip(request),
            succeeded=signed_in,
        )
        if signed_in:
            login(request, form.get_user())
            return redirect(_next_url(request))
    context = {"form": form, "next": _next_url(request)}
    status = 400 if form.is_bound else 200
    return console_headers(render(request, "console/login.html", context, status=status))


def _throttled(request: HttpRequest, form: ConsoleLoginForm) -> HttpResponse | None:
    """A 429 page when this address (or this username from it) has used up its attempts."""
    username = request.POST.get("username", "")
    decision = check_login_sync(address=client_ip(request), username=username)
    if decision.allowed:
        return None
    wait = max(1, math.ceil(decision.retry_after))
    form.add_error(None, f"Too many sign-in attempts. Try again in {wait} seconds.")
    context = {"form": form, "next": _next_url(request)}
    response = render(request, "console/login.html", context, status=429)
    response["Retry-After"] = str(wait)
    return console_headers(response)


def admin_login_redirect(request: HttpRequest) -> HttpResponse:
    """The admin's own login form is replaced by this one, so every sign-in is throttled."""
    query = request.GET.urlencode()
    return redirect(reverse("console:login") + (f"?{query}" if query else ""))


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return redirect("console:login")
