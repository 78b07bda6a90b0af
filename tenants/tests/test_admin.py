"""The Django admin: raw records read-only, never a secret or hash, and the rotate and revoke
actions (rotation shows the new token once, on its own no-store page)."""

import re

import pytest
from asgiref.sync import async_to_sync
from django.contrib.messages import get_messages
from django.test import Client
from django.utils import timezone

from tenants.auth import authenticate_token
from tenants.keycache import key_cache
from tenants.models import AdminAction, ApiKey, ThrottleEvent, UsageMinute
from tenants.services import api_key_issue, tenant_create

# Transactional: the key cache reads rows from its own thread (tenants/keycache.py), which
# sees only what is committed.
pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/tenants/apikey/"
TOKEN = re.compile(r'value="(sk_[0-9A-Za-z]{12}_[0-9A-Za-z]{32,})" class="rotated-token"')


def authenticate(token: str):
    key_cache.clear()
    return async_to_sync(authenticate_token)(token)


def first_group(pattern: str | re.Pattern[str], html: str) -> str:
    match = re.search(pattern, html)
    assert match, f"{pattern} not in the page"
    return match.group(1)


def action(client: Client, name: str, key: ApiKey, **extra: object):
    return client.post(CHANGELIST, {"action": name, "_selected_action": [key.pk], **extra})


def test_key_pages_never_show_a_secret_or_hash(admin_client: Client, issued) -> None:
    key = issued.api_key
    secret = issued.token.rsplit("_", 1)[1]
    for url in (CHANGELIST, f"{CHANGELIST}{key.pk}/change/"):
        html = admin_client.get(url).content.decode()
        assert key.key_id in html
        assert key.secret_hash not in html and secret not in html and "secret_hash" not in html


def test_rotation_asks_for_a_grace_then_shows_the_new_token_once(
    admin_client: Client, issued
) -> None:
    ask = action(admin_client, "rotate_selected", issued.api_key)
    assert ask.status_code == 200 and "Grace period" in ask.content.decode()
    once = first_group(r'name="once" value="([^"]+)"', ask.content.decode())
    fields = {"apply": "1", "once": once, "grace": "5m"}
    shown = action(admin_client, "rotate_selected", issued.api_key, **fields)
    token = first_group(TOKEN, shown.content.decode())
    assert "no-store" in shown["Cache-Control"]
    assert not [m for m in get_messages(shown.wsgi_request) if token in str(m)]
    assert authenticate(token) is not None and authenticate(issued.token) is not None
    assert AdminAction.objects.get(action="key.rotated").actor == "admin:admin"
    again = action(admin_client, "rotate_selected", issued.api_key, **fields)
    assert not TOKEN.search(again.content.decode())
    assert ApiKey.objects.get().last4 == token[-4:]


def test_a_bad_grace_is_explained_and_rotates_nothing(admin_client: Client, issued) -> None:
    fields = {"apply": "1", "once": "x" * 20, "grace": "custom", "custom_grace": "later"}
    response = action(admin_client, "rotate_selected", issued.api_key, **fields)
    assert "“later” is not a duration" in response.content.decode()
    assert ApiKey.objects.get().secret_hash == issued.api_key.secret_hash


def test_revocation_is_confirmed_first(admin_client: Client, issued) -> None:
    ask = action(admin_client, "revoke_selected", issued.api_key)
    assert "Yes, revoke" in ask.content.decode()
    assert authenticate(issued.token) is not None
    done = action(admin_client, "revoke_selected", issued.api_key, apply="1")
    assert done.status_code == 302
    assert authenticate(issued.token) is None
    assert AdminAction.objects.get(action="key.revoked").actor == "admin:admin"


@pytest.mark.parametrize("model", ["usageminute", "throttleevent", "adminaction", "tenant"])
def test_records_are_read_only(admin_client: Client, issued, model: str) -> None:
    assert admin_client.get(f"/admin/tenants/{model}/add/").status_code == 403
    listing = admin_client.get(f"/admin/tenants/{model}/").content.decode()
    assert f'href="/admin/tenants/{model}/add/"' not in listing


def test_usage_and_429_lists_have_filters_and_a_date_hierarchy(admin_client: Client, issued):
    minute = timezone.now().replace(second=0, microsecond=0)
    globex = tenant_create(slug="globex", actor="test")
    other = api_key_issue(tenant=globex, actor="test")
    # Django shows a filter only when it has at least two choices.
    for key, reason in ((issued.api_key, "key-rpm"), (other.api_key, "tenant-tpm")):
        UsageMinute.objects.create(tenant=key.tenant, api_key=key, minute=minute, requests=3)
        ThrottleEvent.objects.create(
            tenant=key.tenant,
            api_key=key,
            reason=reason,
            minute=minute,
            count=4,
            first_seen=minute,
            last_seen=minute,
        )
    filters = {"usageminute": ["tenant", "api key"], "throttleevent": ["tenant", "reason"]}
    for model, titles in filters.items():
        html = admin_client.get(f"/admin/tenants/{model}/").content.decode()
        assert '<nav class="toplinks">' in html and str(minute.year) in html
        for title in titles:
            assert f'data-filter-title="{title}"' in html
        assert admin_client.post(f"/admin/tenants/{model}/1/change/", {}).status_code == 403
