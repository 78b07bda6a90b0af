"""Django admin for raw records. Secrets and hashes are never shown; keys are issued and
rotated through the console or the commands, which show the token once."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from tenants.models import AdminAction, ApiKey, Tenant, ThrottleEvent, UsageMinute
from tenants.services import TenantError, api_key_revoke


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
    actions = ("revoke_selected",)

    @admin.action(description="Revoke selected keys")
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        actor = f"admin:{request.user.get_username()}"
        for key in queryset:
            try:
                api_key_revoke(api_key=key, actor=actor)
            except TenantError as exc:
                self.message_user(request, str(exc), messages.WARNING)

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Needed for actions to show; the form itself has every field read-only.
        return request.user.has_perm("tenants.change_apikey")

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        return [f.name for f in ApiKey._meta.fields if f.name not in self.exclude]


@admin.register(AdminAction)
class AdminActionAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "actor", "action", "tenant", "key_id")
    list_filter = ("action", "tenant")
    date_hierarchy = "created_at"


@admin.register(UsageMinute)
class UsageMinuteAdmin(ReadOnlyAdmin):
    list_display = ("minute", "tenant", "api_key", "requests", "prompt_tokens", "completion_tokens")
    list_filter = ("tenant",)
    date_hierarchy = "minute"


@admin.register(ThrottleEvent)
class ThrottleEventAdmin(ReadOnlyAdmin):
    list_display = ("minute", "tenant", "api_key", "reason", "count", "first_seen", "last_seen")
    list_filter = ("tenant", "reason", "api_key")
    date_hierarchy = "minute"
