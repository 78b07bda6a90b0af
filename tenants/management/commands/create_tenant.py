from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.management.commands._options import (
    actor,
    add_limit_arguments,
    add_preset_argument,
    limits_from_options,
)
from tenants.services import TenantError, tenant_create


class Command(BaseCommand):
    help = "Create a tenant with its limits; prints the tenant's slug."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", default="")
        add_preset_argument(
            parser,
            "the limits to start from (default: the TENANT_DEFAULT_PRESET setting); the "
            "options below override them",
        )
        add_limit_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            tenant = tenant_create(
                slug=options["slug"],
                name=options["name"],
                limits=limits_from_options(options),
                preset=options["preset"],
                actor=actor(),
            )
        except TenantError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(tenant.slug)
