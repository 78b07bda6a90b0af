"""API key authentication for django-ninja (HTTP) and the WebSocket consumer.

Every failure (missing, malformed, unknown, wrong secret, revoked, expired, inactive tenant)
ends the same way, so a caller learns nothing about which it was.
"""

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone
from ninja.security.base import AuthBase

from console.errors import PermissionDenied
from tenants import tokens
from tenants.keycache import KeyRecord, key_cache, touch_last_used


def token_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    """The token from `Authorization: Bearer <token>` or `X-API-Key: <token>`."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return None


async def authenticate_token(token: str | None) -> KeyRecord | None:
    """The key record for a valid token, or None. Costs no query while the key is cached."""
    parsed = tokens.parse_token(token) if token else None
    if parsed is None:
        return None
    key_id, secret = parsed
    record = await key_cache.get(key_id)
    if record is None:
        return None
    now = timezone.now()
    if not tokens.secret_matches(secret, settings.API_KEY_PEPPER, *record.valid_hashes(now)):
        return None
    if not record.usable_at(now):
        return None
    await touch_last_used(record)
    return record


def require_scope(record: KeyRecord, scope: str) -> None:
    """403 unless the key carries the scope."""
    if scope not in record.scopes:
        raise PermissionDenied(
            f"This API key lacks the '{scope}' scope.", code="insufficient_scope"
        )


class ApiKeyAuth(AuthBase):
    """Bearer token or X-API-Key header; request.auth becomes the KeyRecord."""

    openapi_type = "http"
    openapi_scheme = "bearer"

    def __call__(self, request: HttpRequest) -> Any:
        # Never log the header: ninja's own HttpBearer echoes bad values when DEBUG is on.
        token = token_from_headers(
            request.headers.get("Authorization"), request.headers.get("X-API-Key")
        )
        return self.authenticate(request, token)

    async def authenticate(self, request: HttpRequest, token: str | None) -> KeyRecord | None:
        return await authenticate_token(token)
