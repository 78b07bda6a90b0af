"""Tenant lifecycle: when a tenant was suspended (kept together with `active` by a constraint),
and the audit's rename, suspend and resume actions."""

from django.db import migrations, models


def stamp_inactive_tenants(apps, schema_editor) -> None:
    # Tenants deactivated before this migration count as suspended since their last change.
    Tenant = apps.get_model("tenants", "Tenant")
    Tenant.objects.filter(active=False, suspended_at__isnull=True).update(
        suspended_at=models.F("updated_at")
    )


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0005_console_roles"),
    ]

    operations = [
        migrations.AddField(
            model_name="tenant",
            name="suspended_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(stamp_inactive_tenants, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="tenant",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("active", True), ("suspended_at__isnull", True)),
                    models.Q(("active", False), ("suspended_at__isnull", False)),
                    _connector="OR",
                ),
                name="tenant_suspended_when_inactive",
            ),
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
                    ("tenant.renamed", "Tenant Renamed"),
                    ("tenant.suspended", "Tenant Suspended"),
                    ("tenant.resumed", "Tenant Resumed"),
                ],
                max_length=40,
            ),
        ),
    ]
