"""The Users page (/console/users/): an Administrator adds console accounts, sets their role and
deactivates them. Every view needs tenants.manage_console_users; the writes are pages/users.py."""

from typing import Any, cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.forms import SetPasswordForm
from django.contrib.auth.models import User
from django.contrib.auth.views import PasswordResetConfirmView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.cache import add_never_cache_headers
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from pages.access import MANAGE_USERS, console_headers, console_permission_required
from pages.user_forms import ActiveForm, RoleForm, UserAddForm
from pages.users import (
    UserError,
    console_users,
    password_link_token,
    password_set_record,
    role_of,
    user_add,
    user_set_active,
    user_set_role,
)


@sensitive_post_parameters("password1", "password2")
@require_http_methods(["GET", "POST"])
@console_permission_required(MANAGE_USERS)
def user_list(request: HttpRequest) -> HttpResponse:
    form = UserAddForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            user = user_add(
                username=data["username"],
                role=data["role"],
                password=data["password1"] or None,
                acting_user=_acting(request),
            )
        except UserError as exc:
            form.add_error("username", str(exc))
        else:
            if not data["password1"]:
                return _link_page(request, user)
            messages.success(request, f"Console user “{user.get_username()}” added.")
            return redirect("console:users")
    users = [(user, role_of(user)) for user in console_users()]
    context = {"users": users, "form": form, "role_form": RoleForm()}
    return render(request, "console/users.html", context, status=400 if form.errors else 200)


def _account(user_id: int) -> User:
    return get_object_or_404(User, pk=user_id, is_staff=True)


def _acting(request: HttpRequest) -> User:
    # console_permission_required lets only signed-in staff reach the views.
    assert isinstance(request.user, User)
    return request.user


@require_POST
@console_permission_required(MANAGE_USERS)
def user_role(request: HttpRequest, user_id: int) -> HttpResponse:
    user, form = _account(user_id), RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Pick one of the roles.")
        return redirect("console:users")
    role = form.cleaned_data["role"]
    try:
        changed = user_set_role(user=user, role=role, acting_user=_acting(request))
    except UserError as exc:
        messages.error(request, str(exc))
    else:
        name = user.get_username()
        messages.success(request, f"“{name}” is now {role}." if changed else "Nothing changed.")
    return redirect("console:users")


@require_POST
@console_permission_required(MANAGE_USERS)
def user_active(request: HttpRequest, user_id: int) -> HttpResponse:
    user, form = _account(user_id), ActiveForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Say whether the account is to be active.")
        return redirect("console:users")
    active = form.cleaned_data["active"]
    try:
        changed = user_set_active(user=user, active=active, acting_user=_acting(request))
    except UserError as exc:
        messages.error(request, str(exc))
    else:
        state = "reactivated" if active else "deactivated"
        name = user.get_username()
        messages.success(request, f"“{name}” {state}." if changed else "Nothing changed.")
    return redirect("console:users")


def _link_page(request: HttpRequest, user: User) -> HttpResponse:
    """The one-time set-password link, shown on the page that answers the POST only (never in a
    message, the session or a redirect), as a new API token is."""
    token = password_link_token(user=user, acting_user=_acting(request))
    path = reverse(
        "console:set-password",
        kwargs={"uidb64": urlsafe_base64_encode(force_bytes(user.pk)), "token": token},
    )
    days = settings.PASSWORD_RESET_TIMEOUT // 86400
    context = {"account": user, "link": request.build_absolute_uri(path), "days": days}
    response = render(request, "console/password_link.html", context)
    add_never_cache_headers(response)
    return response


@require_POST
@console_permission_required(MANAGE_USERS)
def user_password_link(request: HttpRequest, user_id: int) -> HttpResponse:
    user = _account(user_id)
    try:
        return _link_page(request, user)
    except UserError as exc:
        messages.error(request, str(exc))
        return redirect("console:users")


class SetPasswordView(PasswordResetConfirmView):
    """Where a console user sets their password by the one-time link (no sign-in needed).
    Django's view moves the token from the URL into the session before showing the form, so it
    never sits in a Referer; setting the password spends it."""

    template_name = "console/set_password.html"
    success_url = reverse_lazy("console:login")

    def dispatch(self, *args: Any, **kwargs: Any) -> HttpResponse:
        # Every answer of this view is an HttpResponse (a page or a redirect).
        return console_headers(cast(HttpResponse, super().dispatch(*args, **kwargs)))

    def form_valid(self, form: SetPasswordForm) -> HttpResponse:
        response = super().form_valid(form)
        password_set_record(user=form.user)
        messages.success(self.request, "Password set. Sign in with it.")
        return response
