"""Options shared by the tenant commands."""

import getpass
from argparse import ArgumentParser, ArgumentTypeError
from typing import Any

from django.core.management.base import CommandError

from tenants.models import Adapter, ApiKey, Tenant
from tenants.presets import PRESET_NAMES

LIMIT_OPTIONS = {
    "rpm": "requests per minute",
    "tpm": "tokens per minute (prompt + completion)",
    "max_inflight": "requests running at the same time",
    "tokens_per_day": "tokens per UTC day",
    "tokens_per_month": "tokens per UTC month",
}


def limit_value(text: str) -> int | None:
    """A positive integer, or `none`/`unlimited` to remove the limit."""
    if text.strip().lower() in {"none", "unlimited"}:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ArgumentTypeError(f"expected a positive integer or 'none', got {text!r}") from None
    if value <= 0:
        raise ArgumentTypeError(f"expected a positive integer or 'none', got {text!r}")
    return value


def add_preset_argument(parser: ArgumentParser, help_text: str) -> None:
    parser.add_argument("--preset", choices=PRESET_NAMES, default=None, help=help_text)


def add_limit_arguments(parser: ArgumentParser, *, with_burst: bool = True) -> None:
    for name, help_text in LIMIT_OPTIONS.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=limit_value,
            default=argparse_unset,
            help=f"{help_text} ('none': no limit)",
        )
    if with_burst:
        parser.add_argument(
            "--burst",
            dest="burst_percent",
            type=int,
            default=argparse_unset,
            help="share of the per-minute limits allowed at once, 1-100",
        )


class _Unset:
    def __repr__(self) -> str:
        return "unset"


argparse_unset = _Unset()


def limits_from_options(options: dict[str, Any]) -> dict[str, int | None]:
    names = (*LIMIT_OPTIONS, "burst_percent")
    return {n: options[n] for n in names if n in options and options[n] is not argparse_unset}


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def get_tenant(slug: str) -> Tenant:
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        raise CommandError(f"no tenant with slug {slug!r}")
    return tenant


def get_key(key_id: str) -> ApiKey:
    key = ApiKey.objects.filter(key_id=key_id).first()
    if key is None:
        raise CommandError(f"no API key with key_id {key_id!r}")
    return key


def get_adapter(name: str) -> Adapter:
    adapter = Adapter.objects.filter(name=name).first()
    if adapter is None:
        raise CommandError(f"no adapter named {name!r}")
    return adapter
