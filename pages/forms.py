"""Console forms. They validate and explain; the writes happen in tenants.services."""

import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator

from pages.selectors import ThrottleFilter
from tenants.durations import parse_duration
from tenants.models import LIMIT_FIELDS, MAX_WEIGHT, SCOPES, AdminAction, ApiKey, Tenant
from tenants.presets import LIMIT_PRESETS, PRESET_NAMES
from tenants.services import SLUG_PATTERN, TENANT_SETTINGS

# Larger limits are certainly typos, and would overflow the limiter's arithmetic.
MAX_LIMIT = 10**12
MAX_GRACE = timedelta(days=30)
# A new value under this share of the old one is a cut the admin confirms on a second page.
CUT_CONFIRM_BELOW = 0.5
# Plain ASCII digits (a minus sign reaches the range check): int() alone would take "1_000",
# " 10 " or Arabic-Indic digits, and a browser's number input drops what it cannot parse.
WHOLE_NUMBER = re.compile(r"-?[0-9]+")

LIMIT_LABELS = {
    "rpm": "Requests per minute",
    "tpm": "Tokens per minute",
    "max_inflight": "Max in-flight requests",
    "tokens_per_day": "Tokens per day",
    "tokens_per_month": "Tokens per month",
}

EXPIRY_CHOICES = [
    ("", "Never"),
    ("1d", "1 day"),
    ("7d", "7 days"),
    ("30d", "30 days"),
    ("90d", "90 days"),
    ("365d", "1 year"),
]
GRACE_CHOICES = [
    ("0", "None: the old token stops at once"),
    ("5m", "5 minutes"),
    ("1h", "1 hour"),
    ("1d", "1 day"),
    ("7d", "7 days"),
    ("custom", "Custom…"),
]


class WholeNumberField(forms.IntegerField):
    """An integer typed as plain digits; anything else ("10k", "1,000", "5 000", "1e3", "10.0")
    is an error that quotes what was typed, never a number guessed from part of it.

    The widget is a text input (inputmode numeric): a browser's number input would drop the
    characters it cannot parse ("10k" arrives as "10", "1,000" as empty: no limit)."""

    widget = forms.TextInput

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        label = self.label or "This field"
        self.error_messages.setdefault(
            "not_digits",
            f"“%(value)s” is not a whole number: {label} takes digits only "
            "(10000, not 10k, 10,000, 10 000 or 1e4). Nothing was saved.",
        )

    def widget_attrs(self, widget: forms.Widget) -> dict[str, Any]:
        return {
            **super().widget_attrs(widget),
            "inputmode": "numeric",
            "autocomplete": "off",
            "spellcheck": "false",
        }

    def to_python(self, value: Any) -> int | None:
        if value in self.empty_values:
            return None
        text = str(value).strip()
        # Digits with anything else is a number that would lose characters; text without a
        # digit ("lots") gets the field's own message.
        if any(c.isdigit() for c in text) and not WHOLE_NUMBER.fullmatch(text):
            raise ValidationError(
                self.error_messages["not_digits"], code="not_digits", params={"value": text[:40]}
            )
        return super().to_python(text)


def _limit_field(name: str) -> forms.IntegerField:
    label = LIMIT_LABELS[name]
    message = f"{label} must be a whole number from 1 to {MAX_LIMIT:,}, or empty for no limit."
    return WholeNumberField(
        label=label,
        required=False,
        min_value=1,
        max_value=MAX_LIMIT,
        help_text="Empty: no limit.",
        error_messages={"invalid": message, "min_value": message, "max_value": message},
        widget=forms.TextInput(attrs={"placeholder": "no limit"}),
    )


@dataclass(frozen=True)
class LimitChange:
    """One changed setting, as the confirmation page and the saved message show it."""

    name: str
    label: str
    before: int | None
    after: int | None

    @property
    def is_big_cut(self) -> bool:
        """A cut to less than half: what an extra zero dropped or a wrong field does."""
        if self.name not in LIMIT_FIELDS or self.before is None or self.after is None:
            return False  # a weight or burst is not a limit; adding or removing one is no cut
        return self.after < self.before * CUT_CONFIRM_BELOW

    @property
    def cut_percent(self) -> int:
        if not self.before or self.after is None:
            return 0
        return round(100 * (self.before - self.after) / self.before)

    def describe(self) -> str:
        before = "no limit" if self.before is None else self.before
        after = "no limit" if self.after is None else self.after
        return f"{self.name} {before} → {after}"


