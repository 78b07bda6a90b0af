"""The client address for the 429 audit and login throttling: the connection's peer, or the
value of TRUSTED_PROXY_HEADER when one is configured (set by our own Traefik). Any other
header, X-Forwarded-For included, is client-settable and never believed."""

import ipaddress
from collections.abc import Mapping

from django.conf import settings
from django.http import HttpRequest


def address_from(peer: str | None, headers: Mapping[str, str]) -> str | None:
    """A normalized IP address, or None when there is no valid one."""
    raw = peer
    name = settings.TRUSTED_PROXY_HEADER
    if name:
        value = headers.get(name) or headers.get(name.lower()) or ""
        # In list-valued headers our proxy appends the peer it saw: only the last entry is its.
        trusted = value.split(",")[-1].strip()
        raw = trusted or peer
    try:
        return str(ipaddress.ip_address((raw or "").strip()))
    except ValueError:
        return None


def request_address(request: HttpRequest) -> str | None:
    """address_from() for a Django request."""
    return address_from(request.META.get("REMOTE_ADDR"), request.headers)


def scope_address(scope: Mapping) -> str | None:
    """address_from() for an ASGI scope (WebSocket consumers)."""
    client = scope.get("client") or (None,)
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
    return address_from(client[0], headers)
