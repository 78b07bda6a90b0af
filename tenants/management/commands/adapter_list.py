from typing import Any

from django.core.management.base import BaseCommand

from tenants.models import Adapter


class Command(BaseCommand):
    help = (
        "List the registered adapters, one a line, tab-separated: name, rank, target modules "
        "and the tenants granted it (comma-separated; '-' for none)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        adapters = Adapter.objects.prefetch_related("grants__tenant").order_by("name")
        for adapter in adapters:
            slugs = sorted(grant.tenant.slug for grant in adapter.grants.all())
            targets = ",".join(adapter.target_modules)
            line = [adapter.name, str(adapter.rank), targets, ",".join(slugs) or "-"]
            self.stdout.write("\t".join(line))
