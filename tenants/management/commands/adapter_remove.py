from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.adapters import AdapterRefused, adapter_remove
from tenants.management.commands._options import actor, get_adapter


class Command(BaseCommand):
    help = (
        "Remove an adapter and its grants (running requests finish; its usage stays); "
        "prints the name."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")

    def handle(self, *args: Any, **options: Any) -> None:
        adapter = get_adapter(options["name"])
        try:
            adapter_remove(adapter=adapter, actor=actor())
        except AdapterRefused as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(adapter.name)
