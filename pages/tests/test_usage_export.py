"""The billing export: per UTC day and key, usage and 429s over exactly the chosen days, for a
tenant or the whole node, streamed."""

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.http import StreamingHttpResponse
from django.test import AsyncClient, Client

from pages.tests.conftest import tenants_permissions
from tenants.models import ThrottleEvent
from tenants.services import api_key_issue, tenant_create, usage_minutes_add
from tenants.usage import EXPORT_COLUMNS

pytestmark = pytest.mark.django_db

DAY = datetime(2026, 11, 3, tzinfo=UTC)


def at(day: int, hour: int = 12, minute: int = 0) -> datetime:
    return DAY + timedelta(days=day, hours=hour, minutes=minute)


@pytest.fixture
def billing(issued):
    """acme (two keys) and globex: usage on Nov 2 (last minute), 3, 4 and 5, and 429s."""
    acme_b = api_key_issue(tenant=issued.api_key.tenant, name="=cmd()", actor="t").api_key
    globex = api_key_issue(tenant=tenant_create(slug="globex", actor="t"), actor="t").api_key
    a = issued.api_key
    rows = {
        (a.tenant_id, a.pk, at(-1, 23, 59)): [100, 1, 1, 0],  # the minute before the range
        (a.tenant_id, a.pk, at(0, 0, 0)): [3, 30, 20, 1],
        (a.tenant_id, a.pk, at(0, 23, 59)): [2, 10, 5, 0],
        (a.tenant_id, acme_b.pk, at(1, 8)): [7, 70, 35, 2],
        (globex.tenant_id, globex.pk, at(1, 9)): [5, 50, 25, 0],
        (a.tenant_id, a.pk, at(2, 0, 0)): [100, 1, 1, 0],  # the day after the range
    }
    usage_minutes_add(rows=rows)
    for key, minute, count in ((a, at(0, 6), 4), (a, at(0, 7), 5), (globex, at(2, 1), 9)):
        ThrottleEvent.objects.create(
            tenant=key.tenant,
            api_key=key,
            reason="key-rpm",
            minute=minute,
            count=count,
            first_seen=minute,
            last_seen=minute,
        )
    return a, acme_b, globex


def rows_of(response) -> list[dict[str, str]]:
    assert isinstance(response, StreamingHttpResponse)
    return list(csv.DictReader(io.StringIO(b"".join(response).decode())))


def test_the_tenant_export_sums_each_day_and_key_of_the_range(staff: Client, billing) -> None:
    a, b, _ = billing
    response = staff.get(
        "/console/tenants/acme/usage.csv", {"from": "2026-11-03", "to": "2026-11-04"}
    )
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert 'filename="usage-acme-2026-11-03-2026-11-04-' in response["Content-Disposition"]
    assert "no-store" in response["Cache-Control"]
    got = rows_of(response)
    assert list(got[0]) == list(EXPORT_COLUMNS)
    assert [tuple(r.values()) for r in got] == [
        ("2026-11-03", "acme", a.key_id, a.name, "5", "40", "25", "1", "9"),
        ("2026-11-04", "acme", b.key_id, "'=cmd()", "7", "70", "35", "2", "0"),
    ]


def test_the_node_export_has_every_tenant_and_only_the_range(staff: Client, billing) -> None:
    a, b, globex = billing
    got = rows_of(staff.get("/console/usage.csv", {"from": "2026-11-04", "to": "2026-11-05"}))
    assert [(r["day"], r["tenant"], r["key_id"], r["requests"], r["throttled"]) for r in got] == [
        ("2026-11-04", "acme", b.key_id, "7", "0"),
        ("2026-11-04", "globex", globex.key_id, "5", "0"),
        ("2026-11-05", "acme", a.key_id, "100", "0"),
        ("2026-11-05", "globex", globex.key_id, "0", "9"),
    ]


def test_a_bad_range_is_a_400_that_says_why(staff: Client, billing) -> None:
    for query, message in (
        ({"from": "2026-13-01", "to": "2026-11-04"}, "“From” must be a date as YYYY-MM-DD"),
        ({"from": "2026-11-04", "to": "2026-11-01"}, "“To” must be on or after “From”."),
        ({"from": "2020-01-01", "to": "2026-11-01"}, "at most 400 days"),
    ):
        response = staff.get("/console/usage.csv", query)
        assert response.status_code == 400
        assert message in response.content.decode()


def test_month_to_date_and_named_windows_choose_the_days(staff: Client, issued) -> None:
    response = staff.get("/console/tenants/acme/usage.csv", {"window": "mtd"})
    disposition = response["Content-Disposition"]
    today = datetime.now(UTC).date()
    assert f"usage-acme-{today.replace(day=1)}-{today}-" in disposition
    assert rows_of(response) == []


# The async client's database work runs in other threads: they must see committed rows.
@pytest.mark.django_db(transaction=True)
async def test_the_export_is_streamed_by_an_async_iterator(staff_user, billing) -> None:
    client = AsyncClient()
    await client.aforce_login(staff_user)
    response = await client.get("/console/usage.csv", {"from": "2026-11-03", "to": "2026-11-05"})
    assert isinstance(response, StreamingHttpResponse) and response.is_async
    chunks = [chunk async for chunk in response.streaming_content]
    assert chunks[0].decode().startswith("day,tenant,key_id")
    assert len(b"".join(chunks).decode().splitlines()) == 1 + 5


def test_the_export_needs_the_usage_view_permission(staff_user, billing) -> None:
    staff_user.user_permissions.set(
        tenants_permissions("view_").exclude(codename="view_usageminute")
    )
    client = Client()
    client.force_login(staff_user)
    response = client.get("/console/usage.csv", {"from": "2026-11-03", "to": "2026-11-03"})
    assert response.status_code == 403
    assert "tenants.view_usageminute" in response.content.decode()


def test_a_view_only_account_may_export(staff_user, billing) -> None:
    staff_user.user_permissions.set(tenants_permissions("view_"))
    client = Client()
    client.force_login(staff_user)
    response = client.get(
        "/console/tenants/acme/usage.csv", {"from": "2026-11-03", "to": "2026-11-03"}
    )
    assert response.status_code == 200 and len(rows_of(response)) == 1
