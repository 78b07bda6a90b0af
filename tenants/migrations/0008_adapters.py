"""Per-tenant LoRA adapters: the registry, the grants, the usage per adapter and day, the audit's
adapter actions, and the roles' right to read them (every write needs manage_adapters, which the
Administrator role holds since 0005)."""

import django.db.models.deletion
from django.apps.registry import Apps
from django.contrib.auth.management import create_permissions
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

# Frozen here as a migration must be: every role may read adapters, grants and their usage.
VIEW_ADAPTERS = ["view_adapter", "view_adaptergrant", "view_adapterusageday"]
ROLES = ("Viewer", "Operator", "Administrator")


def grant_views(apps: Apps, schema_editor: BaseDatabaseSchemaEditor | None) -> None:
    """Give the three roles (made by 0005) the view permissions of the adapter models."""
    # Permissions are normally made after the last migration (post_migrate): make them now, from
    # this migration's models (idempotent), as 0005 does.
    tenants = apps.get_app_config("tenants")
    tenants.models_module = getattr(tenants, "models_module", None) or True  # type: ignore[assignment]
    create_permissions(tenants, apps=apps, verbosity=0)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    perms = Permission.objects.filter(content_type__app_label="tenants", codename__in=VIEW_ADAPTERS)
    assert perms.count() == len(VIEW_ADAPTERS), "missing permissions for the adapter models"
    for group in Group.objects.filter(name__in=ROLES):
        group.permissions.add(*perms)


def revoke_views(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    perms = Permission.objects.filter(content_type__app_label="tenants", codename__in=VIEW_ADAPTERS)
    for group in Group.objects.filter(name__in=ROLES):
        group.permissions.remove(*perms)


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0007_usage_rollups"),
    ]

    operations = [
        migrations.AlterField(
            model_name="adminaction",
            name="action",
            field=models.CharField(
                choices=[
                    ("tenant.created", "Tenant Created"),
                    ("tenant.updated", "Tenant Updated"),
                    ("tenant.limits_changed", "Limits Changed"),
                    ("key.issued", "Key Issued"),
                    ("key.rotated", "Key Rotated"),
                    ("key.revoked", "Key Revoked"),
                    ("key.limits_changed", "Key Limits Changed"),
                    ("console.sign_in", "Signed in"),
                    ("console.sign_in_failed", "Sign-in failed"),
                    ("user.added", "Console user added"),
                    ("user.role_set", "Console user's role set"),
                    ("user.deactivated", "Console user deactivated"),
                    ("user.reactivated", "Console user reactivated"),
                    ("user.password_link", "Set-password link made"),
                    ("user.password_set", "Password set by link"),
                    ("tenant.renamed", "Tenant Renamed"),
                    ("tenant.suspended", "Tenant Suspended"),
                    ("tenant.resumed", "Tenant Resumed"),
                    ("adapter.added", "Adapter added"),
                    ("adapter.removed", "Adapter removed"),
                    ("adapter.granted", "Adapter granted"),
                    ("adapter.revoked", "Adapter revoked"),
                ],
                max_length=40,
            ),
        ),
        migrations.CreateModel(
            name="Adapter",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("name", models.CharField(max_length=64, unique=True)),
                ("path", models.CharField(max_length=1024)),
                ("rank", models.PositiveSmallIntegerField()),
                ("target_modules", models.JSONField(default=list)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={
                "ordering": ["name"],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("name__regex", "^[a-z0-9][a-z0-9._-]{0,63}$")),
                        name="adapter_name_format",
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="AdapterGrant",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "adapter",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="grants",
                        to="tenants.adapter",
                    ),
                ),
                (
                    "tenant",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="adapter_grants",
                        to="tenants.tenant",
                    ),
                ),
            ],
            options={
                "ordering": ["adapter__name", "tenant__slug"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("adapter", "tenant"), name="adapter_grant_unique"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="AdapterUsageDay",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("adapter", models.CharField(max_length=64)),
                ("day", models.DateField()),
                ("requests", models.BigIntegerField(default=0)),
                ("prompt_tokens", models.BigIntegerField(default=0)),
                ("completion_tokens", models.BigIntegerField(default=0)),
                (
                    "tenant",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="adapter_usage",
                        to="tenants.tenant",
                    ),
                ),
            ],
            options={
                "ordering": ["-day", "adapter"],
                "indexes": [models.Index(fields=["day"], name="adapter_usage_day_idx")],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("tenant", "adapter", "day"), name="adapter_usage_tenant_adapter_day"
                    )
                ],
            },
        ),
        migrations.RunPython(grant_views, revoke_views),
    ]
