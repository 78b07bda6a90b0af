"""The audit log of admin actions: who, what, when, and the limits before and after."""

import re

import pytest
from django.test import Client

from tenants.models import AdminAction
from tenants.services import api_key_issue, tenant_create, tenant_set_limits

pytestmark = pytest.mark.django_db


def changed_rows(html: str) -> list[tuple[str, str, str]]:
    pattern = (
        r'<tr class="changed" data-field="(\w+)"><th>\w+</th>'
        r'<td class="before">([^<]*)</td><td class="after">([^<]*)</td>'
    )
    return re.findall(pattern, html)


def test_it_shows_who_changed_which_limit_from_what_to_what(staff: Client, tenant) -> None:
    tenant_set_limits(tenant=tenant, changes={"rpm": 900, "tpm": None}, actor="cli:root")
    html = staff.get("/console/audit/").content.decode()
    assert changed_rows(html) == [("rpm", "600", "900"), ("tpm", "100000", "no limit")]
    assert "cli:root" in html and "Limits Changed" in html and "Tenant Created" in html


def test_it_filters_by_tenant_action_and_actor(staff: Client, tenant) -> None:
    globex = tenant_create(slug="globex", actor="console:grace")
    api_key_issue(tenant=globex, actor="console:grace")
    tenant_set_limits(tenant=tenant, changes={"rpm": 1}, actor="console:ada")

    def actions(**query: str) -> list[tuple[str, str]]:
        page = staff.get("/console/audit/", query).context["page"]
        return [(a.tenant.slug, a.action) for a in page.object_list]

    assert actions(tenant="globex") == [("globex", "key.issued"), ("globex", "tenant.created")]
    assert actions(action="tenant.limits_changed") == [("acme", "tenant.limits_changed")]
    assert actions(actor="grace") == [("globex", "key.issued"), ("globex", "tenant.created")]
    assert len(actions()) == 4


def test_it_pages_long_histories(staff: Client, tenant) -> None:
    for rpm in range(1, 61):
        tenant_set_limits(tenant=tenant, changes={"rpm": rpm}, actor="test")
    first = staff.get("/console/audit/?action=tenant.limits_changed")
    assert len(first.context["page"].object_list) == 50
    assert "page=2" in first.content.decode() and "action=tenant.limits_changed" in (
        first.content.decode()
    )
    second = staff.get("/console/audit/?action=tenant.limits_changed&page=2")
    assert [a.after["rpm"] for a in second.context["page"].object_list] == list(range(10, 0, -1))
    assert AdminAction.objects.count() == 61
