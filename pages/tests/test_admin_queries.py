"""The Django admin's list of admin actions reads its rows in a fixed number of queries, however
many rows the page shows (it ran one query per row: 108 queries for 100 rows)."""

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from tenants.models import AdminAction, Tenant

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/tenants/adminaction/"


def add_actions(count: int, prefix: str = "t") -> None:
    tenants = [Tenant.objects.create(slug=f"{prefix}{i}", name="T") for i in range(count)]
    AdminAction.objects.bulk_create(
        AdminAction(actor="cli:root", action=AdminAction.Action.TENANT_CREATED, tenant=t)
        for t in tenants
    )


def test_the_admin_action_list_does_not_query_per_row(
    admin_client: Client, django_assert_max_num_queries
) -> None:
    add_actions(100)
    with django_assert_max_num_queries(15):
        response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    assert response.content.decode().count('class="field-key_id"') == 100
    assert "t99" in response.content.decode()


def queries_of(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured.captured_queries)


def test_its_query_count_does_not_grow_with_the_rows(admin_client: Client) -> None:
    add_actions(5, prefix="a")
    few = queries_of(admin_client, CHANGELIST)
    add_actions(50, prefix="b")
    assert queries_of(admin_client, CHANGELIST) == few