class LimitsForm(forms.Form):
    """A tenant's limits; empty means unlimited at the tenant scope."""

    rpm = _limit_field("rpm")
    tpm = _limit_field("tpm")
    max_inflight = _limit_field("max_inflight")
    tokens_per_day = _limit_field("tokens_per_day")
    tokens_per_month = _limit_field("tokens_per_month")
    burst_percent = WholeNumberField(
        label="Burst percent",
        min_value=1,
        max_value=100,
        initial=20,
        help_text="Share of the per-minute limits that may arrive at once (1-100).",
        error_messages={
            "required": "Burst percent is required (1-100).",
            "invalid": "Burst percent must be a whole number from 1 to 100.",
            "min_value": "Burst percent must be a whole number from 1 to 100.",
            "max_value": "Burst percent must be a whole number from 1 to 100.",
        },
    )
    scheduling_weight = WholeNumberField(
        label="Scheduling weight",
        required=False,
        min_value=1,
        max_value=MAX_WEIGHT,
        initial=1,
        help_text="Share of the model while tenants wait for it together: weight 2 is served "
        "twice the tokens of weight 1. Empty: 1.",
        error_messages={
            key: f"Scheduling weight must be a whole number from 1 to {MAX_WEIGHT:,}."
            for key in ("invalid", "min_value", "max_value")
        },
    )

    @classmethod
    def for_tenant(cls, tenant: Tenant, data: Mapping[str, Any] | None = None) -> "LimitsForm":
        return cls(data, initial={name: getattr(tenant, name) for name in TENANT_SETTINGS})

    def clean_scheduling_weight(self) -> int:
        # Empty is the default weight, never "none": every tenant has a share.
        weight: int | None = self.cleaned_data["scheduling_weight"]
        return 1 if weight is None else weight

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        day, month = data.get("tokens_per_day"), data.get("tokens_per_month")
        if day and month and day > month:
            self.add_error("tokens_per_day", "Tokens per day cannot be more than tokens per month.")
        return data

    def settings(self) -> dict[str, int | None]:
        return {name: self.cleaned_data[name] for name in TENANT_SETTINGS}

    def changes(self, tenant: Tenant) -> dict[str, int | None]:
        """Only the settings that differ from the tenant's current ones."""
        return {k: v for k, v in self.settings().items() if getattr(tenant, k) != v}

    def review(self, tenant: Tenant) -> list[LimitChange]:
        """The changed settings with their values before and after."""
        return [
            LimitChange(name, str(self.fields[name].label), getattr(tenant, name), value)
            for name, value in self.changes(tenant).items()
        ]


