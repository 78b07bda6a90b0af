"""API key authentication for django-ninja (HTTP) and the WebSocket consumer.

Every failure (missing, malformed, unknown, wrong secret, revoked, expired) ends the same way,
so a caller learns nothing about which it was. An address that failed too often gets 429
instead, whatever its token, unless the key is valid and already cached here
(ratelimit/authfail.py). The one distinct answer is for a key that is valid in every way but
its tenant's suspension: 403 tenant_suspended, given only to the holder of the right secret
(so it tells a guesser nothing) and never counted as a failed authentication.
"""

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone
from ninja.security.base import AuthBase

from core.clientaddr import client_ip
from core.errors import PermissionDenied, TenantSuspended
from ratelimit import authfail
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


async def authenticate_token(
    token: str | None, *, client_addr: str | None = None
) -> KeyRecord | None:
    """The key record for a valid token, or None (401). Costs no query while the key is cached.
    Raises TenantSuspended (403) for a valid key of a suspended tenant.

    A key already cached in this process is checked in memory and never throttled. Any other
    well-formed token first passes the failed-authentication limit of client_addr (429
    RateLimited when spent, before any lookup), and counts against it if it fails. None
    (unknown address) skips that limit: callers pass core.clientaddr.client_ip().
    """
    parsed = tokens.parse_token(token) if token else None
    if parsed is None:  # missing or malformed: refused without a lookup, so not counted
        return None
    key_id, secret = parsed
    record = await key_cache.get_cached(key_id)
    if record is None or not _accepts(record, secret):
        record = await _authenticate_throttled(key_id, secret, record, client_addr)
        if record is None:
            return None
    await touch_last_used(record)
    return record


def authenticate_cached(token: str | None) -> KeyRecord | None:
    """authenticate_token() from this process's memory alone, never awaiting: the record when
    the token is valid and its key is cached here, else None, meaning "cannot say" (the caller
    then awaits authenticate_token(), which looks further and counts failures)."""
    parsed = tokens.parse_token(token) if token else None
    if parsed is None:
        return None
    key_id, secret = parsed
    record = key_cache.cached_now(key_id)
    if record is None or not record.tenant_active or not _accepts(record, secret):
        return None  # a suspended tenant's key: the awaited path says so
    return record


async def _authenticate_throttled(
    key_id: str, secret: str, refused: KeyRecord | None, client_addr: str | None
) -> KeyRecord | None:
    """Behind the address's failure limit: look the key up (unless its cached record was
    just refused) and count a failure."""
    # Refused before the lookup: an address flooding made-up key ids costs no Postgres. A
    # secret that matched this key's record before the cache let go of it (a version change
    # empties every process's cache) is no guess: it is looked up whatever the address's
    # failures, so one client flooding bad tokens from a shared address (a NAT, a proxy)
    # cannot lock that address's valid keys out after the next key change.
    if not _held_before(key_id, secret):
        await authfail.refuse_if_blocked(client_addr)
    if refused is None:
        record = await key_cache.get(key_id)
        if record is not None and _accepts(record, secret):
            return record
    await authfail.count_failure(client_addr)
    return None


def _held_before(key_id: str, secret: str) -> bool:
    known = key_cache.last_known(key_id)
    if known is None:
        return False
    hashes = known.valid_hashes(timezone.now())
    return tokens.secret_matches(secret, settings.API_KEY_PEPPER, *hashes)


def _accepts(record: KeyRecord, secret: str) -> bool:
    """Whether the secret is this key's and the key usable now; raises TenantSuspended when
    only the tenant's suspension stands in the way."""
    now = timezone.now()
    if not tokens.secret_matches(secret, settings.API_KEY_PEPPER, *record.valid_hashes(now)):
        return False
    if record.usable_at(now):
        return True
    if record.suspended_but_usable_at(now):
        raise TenantSuspended()
    return False


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
        return await authenticate_token(token, client_addr=client_ip(request))
