"""The client's address, as our own proxy reports it, and only as our own proxy reports it.

A header such as X-Forwarded-For is believed only when the TCP peer that delivered the request
is one of TRUSTED_PROXY_ADDRESSES (our Traefik). Traefik itself is configured not to trust
forwarded headers from outside (deploy/traefik/), so it overwrites whatever a client sent. The
reference implementation keyed its limiter on a client-settable X-Forwarded-For; this is the
answer to that.
"""

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.http import HttpRequest

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
UNKNOWN = "unknown"


@lru_cache(maxsize=8)
def _networks(addresses: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return parse_trusted_addresses(addresses)


def parse_trusted_addresses(addresses: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks from addresses or CIDRs; raises ValueError naming a bad entry."""
    networks = []
    for item in addresses:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"not an IP address or network: {item!r}") from exc
    return tuple(networks)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:1234" from some proxies
        text = text[1 : text.index("]")]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4 peer seen through an IPv6 socket arrives as ::ffff:a.b.c.d.
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
    if address is None:
        return False
    networks = _networks(tuple(settings.TRUSTED_PROXY_ADDRESSES))
    return any(address in network for network in networks)


def _peer_and_header(request_or_scope: Any, header: str) -> tuple[str, list[str]]:
    """The TCP peer and every value of `header`, read exactly (no alias folding)."""
    scope = request_or_scope
    if isinstance(request_or_scope, HttpRequest):
        scope = getattr(request_or_scope, "scope", None)
        if scope is None:  # a WSGI-style request (tests): META is all there is
            meta = request_or_scope.META
            key = "HTTP_" + header.upper().replace("-", "_")
            values = [meta[key]] if header and key in meta else []
            return meta.get("REMOTE_ADDR", ""), values
    client = scope.get("client") or ("", 0)
    wanted = header.lower().encode("latin-1")
    # Raw ASGI headers: an "X_Forwarded_For" header is NOT folded into X-Forwarded-For here,
    # unlike Django's META, so a client cannot smuggle a value in under an alias.
    values = [value.decode("latin-1") for name, value in scope.get("headers", []) if name == wanted]
    return str(client[0] or ""), values


def client_address(request_or_scope: Any) -> str:
    """The client's IP: the proxy's header when the peer is a trusted proxy, else the peer."""
    header = settings.TRUSTED_PROXY_HEADER
    peer_text, values = _peer_and_header(request_or_scope, header)
    peer = _ip(peer_text)
    if not header or not _trusted(peer) or not values:
        return str(peer) if peer else UNKNOWN
    # X-Forwarded-For grows to the right, one entry per hop. Walk back from the nearest hop and
    # stop at the first address that is not one of our proxies: everything left of it was
    # written by the client and proves nothing.
    entries = [item for value in values for item in value.split(",")]
    nearest = peer
    for entry in reversed(entries):
        address = _ip(entry)
        if address is None:  # garbage in the chain: believe nothing beyond the last good hop
            return str(nearest)
        nearest = address
        if not _trusted(address):
            return str(address)
    return str(nearest)


def client_ip(request_or_scope: Any) -> str | None:
    """client_address(), or None when there is no valid address (for audit samples)."""
    address = client_address(request_or_scope)
    return None if address == UNKNOWN else address
