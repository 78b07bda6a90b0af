"""System checks that refuse unsafe configurations when DEBUG is off."""

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register


@register(Tags.security)
def check_production_settings(app_configs: object = None, **kwargs: object) -> list[Error]:
    if settings.DEBUG:
        return []
    errors: list[Error] = []
    if settings.REDIS_EMULATED:
        errors.append(
            Error(
                "REDIS_URL is not set: the in-process Redis emulation cannot share limits "
                "between processes.",
                hint="Set REDIS_URL to a real Redis.",
                id="console.E001",
            )
        )
    if (
        settings.SECRET_KEY == settings.INSECURE_SECRET_KEY
        or len(settings.SECRET_KEY) < settings.MIN_SECRET_LENGTH
    ):
        errors.append(
            Error(
                "SECRET_KEY is the development default or too short.",
                hint="Set SECRET_KEY to at least 32 random characters.",
                id="console.E002",
            )
        )
    pepper = settings.API_KEY_PEPPER
    if pepper == settings.INSECURE_API_KEY_PEPPER or len(pepper) < settings.MIN_SECRET_LENGTH:
        errors.append(
            Error(
                "API_KEY_PEPPER is the development default or too short.",
                hint="Set API_KEY_PEPPER to at least 32 random characters; changing it later "
                "invalidates every issued key.",
                id="console.E003",
            )
        )
    if not settings.DATABASE_URL:
        errors.append(
            Error(
                "DATABASE_URL is not set: SQLite is for one-machine trials only.",
                hint="Set DATABASE_URL to PostgreSQL.",
                id="console.E004",
            )
        )
    return errors


@register(Tags.security)
def check_trusted_proxies(app_configs: object = None, **kwargs: object) -> list[CheckMessage]:
    from core.clientaddr import parse_trusted_addresses

    try:
        parse_trusted_addresses(settings.TRUSTED_PROXY_ADDRESSES)
    except ValueError as exc:
        return [Error(f"TRUSTED_PROXY_ADDRESSES: {exc}.", id="console.E005")]
    if settings.TRUSTED_PROXY_HEADER and not settings.TRUSTED_PROXY_ADDRESSES:
        return [
            Warning(
                "TRUSTED_PROXY_HEADER is set but TRUSTED_PROXY_ADDRESSES is empty: the header "
                "is never believed and every client shows as the proxy's address.",
                hint="Set TRUSTED_PROXY_ADDRESSES to the proxy's address or network.",
                id="console.W006",
            )
        ]
    return []
