"""Console sign-in and sign-out, on Django's auth; only active staff accounts get in."""

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

from console.access import console_headers, is_console_user


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
    # Login-attempt limiting (per client address and per username, on the rate limiter's Lua)
    # plugs in here, before the password is checked, once the ratelimit branch is merged: one
    # call, ratelimit.login.check_login_sync(address=request_address(request), username=...),
    # answering 429 with Retry-After when the decision is not allowed.
    if request.method == "POST" and form.is_valid():
        login(request, form.get_user())
        return redirect(_next_url(request))
    context = {"form": form, "next": _next_url(request)}
    status = 400 if form.is_bound else 200
    return console_headers(render(request, "console/login.html", context, status=status))


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return redirect("console:login")