def confirmation_token(tenant: Tenant, changes: Mapping[str, int | None]) -> str:
    """What the confirm button posts back: a digest of the tenant's settings as the admin saw
    them and of the change, so a confirmation applies only that change to that state (if
    someone changed the tenant meanwhile, the admin is asked again)."""
    seen = {name: getattr(tenant, name) for name in TENANT_SETTINGS}
    payload = json.dumps([tenant.pk, seen, dict(changes)], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class TenantCreateForm(LimitsForm):
    """A new tenant: its slug, display name and starting limits."""

    slug = forms.CharField(
        max_length=64,
        validators=[
            RegexValidator(
                SLUG_PATTERN,
                "Use 1-64 lowercase letters, digits or hyphens, starting with a letter or digit.",
            )
        ],
        help_text="Lowercase letters, digits and hyphens; used in URLs and metrics.",
        error_messages={"required": "A slug is required."},
    )
    name = forms.CharField(max_length=200, required=False, help_text="Display name.")
    field_order = ["slug", "name", *TENANT_SETTINGS]

    def clean_slug(self) -> str:
        slug = self.cleaned_data["slug"]
        if Tenant.objects.filter(slug=slug).exists():
            raise forms.ValidationError(f"A tenant with the slug “{slug}” already exists.")
        return slug


class OnceForm(forms.Form):
    """A form carrying a one-time value, so a re-posted form (a reload) acts only once."""

    once = forms.CharField(widget=forms.HiddenInput, max_length=64)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.initial.setdefault("once", secrets.token_urlsafe(24))


class IssueKeyForm(OnceForm):
    """A new key for a tenant."""

    name = forms.CharField(
        max_length=200, required=False, help_text="What the key is for, e.g. “backend”."
    )
    expires_in = forms.ChoiceField(label="Expires", choices=EXPIRY_CHOICES, required=False)
    scopes = forms.MultipleChoiceField(
        choices=[(s, s) for s in SCOPES],
        initial=list(SCOPES),
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Pick at least one scope."},
    )

    def expiry(self) -> timedelta | None:
        raw = self.cleaned_data["expires_in"]
        return parse_duration(raw) if raw else None


class RotateKeyForm(OnceForm):
    """A new secret for a key, with how long the old one keeps working."""

    grace = forms.ChoiceField(
        label="Grace period", choices=GRACE_CHOICES, initial="1h", widget=forms.RadioSelect
    )
    custom_grace = forms.CharField(
        label="Custom grace",
        max_length=20,
        required=False,
        help_text="With “Custom…”: e.g. 30s, 15m, 12h, 3d (at most 30d).",
    )

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        choice = data.get("grace")
        if choice is None:
            return data
        raw = data.get("custom_grace", "").strip() if choice == "custom" else choice
        if not raw:
            self.add_error("custom_grace", "Enter a custom grace such as 30s, 15m or 12h.")
            return data
        try:
            data["grace_delta"] = parse_duration(raw)
        except ValueError:
            self.add_error("custom_grace", f"“{raw}” is not a duration: use e.g. 30s, 15m, 12h.")
            return data
        if data["grace_delta"] > MAX_GRACE:
            self.add_error("custom_grace", "A grace period can be at most 30 days.")
        return data


class RevokeKeyForm(forms.Form):
    """The confirmation of a revocation: the admin types the key id."""

    confirm = forms.CharField(
        label="Type the key id to confirm",
        max_length=32,
        error_messages={"required": "Type the key id to confirm."},
    )

    def __init__(self, *args: Any, api_key: ApiKey, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.api_key = api_key

    def clean_confirm(self) -> str:
        typed = self.cleaned_data["confirm"].strip()
        if typed != self.api_key.key_id:
            raise forms.ValidationError("That is not this key's id; nothing was revoked.")
        return typed


class ThrottleFilterForm(forms.Form):
    """Filters of a tenant's 429 audit (all optional; dates are whole UTC days)."""

    key = forms.ChoiceField(required=False)
    reason = forms.ChoiceField(required=False)
    since = forms.DateField(
        label="From", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        label="To", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )

    def __init__(self, *args: Any, tenant: Tenant, reasons: list[str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        keys = tenant.keys.order_by("key_id").values_list("key_id", "name")
        key_field, reason_field = self.fields["key"], self.fields["reason"]
        # Copies of the ChoiceFields declared above; self.fields types them as any Field.
        assert isinstance(key_field, forms.ChoiceField)
        assert isinstance(reason_field, forms.ChoiceField)
        key_field.choices = [("", "All keys")] + [
            (key_id, f"{key_id} {name}".strip()) for key_id, name in keys
        ]
        reason_field.choices = [("", "All reasons")] + [(r, r) for r in reasons]

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            self.add_error("until", "“To” must be on or after “From”.")
        return data

    def filters(self) -> ThrottleFilter:
        if not self.is_valid():
            return ThrottleFilter()
        data = self.cleaned_data
        return ThrottleFilter(
            key_id=data["key"] or None,
            reason=data["reason"] or None,
            since=data["since"],
            until=data["until"],
        )


class AuditFilterForm(forms.Form):
    """Filters of the admin-action audit log."""

    tenant = forms.CharField(max_length=64, required=False)
    action = forms.ChoiceField(
        choices=[("", "All actions"), *AdminAction.Action.choices], required=False
    )
    actor = forms.CharField(max_length=200, required=False)


def preset_initial(name: str | None, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Form initial values: `base` (a tenant's settings) with a preset's limits over it; an
    unknown or empty name leaves `base` as it is."""
    initial = dict(base or {})
    if name is not None and name in LIMIT_PRESETS:
        initial.update(LIMIT_PRESETS[name])
    return initial


class PresetForm(forms.Form):
    """The limit preset a create or limits form starts from (a GET: nothing is saved)."""

    preset = forms.ChoiceField(
        choices=[(name, name) for name in PRESET_NAMES],
        required=False,
        help_text="Fills the form with the preset's limits; review them, then save.",
    )


class TenantRenameForm(forms.Form):
    """A tenant's new display name (the slug never changes)."""

    name = forms.CharField(
        max_length=200,
        strip=True,
        help_text="Display name only: the slug stays, and with it URLs, metrics and keys.",
        error_messages={
            "required": "A name is required.",
            "max_length": "A name is at most 200 characters.",
        },
    )


class SuspendTenantForm(forms.Form):
    """The confirmation of a suspension: the admin types the slug, and may give a reason."""

    confirm = forms.CharField(
        label="Type the tenant's slug to confirm",
        max_length=64,
        error_messages={"required": "Type the tenant's slug to confirm."},
    )
    reason = forms.CharField(
        max_length=200, required=False, help_text="Kept in the audit log, e.g. “unpaid invoice”."
    )

    def __init__(self, *args: Any, tenant: Tenant, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tenant = tenant

    def clean_confirm(self) -> str:
        typed = self.cleaned_data["confirm"].strip()
        if typed != self.tenant.slug:
            raise forms.ValidationError("That is not this tenant's slug; nothing was suspended.")
        return typed


class KeyLimitsForm(forms.Form):
    """One key's own limits, checked together with its tenant's; empty: none at key scope."""

    rpm = _limit_field("rpm")
    tpm = _limit_field("tpm")
    max_inflight = _limit_field("max_inflight")
    tokens_per_day = _limit_field("tokens_per_day")
    tokens_per_month = _limit_field("tokens_per_month")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.help_text = "Empty: only the tenant's limit applies."
            field.widget.attrs["placeholder"] = "tenant's"

    @classmethod
    def for_key(cls, key: ApiKey, data: Mapping[str, Any] | None = None) -> "KeyLimitsForm":
        return cls(data, initial=key.limit_overrides())

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        day, month = data.get("tokens_per_day"), data.get("tokens_per_month")
        if day and month and day > month:
            self.add_error("tokens_per_day", "Tokens per day cannot be more than tokens per month.")
        return data

    def changes(self, key: ApiKey) -> dict[str, int | None]:
        """Only the limits that differ from the key's current ones."""
        return {
            name: self.cleaned_data[name]
            for name in LIMIT_FIELDS
            if getattr(key, name) != self.cleaned_data[name]
        }
