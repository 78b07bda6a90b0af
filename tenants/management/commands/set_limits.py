from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.management.commands._options import (
    actor,
    add_limit_arguments,
    add_preset_argument,
    get_tenant,
    limits_from_options,
)
from tenants.models import MAX_WEIGHT
from tenants.services import TENANT_SETTINGS, TenantError, preset_limits, tenant_set_limits


class Command(BaseCommand):
    help = (
        "Change a tenant's limits ('none' removes one) or scheduling weight; prints the "
        "resulting settings."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        add_preset_argument(
            parser, "set every limit and the burst to the preset's; the options below override"
        )
        add_limit_arguments(parser)
        parser.add_argument(
            "--weight",
            dest="scheduling_weight",
            type=int,
            help="share of the model while tenants wait for it together, "
            f"1-{MAX_WEIGHT} (default 1)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            preset = preset_limits(options["preset"]) if options["preset"] else {}
        except TenantError as exc:
            raise CommandError(str(exc)) from exc
        changes = {**preset, **limits_from_options(options)}
        if options["scheduling_weight"] is not None:
            changes["scheduling_weight"] = options["scheduling_weight"]
        if not changes:
            raise CommandError("nothing to change: give a preset or at least one limit option")
        tenant = get_tenant(options["slug"])
        try:
            tenant = tenant_set_limits(tenant=tenant, changes=changes, actor=actor())
        except TenantError as exc:
            raise CommandError(str(exc)) from exc
        values = (f"{name}={getattr(tenant, name) or 'none'}" for name in TENANT_SETTINGS)
        self.stdout.write(" ".join(values))
