"""Django admin for raw records. Secrets and hashes are never shown. Keys are issued in the
console or by the commands; the rotate action here shows the new tokens once, on the page that
answers its POST (never in a message, which would persist them in the session)."""

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers

from pages.forms import RotateKeyForm
from pages.services import submission_claim
from tenants.models import AdminAction, ApiKey, Tenant, ThrottleEvent, UsageMinute
from tenants.services import TenantError, api_key_revoke, api_key_rotate


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Tenant)
class TenantAdmin(ReadOnlyAdmin):
    list_display = (
        "slug",
        "name",
        "active",
        "rpm",
        "tpm",
        "max_inflight",
        "tokens_per_day",
        "tokens_per_month",
        "burst_percent",
        "created_at",
    )
    list_filter = ("active",)
    search_fields = ("slug", "name")


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    list_display = (
        "key_id",
        "tenant",
        "name",
        "last4",
        "state",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    )
    list_filter = ("tenant", "revoked_at")
    search_fields = ("key_id", "name", "tenant__slug")
    # Hash fields are never listed, shown or editable.
    exclude = ("secret_hash", "previous_hash")
    list_select_related = ("tenant",)
    date_hierarchy = "created_at"
    actions = ("rotate_selected", "revoke_selected")

    def _action_page(self, request: HttpRequest, template: str, **context: object) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            **context,
        }
        return TemplateResponse(request, f"admin/tenants/apikey/{template}", context)

    @admin.action(description="Rotate selected keys (shows the new tokens once)")
    def rotate_selected(
        self, request: HttpRequest, queryset: QuerySet[ApiKey]
    ) -> HttpResponse | None:
        form = RotateKeyForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return self._action_page(request, "rotate_confirm.html", form=form, keys=queryset)
        if not submission_claim(once=form.cleaned_data["once"]):
            self.message_user(request, "Already rotated; tokens are shown once.", messages.WARNING)
            return None
        actor, rotated = f"admin:{request.user.get_username()}", []
        for key in queryset.select_related("tenant"):
            try:
                issued = api_key_rotate(
                    api_key=key, grace=form.cleaned_data["grace_delta"], actor=actor
                )
            except TenantError as exc:
                self.message_user(request, str(exc), messages.WARNING)
            else:
                rotated.append(issued)
        response = self._action_page(request, "rotated.html", rotated=rotated)
        # The tokens exist only in this response: no cache may keep it.
        add_never_cache_headers(response)
        return response

    @admin.action(description="Revoke selected keys")
    def revoke_selected(
        self, request: HttpRequest, queryset: QuerySet[ApiKey]
    ) -> HttpResponse | None:
        if "apply" not in request.POST:
            return self._action_page(request, "revoke_confirm.html", keys=queryset)
        actor = f"admin:{request.user.get_username()}"
        for key in queryset:
            try:
                api_key_revoke(api_key=key, actor=actor)
            except TenantError as exc:
                self.message_user(request, str(exc), messages.WARNING)
        return None

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Needed for actions to show; the form itself has every field read-only.
        return request.user.has_perm("tenants.change_apikey")

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        return [f.name for f in ApiKey._meta.fields if f.name not in self.exclude]


@admin.register(AdminAction)
class AdminActionAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "actor", "action", "tenant", "key_id")
    list_filter = ("action", "tenant")
    # Each row shows its tenant: one join, not one query per row.
    list_select_related = ("tenant",)
    date_hierarchy = "created_at"


@admin.register(UsageMinute)
class UsageMinuteAdmin(ReadOnlyAdmin):
    list_display = (
        "minute",
        "tenant",
        "api_key",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "errors",
    )
    list_filter = ("tenant", "api_key")
    list_select_related = ("tenant", "api_key")
    search_fields = ("api_key__key_id", "tenant__slug")
    date_hierarchy = "minute"


@admin.register(ThrottleEvent)
class ThrottleEventAdmin(ReadOnlyAdmin):
    list_display = ("minute", "tenant", "api_key", "reason", "count", "first_seen", "last_seen")
    list_filter = ("tenant", "reason", "api_key")
    list_select_related = ("tenant", "api_key")
    search_fields = ("api_key__key_id", "tenant__slug")
    date_hierarchy = "minute"
