from django.test import override_settings

from console.checks import check_production_settings

SAFE = {
    "DEBUG": False,
    "REDIS_EMULATED": False,
    "SECRET_KEY": "s" * 50,
    "API_KEY_PEPPER": "p" * 40,
    "DATABASE_URL": "postgres://db/x",
}


def ids(**overrides: object) -> set[str]:
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
