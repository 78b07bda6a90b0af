from typing import Any

from django.core.management.base import BaseCommand

from tenants.services import usage_rollups_rebuild


class Command(BaseCommand):
    help = (
        "Recompute the hourly and daily usage rollups from the per-minute rows (after a restore "
        "or a bulk load that bypassed the usage flush); prints the rows written."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        written = usage_rollups_rebuild()
        self.stdout.write(f"usage rollups rebuilt: {written['hour']} hours, {written['day']} days")
