"""Only the connection's peer, or the configured trusted proxy header, names the client."""

from django.test import RequestFactory

from ratelimit.clientaddr import address_from, request_address, scope_address


def test_without_a_trusted_header_a_spoofed_forwarded_for_is_ignored(settings) -> None:  # type: ignore[no-untyped-def]
    settings.TRUSTED_PROXY_HEADER = ""
    request = RequestFactory().get("/", HTTP_X_FORWARDED_FOR="1.2.3.4", REMOTE_ADDR="10.0.0.7")
    assert request_address(request) == "10.0.0.7"


def test_the_trusted_header_is_believed_and_only_its_last_entry(settings) -> None:  # type: ignore[no-untyped-def]
    settings.TRUSTED_PROXY_HEADER = "X-Forwarded-For"
    request = RequestFactory().get(
        "/", HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.23", REMOTE_ADDR="10.0.0.7"
    )
    assert request_address(request) == "198.51.100.23"
    assert address_from("10.0.0.7", {}) == "10.0.0.7"  # header missing: the peer


def test_garbage_is_no_address(settings) -> None:  # type: ignore[no-untyped-def]
    settings.TRUSTED_PROXY_HEADER = "X-Real-IP"
    assert address_from("10.0.0.7", {"X-Real-IP": "not-an-ip,<script>"}) is None
    assert address_from(None, {}) is None
    assert address_from("2001:DB8::1", {}) == "2001:db8::1"


def test_a_websocket_scope_is_read_the_same_way(settings) -> None:  # type: ignore[no-untyped-def]
    settings.TRUSTED_PROXY_HEADER = "X-Real-IP"
    scope = {"client": ("10.0.0.7", 5000), "headers": [(b"x-real-ip", b"192.0.2.44")]}
    assert scope_address(scope) == "192.0.2.44"
