"""Strict-Transport-Security (SECURE_HSTS_SECONDS): sent on HTTPS answers only, when set."""

import os
import subprocess
import sys

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

PAGE = "/console/login/"
YEAR = 31536000


def test_the_environment_sets_it_and_it_is_off_by_default() -> None:
    code = "import console.settings as s; print(s.SECURE_HSTS_SECONDS, s.SECURE_HSTS_PRELOAD)"

    def loaded(**env: str) -> str:
        # A fresh interpreter reads the environment as any entry point would (DEBUG on: no
        # secrets needed); the variables under test are removed first, then set.
        names = ("SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD")
        clean = {k: v for k, v in os.environ.items() if k not in names}
        result = subprocess.run(
            [sys.executable, "-c", code],
            env={**clean, "DEBUG": "true", **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert loaded() == "0 False"
    assert loaded(SECURE_HSTS_SECONDS=str(YEAR), SECURE_HSTS_PRELOAD="true") == f"{YEAR} True"


def test_an_https_answer_carries_strict_transport_security_when_set(settings) -> None:
    settings.SECURE_HSTS_SECONDS = YEAR
    response = Client().get(PAGE, secure=True)
    assert response.status_code == 200
    assert response["Strict-Transport-Security"] == f"max-age={YEAR}"


def test_subdomains_and_preload_are_added_when_asked(settings) -> None:
    settings.SECURE_HSTS_SECONDS = YEAR
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = settings.SECURE_HSTS_PRELOAD = True
    response = Client().get(PAGE, secure=True)
    assert response["Strict-Transport-Security"] == f"max-age={YEAR}; includeSubDomains; preload"


def test_behind_the_proxy_its_https_header_makes_the_request_secure(settings) -> None:
    # BEHIND_PROXY: Traefik (or cloudflared, which it trusts) says the client used HTTPS.
    settings.SECURE_HSTS_SECONDS = YEAR
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    response = Client().get(PAGE, headers={"X-Forwarded-Proto": "https"})
    assert response["Strict-Transport-Security"] == f"max-age={YEAR}"


@pytest.mark.parametrize(("seconds", "secure"), [(YEAR, False), (0, True)])
def test_no_header_over_plain_http_or_when_off(settings, seconds: int, secure: bool) -> None:
    # Over plain HTTP a browser ignores the header (RFC 6797), so it is never sent there.
    settings.SECURE_HSTS_SECONDS = seconds
    response = Client().get(PAGE, secure=secure)
    assert response.status_code == 200 and "Strict-Transport-Security" not in response
