"""A tenant's 429 audit: filters by key, reason and date range, and the CSV export."""

import csv
import io
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from pages.throttle_views import CSV_COLUMNS
from tenants.services import api_key_issue, tenant_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def audit(issued, add_throttle):
    """Two keys of acme with 429s of two reasons, one of them two days old."""
    other = api_key_issue(tenant=issued.api_key.tenant, name="=HYPERLINK(1)", actor="t").api_key
    add_throttle(issued.api_key, 1, 5, "key-rpm", ["203.0.113.9"])
    add_throttle(issued.api_key, 2, 7, "tenant-tpm")
    add_throttle(other, 3, 11, "key-rpm", ["-2+3", "198.51.100.4"])
    add_throttle(issued.api_key, 60 * 48, 13, "key-rpm")
    return issued.api_key, other


def body(response) -> str:
    """A streamed CSV's text (the test client reads the stream to its end)."""
    assert response.streaming
    return b"".join(response).decode()


def rows_of(response) -> list[tuple[str, str, int]]:
    return [(e.api_key.key_id, e.reason, e.count) for e in response.context["page"].object_list]


def test_it_lists_every_429_row_newest_first(staff: Client, audit) -> None:
    first, other = audit
    response = staff.get("/console/tenants/acme/throttles/")
    assert rows_of(response) == [
        (first.key_id, "key-rpm", 5),
        (first.key_id, "tenant-tpm", 7),
        (other.key_id, "key-rpm", 11),
        (first.key_id, "key-rpm", 13),
    ]
    assert response.context["summary"] == [
        {"reason": "key-rpm", "total": 29},
        {"reason": "tenant-tpm", "total": 7},
    ]


def test_it_filters_by_key_reason_and_days(staff: Client, audit) -> None:
    first, other = audit
    url = "/console/tenants/acme/throttles/"
    by_key = staff.get(url, {"key": other.key_id})
    assert rows_of(by_key) == [(other.key_id, "key-rpm", 11)]
    by_reason = staff.get(url, {"reason": "tenant-tpm"})
    assert rows_of(by_reason) == [(first.key_id, "tenant-tpm", 7)]
    event = first.throttles.order_by("minute").first()
    day = event.minute.date().isoformat()
    by_day = staff.get(url, {"since": day, "until": day})
    assert rows_of(by_day) == [(first.key_id, "key-rpm", 13)]


def test_a_backwards_date_range_is_explained(staff: Client, audit) -> None:
    response = staff.get(
        "/console/tenants/acme/throttles/", {"since": "2026-05-02", "until": "2026-05-01"}
    )
    assert response.context["form"].errors["until"] == ["“To” must be on or after “From”."]
    assert rows_of(response) == []
    assert "“To” must be on or after “From”." in response.content.decode()


def test_the_csv_export_follows_the_filters(staff: Client, audit) -> None:
    first, _ = audit
    response = staff.get("/console/tenants/acme/throttles.csv", {"key": first.key_id})
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="429-audit-acme-')
    rows = list(csv.DictReader(io.StringIO(body(response))))
    assert [(r["key_id"], r["reason"], r["count"]) for r in rows] == [
        (first.key_id, "key-rpm", "5"),
        (first.key_id, "tenant-tpm", "7"),
        (first.key_id, "key-rpm", "13"),
    ]
    assert rows[0]["sample_addresses"] == "203.0.113.9"
    assert rows[0]["key_name"] == "primary"
    assert rows[0]["minute"].endswith("+00:00")


def test_the_csv_export_defuses_spreadsheet_formulas(staff: Client, audit) -> None:
    _, other = audit
    response = staff.get("/console/tenants/acme/throttles.csv", {"key": other.key_id})
    (row,) = csv.DictReader(io.StringIO(body(response)))
    assert row["key_name"] == "'=HYPERLINK(1)"
    assert row["sample_addresses"] == "'-2+3 198.51.100.4"


def test_another_tenants_429s_are_not_shown(staff: Client, audit, add_throttle) -> None:
    globex = tenant_create(slug="globex", actor="t")
    key = api_key_issue(tenant=globex, actor="t").api_key
    add_throttle(key, 1, 99)
    response = staff.get("/console/tenants/acme/throttles.csv")
    assert "99" not in [r["count"] for r in csv.DictReader(io.StringIO(body(response)))]
    page = staff.get("/console/tenants/acme/throttles/", {"key": key.key_id})
    assert page.context["form"].errors["key"] and rows_of(page) == []
    export = staff.get("/console/tenants/acme/throttles.csv", {"key": key.key_id})
    assert body(export).splitlines() == [",".join(CSV_COLUMNS)]


def test_the_csv_export_is_never_stored_by_a_cache(staff: Client, audit) -> None:
    response = staff.get("/console/tenants/acme/throttles.csv")
    assert response.status_code == 200
    directives = {d.strip() for d in response["Cache-Control"].split(",")}
    assert {"no-store", "private"} <= directives
    assert "public" not in directives


def test_the_csv_is_bounded_to_the_chosen_days(staff: Client, audit, add_throttle) -> None:
    first, _ = audit
    add_throttle(first, 60 * 24 * 45, 77)  # 45 days ago: outside the default 30 days
    rows = list(csv.DictReader(io.StringIO(body(staff.get("/console/tenants/acme/throttles.csv")))))
    assert "77" not in [r["count"] for r in rows] and rows
    day = (timezone.now() - timedelta(days=45)).date().isoformat()
    only = staff.get("/console/tenants/acme/throttles.csv", {"since": day, "until": day})
    assert [r["count"] for r in csv.DictReader(io.StringIO(body(only)))] == ["77"]
