"""Console forms of the LoRA adapters: register one from a folder, grant it to a tenant (from
either side), remove it. They check what a form can; tenants.adapters validates the folder and
refuses the rest (AdapterRefused), and the views put its message on the field it is about."""

from pathlib import PurePosixPath
from typing import Any

from django import forms

from tenants.adapters import NAME_PATTERN
from tenants.models import Adapter, Tenant

NAME_HELP = (
    "What clients send as “model”: lowercase letters, digits, “.”, “_” and “-”, "
    "at most 64, starting with a letter or digit."
)


class AdapterAddForm(forms.Form):
    """A name and a peft LoRA folder on this server (checked against the served base model)."""

    name = forms.CharField(
        max_length=64,
        strip=True,
        help_text=NAME_HELP,
        error_messages={
            "required": "A name is required.",
            "max_length": "A name is at most 64 characters.",
        },
    )
    path = forms.CharField(
        label="Folder on the server",
        max_length=1024,
        strip=True,
        help_text=(
            "The absolute path of a peft LoRA folder (adapter_config.json and its weights) "
            "as the node's processes see it."
        ),
        error_messages={
            "required": "The folder's path is required.",
            "max_length": "A path is at most 1,024 characters.",
        },
    )

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if not NAME_PATTERN.fullmatch(name):
            raise forms.ValidationError(f"“{name}” is not a valid name. {NAME_HELP}")
        if Adapter.objects.filter(name=name).exists():
            raise forms.ValidationError(f"An adapter named “{name}” is registered already.")
        return name

    def clean_path(self) -> str:
        path = self.cleaned_data["path"]
        # Relative to what? The server's working directory is no place an admin can see.
        if not PurePosixPath(path).is_absolute():
            raise forms.ValidationError(
                f"Give the folder's absolute path (starting with /), not “{path}”."
            )
        return path

    def field_of_refusal(self) -> str:
        """The field a refusal of tenants.adapters is about: the name when it is taken or
        malformed (a concurrent register), else the folder."""
        name = self.cleaned_data.get("name", "")
        taken = Adapter.objects.filter(name=name).exists()
        return "name" if taken or not NAME_PATTERN.fullmatch(name) else "path"


class GrantTenantForm(forms.Form):
    """Grant an adapter to a tenant, chosen by slug among those that do not hold it yet."""

    tenant = forms.CharField(
        label="Tenant",
        max_length=64,
        widget=forms.Select,
        error_messages={"required": "Choose a tenant."},
    )

    def __init__(self, *args: Any, adapter: Adapter, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        others = Tenant.objects.exclude(adapter_grants__adapter=adapter).order_by("slug")
        choices = [(slug, f"{slug} · {name}") for slug, name in others.values_list("slug", "name")]
        self.fields["tenant"].widget.choices = [("", "Choose a tenant"), *choices]

    def clean_tenant(self) -> Tenant:
        slug = self.cleaned_data["tenant"]
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise forms.ValidationError(f"There is no tenant with the slug “{slug}”.")
        return tenant


class GrantAdapterForm(forms.Form):
    """Grant a tenant an adapter, chosen by name among those it does not hold yet."""

    adapter = forms.CharField(
        label="Adapter",
        max_length=64,
        widget=forms.Select,
        error_messages={"required": "Choose an adapter."},
    )

    def __init__(self, *args: Any, tenant: Tenant, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = Adapter.objects.exclude(grants__tenant=tenant).order_by("name")
        choices = [(name, name) for name in names.values_list("name", flat=True)]
        self.fields["adapter"].widget.choices = [("", "Choose an adapter"), *choices]

    @property
    def has_choices(self) -> bool:
        return len(self.fields["adapter"].widget.choices) > 1

    def clean_adapter(self) -> Adapter:
        name = self.cleaned_data["adapter"]
        adapter = Adapter.objects.filter(name=name).first()
        if adapter is None:
            raise forms.ValidationError(f"There is no adapter named “{name}”.")
        return adapter


class RemoveAdapterForm(forms.Form):
    """The confirmation of a removal: the admin types the adapter's name."""

    confirm = forms.CharField(
        label="Type the adapter's name to confirm",
        max_length=64,
        error_messages={"required": "Type the adapter's name to confirm."},
    )

    def __init__(self, *args: Any, adapter: Adapter, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adapter = adapter

    def clean_confirm(self) -> str:
        typed = self.cleaned_data["confirm"].strip()
        if typed != self.adapter.name:
            raise forms.ValidationError("That is not this adapter's name; nothing was removed.")
        return typed


def refusal(exc: Exception) -> str:
    """A refusal of tenants.adapters as a sentence ("the folder is …" → "The folder is ….")."""
    text = str(exc)
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else f"{text}."
