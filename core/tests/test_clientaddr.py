"""client_address(): believe the proxy header only from our own proxy."""

from typing import Any

import pytest
from django.test import AsyncRequestFactory, RequestFactory, override_settings

from console.checks import check_trusted_proxies
from core.clientaddr import client_address

TRAEFIK = "10.0.0.2"
PROXIED = {"TRUSTED_PROXY_HEADER": "X-Forwarded-For", "TRUSTED_PROXY_ADDRESSES": [TRAEFIK]}


def scope(peer: str, *headers: tuple[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "client": (peer, 51234),
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers],
    }


@override_settings(**PROXIED)
def test_it_takes_the_forwarded_address_from_the_trusted_proxy() -> None:
    assert client_address(scope(TRAEFIK, ("X-Forwarded-For", "203.0.113.7"))) == "203.0.113.7"


@override_settings(**PROXIED)
def test_it_ignores_the_header_when_the_peer_is_not_the_proxy() -> None:
    spoofed = scope("198.51.100.9", ("X-Forwarded-For", "203.0.113.7"))
    assert client_address(spoofed) == "198.51.100.9"


@override_settings(**PROXIED)
def test_it_takes_the_nearest_untrusted_hop_not_the_client_written_left_part() -> None:
    # The client wrote "6.6.6.6" itself; the proxy appended the address it really saw.
    chain = scope(TRAEFIK, ("X-Forwarded-For", "6.6.6.6, 203.0.113.7"))
    assert client_address(chain) == "203.0.113.7"


@override_settings(
    TRUSTED_PROXY_HEADER="X-Forwarded-For", TRUSTED_PROXY_ADDRESSES=["10.0.0.0/24", "fd00::/8"]
)
def test_it_skips_every_trusted_hop_given_as_networks() -> None:
    chain = scope("fd00::5", ("X-Forwarded-For", "6.6.6.6, 203.0.113.7, 10.0.0.9"))
    assert client_address(chain) == "203.0.113.7"


@override_settings(**PROXIED)
def test_it_stops_at_garbage_in_the_chain() -> None:
    chain = scope(TRAEFIK, ("X-Forwarded-For", "203.0.113.7, not-an-ip"))
    assert client_address(chain) == TRAEFIK


@override_settings(**PROXIED)
def test_it_joins_repeated_header_lines_in_order() -> None:
    chain = scope(TRAEFIK, ("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.7"))
    assert client_address(chain) == "203.0.113.7"


@override_settings(**PROXIED)
def test_an_aliased_header_name_is_not_believed() -> None:
    # Django folds "X_Forwarded_For" into HTTP_X_FORWARDED_FOR; the raw ASGI headers do not.
    aliased = scope(TRAEFIK, ("X_Forwarded_For", "6.6.6.6"))
    assert client_address(aliased) == TRAEFIK


@override_settings(TRUSTED_PROXY_HEADER="X-Real-Ip", TRUSTED_PROXY_ADDRESSES=[TRAEFIK])
def test_it_reads_a_single_value_header_such_as_x_real_ip() -> None:
    real_ip = scope(TRAEFIK, ("X-Real-Ip", "2001:db8::7"), ("X-Forwarded-For", "6.6.6.6"))
    assert client_address(real_ip) == "2001:db8::7"


@override_settings(TRUSTED_PROXY_HEADER="", TRUSTED_PROXY_ADDRESSES=[TRAEFIK])
def test_without_a_header_setting_it_is_always_the_peer() -> None:
    assert client_address(scope(TRAEFIK, ("X-Forwarded-For", "203.0.113.7"))) == TRAEFIK


@override_settings(**PROXIED)
def test_an_ipv4_mapped_peer_counts_as_its_ipv4_address() -> None:
    mapped = scope("::ffff:10.0.0.2", ("X-Forwarded-For", "203.0.113.7"))
    assert client_address(mapped) == "203.0.113.7"


@override_settings(**PROXIED)
def test_it_accepts_django_requests_from_asgi_and_from_the_test_factory() -> None:
    asgi = AsyncRequestFactory().get("/", headers={"X-Forwarded-For": "203.0.113.7"})
    # ASGIRequest keeps the scope dict it was given; django-stubs type it as a read-only Mapping.
    asgi.scope["client"] = (TRAEFIK, 1)  # type: ignore[index]
    assert client_address(asgi) == "203.0.113.7"
    wsgi = RequestFactory().get("/", headers={"X-Forwarded-For": "203.0.113.7"})
    wsgi.META["REMOTE_ADDR"] = TRAEFIK
    assert client_address(wsgi) == "203.0.113.7"
    wsgi.META["REMOTE_ADDR"] = "198.51.100.9"
    assert client_address(wsgi) == "198.51.100.9"


def test_a_missing_peer_is_reported_as_unknown() -> None:
    assert client_address({"type": "http", "client": None, "headers": []}) == "unknown"


@pytest.mark.parametrize(
    ("header", "addresses", "expected"),
    [
        ("X-Forwarded-For", [TRAEFIK, "10.1.0.0/16"], set()),
        ("X-Forwarded-For", ["traefik"], {"console.E005"}),
        ("X-Forwarded-For", [], {"console.W006"}),
        ("", [], set()),
    ],
)
def test_the_system_check_names_bad_proxy_settings(
    header: str, addresses: list[str], expected: set[str]
) -> None:
    with override_settings(TRUSTED_PROXY_HEADER=header, TRUSTED_PROXY_ADDRESSES=addresses):
        assert {message.id for message in check_trusted_proxies()} == expected
