from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.durations import parse_duration
from tenants.management.commands._options import actor, get_tenant
from tenants.services import TenantError, api_key_issue


class Command(BaseCommand):
    help = "Issue an API key for a tenant; prints the token (shown only this once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", default="")
        parser.add_argument("--expires-in", default=None, help="e.g. 30d, 12h; default: never")
        parser.add_argument(
            "--scopes",
            default=None,
            help="comma-separated: completions,models,usage (default: all)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            expires_in = parse_duration(options["expires_in"]) if options["expires_in"] else None
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        scopes = options["scopes"].split(",") if options["scopes"] else None
        tenant = get_tenant(options["slug"])
        try:
            issued = api_key_issue(
                tenant=tenant,
                name=options["name"],
                expires_in=expires_in,
                scopes=scopes,
                actor=actor(),
            )
        except TenantError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(issued.token)
