"""Finding, sorting and paging tenants and a tenant's keys."""

import pytest
from django.test import Client

from pages.views import KEYS_PAGE_SIZE, TENANTS_PAGE_SIZE
from tenants.services import api_key_issue, tenant_create

pytestmark = pytest.mark.django_db


def slugs(response) -> list[str]:
    return [t.slug for t in response.context["page"].object_list]


def key_ids(response) -> list[str]:
    return [k.key_id for k in response.context["page"].object_list]


def test_the_tenants_list_finds_by_slug_or_name(staff: Client) -> None:
    tenant_create(slug="acme", name="Acme Rockets", actor="t")
    tenant_create(slug="globex", name="Globex Corp", actor="t")
    tenant_create(slug="initech", name="Initech Rockets", actor="t")
    assert slugs(staff.get("/console/tenants/", {"q": "rocket"})) == ["acme", "initech"]
    assert slugs(staff.get("/console/tenants/", {"q": "GLOB"})) == ["globex"]
    none = staff.get("/console/tenants/", {"q": "umbrella"})
    assert (
        slugs(none) == []
        and "No tenant’s slug or name contains “umbrella”" in none.content.decode()
    )


def test_the_tenants_list_sorts_by_usage_and_pages(staff: Client, add_usage) -> None:
    for i in range(TENANTS_PAGE_SIZE + 5):
        tenant = tenant_create(slug=f"t{i:03d}", actor="t")
        if i in (7, 3, 52):
            key = api_key_issue(tenant=tenant, actor="t").api_key
            add_usage(key, 2, {7: 50, 3: 20, 52: 90}[i])
    first = staff.get("/console/tenants/", {"sort": "-requests"})
    assert slugs(first)[:3] == ["t052", "t007", "t003"]
    assert len(slugs(first)) == TENANTS_PAGE_SIZE
    assert slugs(staff.get("/console/tenants/", {"sort": "requests"}))[-1] != "t052"
    second = staff.get("/console/tenants/", {"sort": "-slug", "page": "2"})
    assert slugs(second) == [f"t{i:03d}" for i in range(4, -1, -1)]
    # The header links keep the sort's opposite and the window, and drop the page.
    html = second.content.decode()
    assert 'href="?sort=slug"' in html and "page=2&amp;sort" not in html
    # An unknown sort keeps the default order (by slug) rather than failing.
    assert slugs(staff.get("/console/tenants/", {"sort": "secret_hash"}))[0] == "t000"


def test_a_tenants_keys_are_found_by_key_id_and_paged(staff: Client, issued, add_usage) -> None:
    tenant = issued.api_key.tenant
    keys = [api_key_issue(tenant=tenant, name=f"svc-{i}", actor="t").api_key for i in range(39)]
    add_usage(keys[17], 3, 40)
    page = staff.get(f"/console/tenants/{tenant.slug}/")
    assert len(key_ids(page)) == KEYS_PAGE_SIZE
    assert staff.get(f"/console/tenants/{tenant.slug}/", {"page": 2}).context["page"].number == 2
    wanted = keys[22].key_id
    found = staff.get(f"/console/tenants/{tenant.slug}/", {"q": wanted})
    assert key_ids(found) == [wanted]
    assert key_ids(staff.get(f"/console/tenants/{tenant.slug}/", {"q": "svc-7"})) == [
        keys[7].key_id
    ]
    busiest = staff.get(f"/console/tenants/{tenant.slug}/", {"sort": "-requests"})
    assert key_ids(busiest)[0] == keys[17].key_id
    assert (
        "No key id or name contains"
        in staff.get(f"/console/tenants/{tenant.slug}/", {"q": "nope"}).content.decode()
    )


def test_a_date_range_and_month_to_date_choose_the_window(staff: Client, issued) -> None:
    ranged = staff.get("/console/tenants/", {"from": "2026-11-01", "to": "2026-11-30"})
    win = ranged.context["win"]
    assert (win.days, win.unit) == (
        (win.start.date(), win.start.date().replace(day=30)),
        "day",
    )
    assert "2026-11-01 to 2026-11-30" in ranged.content.decode()
    mtd = staff.get(f"/console/tenants/{issued.api_key.tenant.slug}/", {"window": "mtd"})
    assert mtd.context["win"].start.day == 1 and "month to date" in mtd.content.decode()
    assert 'id="window-mtd"' in mtd.content.decode()
    bad = staff.get("/console/", {"from": "2026-11-05", "to": "2026-11-01"})
    assert bad.status_code == 200 and bad.context["win"].name == "24h"
    assert "“To” must be on or after “From”." in bad.content.decode()
