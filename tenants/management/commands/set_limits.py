from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.management.commands._options import (
    actor,
    add_limit_arguments,
    get_tenant,
    limits_from_options,
)
from tenants.models import MAX_WEIGHT
from tenants.services import TENANT_SETTINGS, TenantError, tenant_set_limits


class Command(BaseCommand):
    help = (
        "Change a tenant's limits ('none' removes one) or scheduling weight; prints the "
        "resulting settings."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        add_limit_arguments(parser)
        parser.add_argument(
            "--weight",
            dest="scheduling_weight",
            type=int,
            help="share of the model while tenants wait for it together, "
            f"1-{MAX_WEIGHT} (default 1)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        changes = limits_from_options(options)
        if options["scheduling_weight"] is not None:
            changes["scheduling_weight"] = options["scheduling_weight"]
        if not changes:
            raise CommandError("nothing to change: give at least one limit option")
        tenant = get_tenant(options["slug"])
        try:
            tenant = tenant_set_limits(tenant=tenant, changes=changes, actor=actor())
        except TenantError as exc:
            raise CommandError(str(exc)) from exc
        values = (f"{name}={getattr(tenant, name) or 'none'}" for name in TENANT_SETTINGS)
        self.stdout.write(" ".join(values))
