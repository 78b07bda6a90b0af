"""flush_usage: move usage counters and the 429 audit buffer from Redis to Postgres now."""

from django.core.management.base import BaseCommand, CommandError

from ratelimit.flush import flush


class Command(BaseCommand):
    help = "Move usage counters and refused requests from Redis to Postgres (exactly once)."

    def handle(self, *args: object, **options: object) -> None:
        try:
            report = flush()
        except Exception as exc:
            raise CommandError(f"flush failed: {type(exc).__name__}: {exc}") from exc
        self.stdout.write(report.summary())
