"""The 429 audit in the Django admin: read-only, filterable by tenant, key, reason and date."""

from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from tenants.models import ThrottleEvent

pytestmark = pytest.mark.django_db


def test_the_throttle_audit_is_read_only_and_filterable(issued) -> None:
    at = datetime(2026, 5, 4, 3, 2, tzinfo=UTC)
    ThrottleEvent.objects.create(
        tenant=issued.api_key.tenant,
        api_key=issued.api_key,
        reason="key-rpm",
        minute=at,
        count=17,
        first_seen=at,
        last_seen=at,
        sample_addresses=["192.0.2.1"],
    )
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw-123456")
    client = Client()
    client.force_login(admin)
    url = "/admin/tenants/throttleevent/"
    query = f"?tenant__id__exact={issued.api_key.tenant_id}&reason=key-rpm"
    query += f"&api_key__id__exact={issued.api_key.pk}&minute__year=2026"
    page = client.get(url + query)
    assert page.status_code == 200 and b"key-rpm" in page.content and b"17" in page.content
    assert client.get(url + "?reason=key-tpm").content.count(b"key-rpm") < page.content.count(
        b"key-rpm"
    )
    assert client.get(url + "add/").status_code == 403
    event = ThrottleEvent.objects.get()
    assert client.post(f"{url}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert ThrottleEvent.objects.count() == 1
