"""Issuing, rotating and revoking keys in the console: the token is shown once, never kept,
never cached; rotation honours the chosen grace; revocation needs its confirmation."""

import logging
import re
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.utils import timezone

from tenants.auth import authenticate_token
from tenants.keycache import key_cache
from tenants.models import AdminAction, ApiKey
from tenants.services import api_key_revoke

# Transactional: the key cache reads rows from its own thread (tenants/keycache.py), which
# sees only what is committed.
pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = re.compile(
    r'id="token" class="token" type="text" value="(sk_[0-9A-Za-z]{12}_[0-9A-Za-z]+)"'
)


def once_of(html: str) -> str:
    match = re.search(r'name="once" value="([^"]+)"', html)
    assert match, "no once field"
    return match.group(1)


def token_of(html: str) -> str:
    match = TOKEN.search(html)
    assert match, "no token shown"
    return match.group(1)


def authenticate(token: str):
    key_cache.clear()
    return async_to_sync(authenticate_token)(token)


def issue(client: Client, **fields: object):
    once = once_of(client.get("/console/tenants/acme/").content.decode())
    data = {"name": "backend", "expires_in": "", "scopes": ["completions", "models"]}
    return client.post("/console/tenants/acme/keys/", {"once": once, **data, **fields})


def rotate(client: Client, key: ApiKey, **fields: object):
    url = f"/console/tenants/acme/keys/{key.key_id}/rotate/"
    once = once_of(client.get(url).content.decode())
    return client.post(url, {"once": once, **fields})


def test_an_issued_token_is_shown_once_and_works(staff: Client, tenant) -> None:
    response = issue(staff)
    assert response.status_code == 200
    html = response.content.decode()
    token = token_of(html)
    assert "Copy this token now: it is shown only once." in html
    assert 'data-copy="token"' in html
    record = authenticate(token)
    assert record.tenant_slug == "acme" and record.scopes == {"completions", "models"}
    key = ApiKey.objects.get()
    assert token.split("_")[1] == key.key_id and key.last4 == token[-4:]
    assert key.name == "backend" and key.expires_at is None
    action = AdminAction.objects.get(action=AdminAction.Action.KEY_ISSUED)
    assert action.actor == "console:ada" and action.key_id == key.key_id


def test_the_token_page_may_not_be_cached_or_kept(staff: Client, tenant) -> None:
    response = issue(staff)
    token = token_of(response.content.decode())
    assert "no-store" in response["Cache-Control"]
    secret = token.rsplit("_", 1)[1]
    session = staff.session
    assert all(secret not in str(value) for value in session.values())
    assert all(secret not in morsel.value for morsel in response.cookies.values())
    assert secret not in ApiKey.objects.get().secret_hash


def test_reloading_the_token_page_shows_no_token_and_issues_nothing(staff: Client, tenant) -> None:
    once = once_of(staff.get("/console/tenants/acme/").content.decode())
    data = {"once": once, "name": "backend", "scopes": ["models"]}
    first = staff.post("/console/tenants/acme/keys/", data)
    assert TOKEN.search(first.content.decode())
    again = staff.post("/console/tenants/acme/keys/", data, follow=True)
    assert not TOKEN.search(again.content.decode())
    assert "This form was already submitted, so nothing was done again." in (again.content.decode())
    assert ApiKey.objects.count() == 1


def test_the_token_page_cannot_be_fetched_with_get(staff: Client, tenant) -> None:
    assert staff.get("/console/tenants/acme/keys/").status_code == 405


