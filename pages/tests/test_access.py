"""Who gets in, and how every change is protected: staff only, POST only, CSRF, headers."""

import os
import re
import subprocess
import sys
from urllib.parse import quote

import pytest
from django.test import Client

from pages.tests.conftest import PASSWORD
from tenants.models import AdminAction, ApiKey, Tenant

pytestmark = pytest.mark.django_db


def page_urls(key_id: str) -> list[str]:
    return [
        "/console/",
        "/console/tenants/",
        "/console/tenants/acme/",
        "/console/audit/",
        "/console/tenants/acme/throttles/",
        "/console/tenants/acme/throttles.csv",
        f"/console/tenants/acme/keys/{key_id}/rotate/",
        f"/console/tenants/acme/keys/{key_id}/revoke/",
    ]


def change_urls(key_id: str) -> list[str]:
    return [
        "/console/tenants/",
        "/console/tenants/acme/limits/",
        "/console/tenants/acme/keys/",
        f"/console/tenants/acme/keys/{key_id}/rotate/",
        f"/console/tenants/acme/keys/{key_id}/revoke/",
        "/console/logout/",
    ]


def csrf_token_of(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def test_anonymous_visitors_are_sent_to_the_console_login(client: Client, issued) -> None:
    for url in page_urls(issued.api_key.key_id):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"] == f"/console/login/?next={quote(url)}"


def test_signed_in_users_without_staff_status_get_403(client: Client, plain_user, issued) -> None:
    client.force_login(plain_user)
    for url in page_urls(issued.api_key.key_id):
        assert client.get(url).status_code == 403, url
    response = client.post("/console/tenants/acme/limits/", {"rpm": 1, "burst_percent": 20})
    assert response.status_code == 403
    assert Tenant.objects.get(slug="acme").rpm == 600


def test_staff_see_every_page_with_the_protective_headers(staff: Client, issued) -> None:
    for url in page_urls(issued.api_key.key_id):
        response = staff.get(url)
        assert response.status_code == 200, url
        assert response["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response["Content-Security-Policy"]
        assert "script-src 'self'" in response["Content-Security-Policy"]
        assert "private" in response["Cache-Control"]


def test_changing_urls_refuse_get_and_change_nothing(staff: Client, issued) -> None:
    assert staff.get("/console/tenants/acme/limits/?rpm=1&burst_percent=20").status_code == 405
    assert staff.get("/console/tenants/acme/keys/?name=x&scopes=models").status_code == 405
    assert staff.get("/console/logout/").status_code == 405
    assert Tenant.objects.get(slug="acme").rpm == 600
    assert ApiKey.objects.count() == 1
    assert staff.get("/console/").status_code == 200  # still signed in


def test_every_form_post_without_a_csrf_token_is_refused(csrf_staff: Client, issued) -> None:
    before = AdminAction.objects.count()
    for url in change_urls(issued.api_key.key_id):
        response = csrf_staff.post(url, {"slug": "x", "rpm": 5, "burst_percent": 20})
        assert response.status_code == 403, url
    assert AdminAction.objects.count() == before
    assert Tenant.objects.get(slug="acme").rpm == 600
    assert ApiKey.objects.get().revoked_at is None


def test_a_post_with_the_pages_csrf_token_goes_through(csrf_staff: Client, tenant) -> None:
    page = csrf_staff.get("/console/tenants/acme/").content.decode()
    data: dict[str, int | str] = {"rpm": 700, "tpm": 100000, "burst_percent": 20}
    data["csrfmiddlewaretoken"] = csrf_token_of(page)
    response = csrf_staff.post("/console/tenants/acme/limits/", data)
    assert response.status_code == 302
    assert Tenant.objects.get(slug="acme").rpm == 700


def test_staff_sign_in_and_land_where_they_were_going(client: Client, staff_user) -> None:
    page = client.get("/console/login/?next=/console/audit/")
    assert page.status_code == 200
    assert "no-store" in page["Cache-Control"]
    response = client.post(
        "/console/login/", {"username": "ada", "password": PASSWORD, "next": "/console/audit/"}
    )
    assert response.status_code == 302 and response["Location"] == "/console/audit/"
    assert client.get("/console/audit/").status_code == 200


def test_sign_in_ignores_a_next_url_on_another_site(client: Client, staff_user) -> None:
    data = {"username": "ada", "password": PASSWORD, "next": "https://evil.example/"}
    response = client.post("/console/login/", data)
    assert response["Location"] == "/console/"


def test_a_wrong_password_or_a_non_staff_account_gets_the_same_message(
    client: Client, staff_user, plain_user
) -> None:
    for username, password in (("ada", "wrong password"), ("bob", PASSWORD)):
        response = client.post("/console/login/", {"username": username, "password": password})
        assert response.status_code == 400
        assert "correct username and password for a staff account" in response.content.decode()
    assert client.get("/console/").status_code == 302


def test_signing_out_ends_the_session(staff: Client) -> None:
    response = staff.post("/console/logout/")
    assert response.status_code == 302 and response["Location"] == "/console/login/"
    assert staff.get("/console/").status_code == 302


def test_cookies_are_secure_when_debug_is_off() -> None:
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY, "
        "s.X_FRAME_OPTIONS)"
    )
    env = {**os.environ, "DEBUG": "false", "DJANGO_SETTINGS_MODULE": "console.settings"}
    env.update(SECRET_KEY="k" * 48, API_KEY_PEPPER="p" * 48)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["True", "True", "True", "DENY"], out.stderr
