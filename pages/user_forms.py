"""Forms of the Users page. They validate and explain; the writes happen in pages/users.py."""

from typing import Any

from django import forms
from django.contrib.auth import get_user_model, password_validation

from pages.users import ROLES, USERNAME_MAX

ROLE_CHOICES = [(role, role) for role in reversed(ROLES)]
ROLE_HELP = (
    "Viewer reads everything and changes nothing; Operator also issues, rotates and revokes "
    "keys and sets limits; Administrator also creates tenants and manages console users."
)


class UserAddForm(forms.Form):
    """A new console account: its name, role and first password."""

    username = forms.CharField(
        max_length=USERNAME_MAX,
        validators=[get_user_model().username_validator],
        help_text="Letters, digits and @ . + - _ only.",
    )
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial="Viewer", help_text=ROLE_HELP)
    password1 = forms.CharField(
        label="Password",
        strip=False,
        required=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="At least 8 characters, not a common one, not only digits. Leave both empty "
        "to get a one-time link where the user sets their own.",
    )
    password2 = forms.CharField(
        label="Password again",
        strip=False,
        required=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        first, second = data.get("password1"), data.get("password2")
        if (first or second) and first != second:
            self.add_error("password2", "The two passwords differ.")
        elif first:
            user = get_user_model()(username=data.get("username", ""))
            try:
                password_validation.validate_password(first, user)
            except forms.ValidationError as exc:
                self.add_error("password1", exc)
        return data


class RoleForm(forms.Form):
    """A console account's new role."""

    role = forms.ChoiceField(choices=ROLE_CHOICES)


class ActiveForm(forms.Form):
    """Deactivate (active=0) or reactivate (active=1) a console account."""

    active = forms.TypedChoiceField(choices=[("0", "0"), ("1", "1")], coerce=lambda v: v == "1")
