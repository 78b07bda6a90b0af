from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.adapters import AdapterRefused, adapter_add
from tenants.management.commands._options import actor


class Command(BaseCommand):
    help = (
        "Register a peft LoRA folder on this server under NAME, checked against the served base "
        "(T5 Linears, rank up to INFERENCE_MAX_ADAPTER_RANK, adapter_model.safetensors); "
        "prints the name."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="what clients send as `model` (lowercase, 1-64)")
        parser.add_argument("path", help="the adapter's folder (adapter_config.json, weights)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            adapter = adapter_add(name=options["name"], path=options["path"], actor=actor())
        except AdapterRefused as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(adapter.name)
