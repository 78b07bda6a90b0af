from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "Write a small random-weight T5, a tokenizer trained on the spot and a LoRA adapter "
        "(in DIR/adapter), with --adapters N further adapters in DIR/adapters/1..N, for offline "
        "tests and try-outs; prints the folder."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dir", help="folder to write (created; existing files are replaced)")
        parser.add_argument("--seed", type=int, default=0, help="same seed, same files")
        parser.add_argument(
            "--adapters",
            type=int,
            default=0,
            metavar="N",
            help="also write N per-tenant LoRA adapters in DIR/adapters/1..N (each its own seed)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from engine.loading import quiet_libraries
        from engine.tiny_model import make_tiny_model

        quiet_libraries()
        folder = Path(options["dir"]).expanduser().resolve()
        if folder.exists() and not folder.is_dir():
            raise CommandError(f"{folder} exists and is not a folder.")
        if not 0 <= options["adapters"] <= 64:
            raise CommandError("--adapters takes 0 to 64.")
        try:
            make_tiny_model(folder, seed=options["seed"], adapters=options["adapters"])
        except OSError as exc:
            raise CommandError(f"Cannot write {folder}: {exc.strerror or exc}") from exc
        self.stdout.write(str(folder))
