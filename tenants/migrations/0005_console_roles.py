# The console's three roles (docs/console.md, "Roles"): groups holding exactly the permissions
# each one needs. The map is frozen here, as a migration must be; a later change of a role is a
# new migration.

from django.apps.registry import Apps
from django.contrib.auth.management import create_permissions
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

VIEWER = [
    "view_tenant",
    "view_apikey",
    "view_usageminute",
    "view_throttleevent",
    "view_adminaction",
]
# Keys (issue, rotate, revoke) and limits (the tenant's limits form needs change_tenant).
OPERATOR = [*VIEWER, "add_apikey", "change_apikey", "change_tenant"]
# Tenants, adapters (a placeholder permission until adapters have a model) and console users.
ADMINISTRATOR = [*OPERATOR, "add_tenant", "manage_adapters", "manage_console_users"]
ROLES = {"Viewer": VIEWER, "Operator": OPERATOR, "Administrator": ADMINISTRATOR}


def create_roles(apps: Apps, schema_editor: BaseDatabaseSchemaEditor | None) -> None:
    """Create (or reset) the three groups with exactly their permissions of the tenants app."""
    # Permissions are normally made after the last migration (post_migrate); these groups need
    # them now, so make them here from this migration's models (idempotent).
    tenants = apps.get_app_config("tenants")
    # A migration's app configs have no models module, which create_permissions skips.
    tenants.models_module = getattr(tenants, "models_module", None) or True  # type: ignore[assignment]
    create_permissions(tenants, apps=apps, verbosity=0)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in ROLES.items():
        perms = Permission.objects.filter(content_type__app_label="tenants", codename__in=codenames)
        assert perms.count() == len(codenames), f"missing permissions for {name}"
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(perms)


def remove_roles(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0004_tenant_scheduling_weight"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="tenant",
            options={
                "ordering": ["slug"],
                "permissions": [
                    ("manage_console_users", "Can add console users and set their roles"),
                    ("manage_adapters", "Can grant and remove LoRA adapters"),
                ],
            },
        ),
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
                ],
                max_length=40,
            ),
        ),
        migrations.RunPython(create_roles, remove_roles),
    ]
