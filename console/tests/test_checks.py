import os
import subprocess
import sys

import pytest
from django.test import override_settings

from console.checks import check_production_settings

SAFE = {
    "DEBUG": False,
    "REDIS_EMULATED": False,
    "SECRET_KEY": "s" * 50,
    "API_KEY_PEPPER": "p" * 40,
    "DATABASE_URL": "postgres://db/x",
}


def ids(**overrides: object) -> set[str | None]:
    with override_settings(**{**SAFE, **overrides}):
        return {error.id for error in check_production_settings()}


def test_a_safe_production_configuration_passes() -> None:
    assert ids() == set()


def test_it_refuses_the_redis_emulation_without_debug() -> None:
    assert ids(REDIS_EMULATED=True) == {"console.E001"}


def test_it_refuses_the_default_or_short_secret_key() -> None:
    from django.conf import settings

    assert ids(SECRET_KEY=settings.INSECURE_SECRET_KEY) == {"console.E002"}
    assert ids(SECRET_KEY="short") == {"console.E002"}


def test_it_refuses_the_default_or_short_pepper() -> None:
    from django.conf import settings

    assert ids(API_KEY_PEPPER=settings.INSECURE_API_KEY_PEPPER) == {"console.E003"}
    assert ids(API_KEY_PEPPER="x" * 10) == {"console.E003"}


def test_it_refuses_sqlite_in_production() -> None:
    assert ids(DATABASE_URL="") == {"console.E004"}


def test_debug_allows_the_one_machine_defaults() -> None:
    from django.conf import settings

    assert (
        ids(
            DEBUG=True,
            REDIS_EMULATED=True,
            SECRET_KEY=settings.INSECURE_SECRET_KEY,
            API_KEY_PEPPER=settings.INSECURE_API_KEY_PEPPER,
            DATABASE_URL="",
        )
        == set()
    )


def _load_settings(**env: str) -> subprocess.CompletedProcess:
    """Import the settings in a fresh interpreter, as any entry point would."""
    clean = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "API_KEY_PEPPER")}
    code = "import console.settings as s; print(s.DEBUG)"
    return subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )


@pytest.mark.parametrize("missing", ["SECRET_KEY", "API_KEY_PEPPER"])
def test_settings_refuse_to_load_without_a_secret_when_debug_is_off(missing: str) -> None:
    secrets = {"SECRET_KEY": "k" * 48, "API_KEY_PEPPER": "p" * 48}
    secrets.pop(missing)
    loaded = _load_settings(DEBUG="false", **secrets)
    assert loaded.returncode != 0
    assert "ImproperlyConfigured" in loaded.stderr and missing in loaded.stderr
    # The message names the variable, never a value.
    assert "k" * 48 not in loaded.stderr and "p" * 48 not in loaded.stderr


def test_settings_refuse_the_public_development_pepper_when_debug_is_off() -> None:
    from django.conf import settings

    pepper = settings.INSECURE_API_KEY_PEPPER
    loaded = _load_settings(DEBUG="false", SECRET_KEY="k" * 48, API_KEY_PEPPER=pepper)
    assert loaded.returncode != 0 and "API_KEY_PEPPER" in loaded.stderr


def test_settings_load_with_both_secrets_or_in_debug() -> None:
    assert _load_settings(DEBUG="false", SECRET_KEY="k" * 48, API_KEY_PEPPER="p" * 48).stdout == (
        "False\n"
    )
    assert _load_settings(DEBUG="true").stdout == "True\n"
