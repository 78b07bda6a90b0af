from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.management.commands._options import actor, get_key
from tenants.services import TenantError, api_key_revoke


class Command(BaseCommand):
    help = "Revoke a key at once; prints its key_id."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key_id")

    def handle(self, *args: Any, **options: Any) -> None:
        key = get_key(options["key_id"])
        try:
            api_key_revoke(api_key=key, actor=actor())
        except TenantError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(key.key_id)
