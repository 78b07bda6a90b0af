"""Who may use the console, and the headers every console page carries."""

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.cache import patch_cache_control

# Only our own static files run or style the pages: no inline script, no CDN, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

View = Callable[..., HttpResponse]


def is_console_user(user: object) -> bool:
    """Active staff accounts may use the console (the Django admin requires the same)."""
    return bool(getattr(user, "is_active", False) and getattr(user, "is_staff", False))


def console_headers(response: HttpResponse) -> HttpResponse:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    # Pages show tenant data: never kept by a shared cache.
    patch_cache_control(response, private=True)
    return response


def staff_required(view: View) -> View:
    """Anonymous visitors go to the console login; signed-in non-staff users get 403."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), reverse("console:login"))
        if not is_console_user(request.user):
            raise PermissionDenied("This account has no console access.")
        return console_headers(view(request, *args, **kwargs))

    return wrapped


def actor_of(request: HttpRequest) -> str:
    """The audit trail's name for the signed-in console user."""
    return f"console:{request.user.get_username()}"
