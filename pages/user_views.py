"""The Users page (/console/users/): an Administrator adds console accounts, sets their role and
deactivates them. Every view needs tenants.manage_console_users; the writes are pages/users.py."""

from django.contrib import messages
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from pages.access import MANAGE_USERS, console_permission_required
from pages.user_forms import ActiveForm, RoleForm, UserAddForm
from pages.users import (
    UserError,
    console_users,
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
                password=data["password1"],
                acting_user=_acting(request),
            )
        except UserError as exc:
            form.add_error("username", str(exc))
        else:
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
