from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.adapters import AdapterRefused, adapter_revoke
from tenants.management.commands._options import actor, get_adapter, get_tenant


class Command(BaseCommand):
    help = (
        "Take an adapter from a tenant (its keys get 404 model_not_found for it within a second); "
        "prints the name and the tenant's slug."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("tenant_slug")

    def handle(self, *args: Any, **options: Any) -> None:
        adapter, tenant = get_adapter(options["name"]), get_tenant(options["tenant_slug"])
        try:
            adapter_revoke(adapter=adapter, tenant=tenant, actor=actor())
        except AdapterRefused as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"{adapter.name} {tenant.slug}")
