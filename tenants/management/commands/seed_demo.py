from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from tenants.management.commands._options import actor
from tenants.models import Tenant
from tenants.services import api_key_issue, tenant_create

DEMO_LIMITS = {"rpm": 60, "tpm": 20000, "max_inflight": 4, "tokens_per_day": 200000}


class Command(BaseCommand):
    help = "Create the demo tenant if missing and issue it a fresh key; prints the token."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--slug", default="demo")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["slug"]).first()
        if tenant is None:
            tenant = tenant_create(
                slug=options["slug"], name="Demo tenant", limits=DEMO_LIMITS, actor=actor()
            )
        issued = api_key_issue(tenant=tenant, name="make run", actor=actor())
        self.stdout.write(issued.token)
