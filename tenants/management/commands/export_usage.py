import csv
from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.models import Tenant
from tenants.usage import EXPORT_COLUMNS, usage_export_rows


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CommandError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


class Command(BaseCommand):
    help = (
        "Write usage as CSV on stdout: one row per UTC day and key (requests, prompt and "
        "completion tokens, errors, 429s), days --from to --to inclusive."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", metavar="SLUG", help="only this tenant (default: all)")
        parser.add_argument("--from", dest="first", required=True, metavar="YYYY-MM-DD")
        parser.add_argument("--to", dest="last", required=True, metavar="YYYY-MM-DD")

    def handle(self, *args: Any, **options: Any) -> None:
        first, last = _day(options["first"]), _day(options["last"])
        if last < first:
            raise CommandError(f"--to ({last}) is before --from ({first})")
        tenant_id = None
        if options["tenant"]:
            tenant = Tenant.objects.filter(slug=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"no tenant with slug {options['tenant']!r}")
            tenant_id = tenant.pk
        # Rows are written as they are read (a few days at a time), never held all at once.
        writer = csv.writer(self.stdout, lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        for row in usage_export_rows(first, last, tenant_id=tenant_id):
            writer.writerow(row)
