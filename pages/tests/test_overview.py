"""The overview: node totals, busiest and most throttled tenants, and charts drawn from rows."""

import re

import pytest
from django.test import Client

from pages import charts
from pages.selectors import window
from tenants.services import api_key_issue, tenant_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def globex_key(db):
    tenant = tenant_create(slug="globex", name="Globex", actor="test")
    return api_key_issue(tenant=tenant, name="prod", actor="test").api_key


def stat(html: str, name: str) -> int:
    match = re.search(rf'id="stat-{name}".*?data-value="(\d+)"', html, re.S)
    assert match, f"no {name} figure"
    return int(match.group(1))


def legend(html: str, chart_id: str) -> dict[str, tuple[int, int]]:
    figure = html.split(f'id="{chart_id}"', 1)[1].split("</figure>", 1)[0]
    found = re.findall(r'data-label="([^"]+)" data-total="(\d+)" data-peak="(\d+)"', figure)
    return {label: (int(total), int(peak)) for label, total, peak in found}


def path_of(html: str, chart_id: str, css: str) -> str:
    figure = html.split(f'id="{chart_id}"', 1)[1].split("</figure>", 1)[0]
    match = re.search(rf'<path class="line {css}" d="([^"]*)"', figure)
    assert match, f"no {css} line in {chart_id}"
    return match.group(1)


def test_a_new_node_greets_the_admin(staff: Client) -> None:
    html = staff.get("/console/").content.decode()
    assert "Create the first tenant" in html
    assert html.count("No data in this window") == 3
    assert stat(html, "requests") == 0 and stat(html, "throttled") == 0
    assert stat(html, "errors") == 0


def test_totals_cover_the_last_day_of_every_tenant(
    staff: Client, issued, globex_key, add_usage, add_throttle
) -> None:
    add_usage(issued.api_key, 5, 7, 300, 100, errors=2)
    add_usage(globex_key, 6, 20, 50, 50, errors=1)
    add_usage(issued.api_key, 60 * 30, 999, 999, 999, errors=99)  # 30 h ago: outside the window
    add_throttle(issued.api_key, 5, 4)
    add_throttle(globex_key, 8, 9, "tenant-tpm")
    html = staff.get("/console/").content.decode()
    assert (stat(html, "requests"), stat(html, "tokens"), stat(html, "throttled")) == (27, 500, 13)
    assert stat(html, "errors") == 3
    response = staff.get("/console/")
    busiest = [(r["tenant__slug"], r["errors"]) for r in response.context["busiest"]]
    assert busiest == [("globex", 1), ("acme", 2)]
    assert [(r["tenant__slug"], r["throttled"]) for r in response.context["throttled"]] == [
        ("globex", 9),
        ("acme", 4),
    ]
    assert "Create the first tenant" not in html


def test_the_charts_are_drawn_from_the_rows(staff: Client, issued, add_usage, add_throttle):
    add_usage(issued.api_key, 10, 7, 70, 30)
    add_usage(issued.api_key, 40, 3, 30, 0, errors=2)
    add_throttle(issued.api_key, 10, 5)
    html = staff.get("/console/").content.decode()
    assert legend(html, "chart-requests") == {"accepted": (10, 7), "errors": (2, 2)}
    assert legend(html, "chart-tokens") == {"prompt + completion": (130, 100)}
    assert legend(html, "chart-throttled") == {"throttled": (5, 5)}
    # The peak sits on the top gridline of a 0-8 axis, 10 buckets before the last one.
    win = window("24h")
    x = charts._x(win.buckets - 11, win.buckets)
    peak_y = charts._y(7, charts.nice_step(7) * charts.Y_TICKS)
    assert f"{x:.1f},{peak_y:.1f}" in path_of(html, "chart-requests", "s-requests")
    assert "No data in this window" not in html


def test_a_week_window_sums_hours(staff: Client, issued, add_usage) -> None:
    add_usage(issued.api_key, 60 * 48, 6)
    add_usage(issued.api_key, 60 * 48 + 1, 4)
    day = staff.get("/console/").content.decode()
    week = staff.get("/console/?window=7d").content.decode()
    assert legend(day, "chart-requests")["accepted"] == (0, 0)
    assert legend(week, "chart-requests")["accepted"][0] == 10
    assert "Requests per hour" in week and "last 7 days" in week


def test_the_tenant_page_charts_the_tenant_and_its_busiest_keys(
    staff: Client, issued, add_usage, add_throttle
) -> None:
    second = api_key_issue(tenant=issued.api_key.tenant, name="batch", actor="test").api_key
    add_usage(issued.api_key, 2, 12)
    add_usage(second, 3, 4, errors=1)
    add_throttle(second, 3, 6)
    html = staff.get("/console/tenants/acme/").content.decode()
    assert legend(html, "chart-tenant-requests") == {
        "accepted": (16, 12),
        "errors": (1, 1),
        "429s": (6, 6),
    }
    assert legend(html, "chart-top-keys") == {
        f"{issued.api_key.key_id} {issued.api_key.name}".strip(): (12, 12),
        f"{second.key_id} batch": (4, 4),
    }


def test_a_tenant_with_40_keys_gets_one_chart_of_its_top_keys_and_the_rest(
    staff: Client, issued, add_usage
) -> None:
    keys = [
        api_key_issue(tenant=issued.api_key.tenant, name=f"k{i}", actor="t").api_key
        for i in range(39)
    ]
    for i, key in enumerate(keys):
        add_usage(key, 5, i + 1)
    html = staff.get("/console/tenants/acme/").content.decode()
    assert html.count('class="chart"') == 3  # requests, tokens, busiest keys
    lines = legend(html, "chart-top-keys")
    assert list(lines)[:5] == [f"{keys[i].key_id} k{i}" for i in (38, 37, 36, 35, 34)]
    assert lines["34 other keys"] == (sum(range(1, 35)), sum(range(1, 35)))


def test_a_tenant_with_only_errors_is_not_among_the_busiest(staff: Client, issued, add_usage):
    add_usage(issued.api_key, 3, 0, errors=4)
    response = staff.get("/console/")
    assert response.context["busiest"] == []
    assert stat(response.content.decode(), "errors") == 4