def test_the_token_never_reaches_the_log(staff: Client, tenant, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    response = issue(staff)
    secret = token_of(response.content.decode()).rsplit("_", 1)[1]
    rotated = rotate(staff, ApiKey.objects.get(), grace="0")
    new_secret = token_of(rotated.content.decode()).rsplit("_", 1)[1]
    assert secret not in caplog.text and new_secret not in caplog.text


def test_an_issue_form_without_scopes_is_explained(staff: Client, tenant) -> None:
    response = issue(staff, scopes=[])
    assert response.status_code == 400
    assert response.context["issue_form"].errors["scopes"] == ["Pick at least one scope."]
    assert not ApiKey.objects.exists()


def test_a_key_can_be_issued_with_an_expiry(staff: Client, tenant) -> None:
    issue(staff, expires_in="7d")
    expires_at = ApiKey.objects.get().expires_at
    assert expires_at is not None
    assert abs(expires_at - (timezone.now() + timedelta(days=7))) < timedelta(seconds=30)


def test_rotation_keeps_the_old_token_for_the_chosen_grace(staff: Client, issued) -> None:
    response = rotate(staff, issued.api_key, grace="5m")
    html = response.content.decode()
    new_token = token_of(html)
    assert "The old token keeps working for 5m." in html
    assert "no-store" in response["Cache-Control"]
    assert authenticate(new_token) is not None and authenticate(issued.token) is not None
    key = ApiKey.objects.get()
    assert key.state == "rotating"
    grace_end = timezone.now() + timedelta(minutes=5)
    assert key.previous_valid_until is not None
    assert abs(key.previous_valid_until - grace_end) < timedelta(seconds=30)
    action = AdminAction.objects.get(action=AdminAction.Action.KEY_ROTATED)
    assert action.actor == "console:ada" and action.after == {"grace_seconds": 300}


def test_rotation_without_grace_ends_the_old_token_now(staff: Client, issued) -> None:
    new_token = token_of(rotate(staff, issued.api_key, grace="0").content.decode())
    assert authenticate(issued.token) is None
    assert authenticate(new_token) is not None


def test_a_custom_grace_is_parsed(staff: Client, issued) -> None:
    html = rotate(staff, issued.api_key, grace="custom", custom_grace="90s").content.decode()
    assert "The old token keeps working for 90s." in html


@pytest.mark.parametrize(
    ("custom", "message"),
    [
        ("", "Enter a custom grace such as 30s, 15m or 12h."),
        ("soon", "“soon” is not a duration: use e.g. 30s, 15m, 12h."),
        ("31d", "A grace period can be at most 30 days."),
    ],
)
def test_a_bad_custom_grace_is_explained_and_rotates_nothing(
    staff: Client, issued, custom: str, message: str
) -> None:
    response = rotate(staff, issued.api_key, grace="custom", custom_grace=custom)
    assert response.status_code == 400
    assert response.context["form"].errors["custom_grace"] == [message]
    assert ApiKey.objects.get().secret_hash == issued.api_key.secret_hash


def test_reposting_a_rotation_rotates_once(staff: Client, issued) -> None:
    url = f"/console/tenants/acme/keys/{issued.api_key.key_id}/rotate/"
    data = {"once": once_of(staff.get(url).content.decode()), "grace": "0"}
    assert TOKEN.search(staff.post(url, data).content.decode())
    hash_after_first = ApiKey.objects.get().secret_hash
    again = staff.post(url, data, follow=True)
    assert not TOKEN.search(again.content.decode())
    assert ApiKey.objects.get().secret_hash == hash_after_first


def test_revoking_needs_the_key_id_typed(staff: Client, issued) -> None:
    url = f"/console/tenants/acme/keys/{issued.api_key.key_id}/revoke/"
    assert "Type the key id to confirm" in staff.get(url).content.decode()
    wrong = staff.post(url, {"confirm": "nope"})
    assert wrong.status_code == 400
    assert wrong.context["form"].errors["confirm"] == [
        "That is not this key's id; nothing was revoked."
    ]
    assert authenticate(issued.token) is not None
    done = staff.post(url, {"confirm": issued.api_key.key_id}, follow=True)
    assert f"Key {issued.api_key.key_id} revoked" in done.content.decode()
    assert authenticate(issued.token) is None
    action = AdminAction.objects.get(action=AdminAction.Action.KEY_REVOKED)
    assert action.actor == "console:ada" and action.key_id == issued.api_key.key_id


def test_revoking_twice_says_so(staff: Client, issued) -> None:
    api_key_revoke(api_key=issued.api_key, actor="test")
    url = f"/console/tenants/acme/keys/{issued.api_key.key_id}/revoke/"
    response = staff.post(url, {"confirm": issued.api_key.key_id}, follow=True)
    assert "is already revoked" in response.content.decode()


def test_a_key_is_reached_only_through_its_own_tenant(staff: Client, issued) -> None:
    staff.post("/console/tenants/", {"slug": "globex", "burst_percent": 20})
    key_id = issued.api_key.key_id
    assert staff.get(f"/console/tenants/globex/keys/{key_id}/rotate/").status_code == 404
    assert staff.post(f"/console/tenants/globex/keys/{key_id}/revoke/").status_code == 404
