from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.durations import parse_duration
from tenants.management.commands._options import actor, get_key
from tenants.services import TenantError, api_key_rotate


class Command(BaseCommand):
    help = "Rotate a key's secret (key_id unchanged); prints the new token only."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key_id")
        parser.add_argument(
            "--grace",
            default=None,
            help="how long the old secret keeps working, e.g. 1h, 0 "
            f"(default {settings.API_KEY_DEFAULT_ROTATION_GRACE})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            grace = parse_duration(options["grace"] or settings.API_KEY_DEFAULT_ROTATION_GRACE)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        key = get_key(options["key_id"])
        try:
            issued = api_key_rotate(api_key=key, grace=grace, actor=actor())
        except TenantError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(issued.token)
