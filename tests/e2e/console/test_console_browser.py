"""An admin's journey through the console in headless Chromium against a live daphne that
serves the tiny model, with a tenant's program calling the API between the admin's steps.

Each step saves a screenshot (`make screenshots` writes them to docs/img/console/). The hours
before the test are seeded as rows (seed.py); everything the test itself does goes through the
API and reaches the pages the way production traffic does: Redis counters, then flush()."""

import csv
import io
import re
from dataclasses import dataclass

import pytest
from django.db.models import Sum
from django.utils import timezone
from selenium.webdriver.support.ui import Select

from pages.tests.roles import ensure_roles
from ratelimit.flush import flush
from tenants.models import AdminAction, ApiKey, Tenant, ThrottleEvent, UsageMinute
from tenants.services import api_key_issue, tenant_create
from tests.e2e.console.apiclient import NodeApi, wait_until
from tests.e2e.console.browser import (
    STAFF_PASSWORD,
    STAFF_USERNAME,
    TOKEN,
    WINDOW,
    ConsoleBrowser,
    attribute,
)
from tests.e2e.console.seed import seed_throttles, seed_usage

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CALLS = 3  # completions made right after the key is issued
GRACE_S = 8  # the rotation's grace: long enough to call with the old token on a busy machine
LOW_RPM = 2  # the limit that forces a 429


@dataclass
class Seeded:
    """What the seeded history adds to the node's totals."""

    requests: int = 0
    errors: int = 0
    throttled: int = 0

    def add(self, usage: dict[str, int], throttled: dict[str, int]) -> None:
        self.requests += usage["requests"]
        self.errors += usage["errors"]
        self.throttled += sum(throttled.values())


def key_totals(key: ApiKey) -> dict[str, int]:
    sums = UsageMinute.objects.filter(api_key=key).aggregate(r=Sum("requests"), e=Sum("errors"))
    return {"requests": sums["r"] or 0, "errors": sums["e"] or 0}


def flush_until(check, timeout: float = 10) -> None:
    """Move the Redis buffers to Postgres until `check()` holds (an error is counted by a task
    that may end just after its response was sent)."""

    def moved() -> bool:
        flush()
        return check()

    wait_until(moved, timeout, interval=0.1)


def sign_in(console: ConsoleBrowser) -> None:
    console.open("/console/")
    assert console.path().startswith("/console/login/?next=/console/")
    console.step("sign-in")
    console.login(STAFF_USERNAME, STAFF_PASSWORD)
    assert console.path() == "/console/"
    assert "Create the first tenant" in console.text()
    console.step("overview-first-visit")


def create_tenant(console: ConsoleBrowser) -> Tenant:
    console.create_tenant("Not A Slug", rpm=-5)
    errors = console.field_errors("#new-tenant")
    assert any(e.startswith("Use 1-64 lowercase letters") for e in errors)
    assert any(e.startswith("Requests per minute must be a whole number") for e in errors)
    console.step("tenant-form-errors", focus="#new-tenant")
    console.create_tenant("acme", "Acme Corp", rpm=600, tpm=100000, max_inflight=8)
    assert console.path() == "/console/tenants/acme/"
    assert "Tenant “acme” created" in console.messages()[0]
    console.step("tenant-created")
    return Tenant.objects.get(slug="acme")


def issue_key(console: ConsoleBrowser, api: NodeApi) -> tuple[ApiKey, str]:
    console.allow_clipboard()
    token = console.issue_key("backend", expires="90d")
    match = TOKEN.match(token)
    assert match, "the token page shows a token of the documented shape"
    assert api.models_status(token) == 200
    assert console.copy_token() == token
    console.step("token-shown-once", mask="#token")
    # Back and forward again: the page was no-store, so the browser must not show it again.
    console.driver.back()
    console.driver.forward()
    assert token not in console.driver.page_source
    return ApiKey.objects.get(key_id=match.group(1)), token


def other_tenants_traffic(seeded: Seeded) -> None:
    for slug, name, scale in (("globex", "Globex", 25), ("initech", "Initech", 9)):
        tenant = tenant_create(slug=slug, name=name, limits={"rpm": 300}, actor="cli:seed")
        key = api_key_issue(tenant=tenant, name="prod", actor="cli:seed").api_key
        throttled = seed_throttles(key, every=23) if slug == "initech" else {}
        seeded.add(seed_usage(key, scale=scale), throttled)


def call_the_api_and_see_usage(
    console: ConsoleBrowser, api: NodeApi, key: ApiKey, token: str, seeded: Seeded
) -> None:
    # acme's one key: the tenant's requests chart is that key's (the page charts the tenant and
    # its busiest keys, not one chart per key).
    chart = "chart-tenant-requests"
    console.open_tenant("acme")
    assert console.chart_totals(chart) == {"accepted": 0, "errors": 0, "429s": 0}
    usage, throttled = seed_usage(key), seed_throttles(key)  # the hours before today's calls
    seeded.add(usage, throttled)
    console.open_tenant("acme")
    before = console.chart_totals(chart)
    assert before == {
        "accepted": usage["requests"],
        "errors": usage["errors"],
        "429s": sum(throttled.values()),
    }
    answers = [api.complete(token) for _ in range(CALLS)]
    assert [a.status for a in answers] == [200] * CALLS
    assert all(a.body["usage"]["prompt_tokens"] > 0 for a in answers)
    bad = api.complete(token, temperature=5)
    assert bad.status == 400 and bad.body["error"]["param"] == "temperature"
    expected = {"requests": usage["requests"] + CALLS, "errors": usage["errors"] + 1}
    flush_until(lambda: key_totals(key) == expected)
    console.open_tenant("acme")
    after = console.chart_totals(chart)
    assert after == {
        **before,
        "accepted": before["accepted"] + CALLS,
        "errors": before["errors"] + 1,
    }
    console.step("key-usage-chart", focus="#usage")
    readout = console.hover_chart(chart, 0.97)
    assert re.fullmatch(r"\d\d:\d\d UTC · accepted \d+ · errors \d+ · 429s \d+", readout), readout


def rotate_with_short_grace(
    console: ConsoleBrowser, api: NodeApi, key: ApiKey, old_token: str
) -> str:
    console.open_tenant("acme")
    new_token = console.rotate_key(key.key_id, custom_grace=f"{GRACE_S}s")
    # Inside the grace both tokens work (checked first: the grace is short).
    assert api.complete(old_token).status == 200
    assert api.complete(new_token).status == 200
    match = TOKEN.match(new_token)
    assert new_token != old_token and match and match.group(1) == key.key_id
    assert f"keeps working for {GRACE_S}s" in console.find("#token-note").text
    console.step("rotated-token", mask="#token")
    console.open_tenant("acme")
    assert console.key_state(key.key_id) == "rotating"
    key.refresh_from_db()
    assert key.previous_valid_until is not None
    wait_until(lambda: api.models_status(old_token) == 401, GRACE_S + 10, interval=0.25)
    assert timezone.now() >= key.previous_valid_until  # refused only once the grace was over
    assert api.complete(new_token).status == 200
    console.open_tenant("acme")
    assert console.key_state(key.key_id) == "active"
    console.step("rotation-grace-over", focus="#keys")
    return new_token


def requests_limit_of(api: NodeApi, token: str) -> str:
    answer = api.complete(token)
    assert answer.status == 200, answer.body
    return answer.headers["x-ratelimit-limit-requests"]


def edit_a_limit(console: ConsoleBrowser, api: NodeApi, token: str) -> None:
    console.set_limits(burst_percent=0)
    assert "Burst percent must be a whole number from 1 to 100." in console.field_errors(
        "#limits-form"
    )
    console.step("limits-error", focus="#limits")
    assert requests_limit_of(api, token) == "600"
    console.set_limits(burst_percent=20, rpm=1200)
    assert any(m.startswith("Limits saved (rpm)") for m in console.messages())
    change = AdminAction.objects.filter(action=AdminAction.Action.LIMITS_CHANGED).first()
    assert change and change.before is not None and change.after is not None
    assert change.actor == f"console:{STAFF_USERNAME}"
    assert (change.before["rpm"], change.after["rpm"]) == (600, 1200)
    # The next responses follow the saved limit (every worker's key cache; about half a second,
    # with a margin for a busy machine).
    wait_until(lambda: requests_limit_of(api, token) == "1200", 15.0, interval=0.05)
    console.step("limits-saved")


def force_a_429(console: ConsoleBrowser, api: NodeApi, key: ApiKey, token: str) -> None:
    console.set_limits(rpm=LOW_RPM)
    # 1200 -> 2 is a cut of more than half: nothing is saved until it is confirmed.
    assert Tenant.objects.get(slug="acme").rpm == 1200
    assert console.confirm_limits() == ["rpm"]
    assert any(m.startswith("Limits saved (rpm)") for m in console.messages())

    def refused():
        answer = api.complete(token)
        assert answer.status in (200, 429), answer.body
        return answer if answer.status == 429 else None

    answer = wait_until(refused, 10, interval=0.05)
    assert answer.body["error"]["code"] == "rate_limit_exceeded"
    assert answer.headers["x-ratelimit-limit-requests"] == str(LOW_RPM)
    assert int(answer.headers["retry-after"]) >= 1
    rows = ThrottleEvent.objects.filter(api_key=key, reason="tenant-rpm")
    flush_until(lambda: rows.aggregate(n=Sum("count"))["n"] == 1)


def find_the_429(console: ConsoleBrowser, key: ApiKey) -> None:
    console.open("/console/tenants/acme/throttles/")
    Select(console.find("#id_key")).select_by_value(key.key_id)
    Select(console.find("#id_reason")).select_by_value("tenant-rpm")
    console.submit("#throttle-filters button[type=submit]")
    assert console.find("#throttle-summary").text == "tenant-rpm: 1"
    (row,) = console.find_all("#throttle-table tbody tr")
    assert key.key_id in row.text and "127.0.0.1" in row.text
    console.step("throttle-audit")
    export = attribute(console.find("#csv-export"), "href").removeprefix(console.base_url)
    rows = list(csv.DictReader(io.StringIO(console.fetch_text(export))))
    assert [(r["key_id"], r["reason"], r["count"]) for r in rows] == [
        (key.key_id, "tenant-rpm", "1")
    ]


def revoke(console: ConsoleBrowser, api: NodeApi, key: ApiKey, token: str) -> None:
    console.open_tenant("acme")
    console.start_revoke(key.key_id)
    console.confirm_revoke("not-the-id")
    assert "That is not this key's id; nothing was revoked." in console.field_errors("#revoke-form")
    assert api.models_status(token) == 200
    console.step("revoke-confirmation")
    console.confirm_revoke(key.key_id)
    assert console.key_state(key.key_id) == "revoked"
    wait_until(lambda: api.models_status(token) == 401, 15.0)
    console.step("key-revoked", focus="#keys")


def read_the_audit_log(console: ConsoleBrowser) -> None:
    console.open("/console/audit/?tenant=acme")
    change = console.find("tr[data-action='tenant.limits_changed'] .diff tr.changed")
    assert change.get_attribute("data-field") == "rpm"
    assert change.text.split() == ["rpm", "1200", str(LOW_RPM)]
    actions = [r.get_attribute("data-action") for r in console.find_all("tr[data-action]")]
    assert actions == [
        "key.revoked",
        "tenant.limits_changed",
        "tenant.limits_changed",
        "key.rotated",
        "key.issued",
        "tenant.created",
    ]
    console.step("audit-log")


def stat(console: ConsoleBrowser, name: str) -> int:
    return int(attribute(console.find(f"#stat-{name} .stat-value"), "data-value"))


def see_the_overview(console: ConsoleBrowser, api: NodeApi, seeded: Seeded) -> None:
    flush()
    console.open("/console/")
    accepted, refused, errors = api.tally[200], api.tally[429], api.tally[400]
    assert (refused, errors) == (1, 1) and accepted > CALLS
    assert stat(console, "requests") == seeded.requests + accepted
    assert stat(console, "throttled") == seeded.throttled + refused
    assert stat(console, "errors") == seeded.errors + errors
    assert console.chart_totals("chart-requests") == {
        "accepted": seeded.requests + accepted,
        "errors": seeded.errors + errors,
    }
    assert console.chart_totals("chart-throttled") == {"throttled": seeded.throttled + refused}
    busiest = [r.text.split()[0] for r in console.find_all("#busiest tbody tr")]
    assert busiest == ["acme", "globex", "initech"]
    throttled = [r.text.split()[0] for r in console.find_all("#most-throttled tbody tr")]
    assert throttled == ["acme", "initech"]
    console.step("overview")
    console.step("overview-tenants", focus=".columns")


def run_the_business(console: ConsoleBrowser) -> None:
    """Issue 17's pages: quota status, the tenants list's quota column, suspension, console
    users, and a phone's view (appended, so the earlier screenshots keep their numbers)."""
    console.open_tenant("acme")
    assert console.find("#quota-table tr[data-period='tokens_per_day']")
    console.step("quota-status", focus="#quota")
    console.open("/console/tenants/")
    assert [r.get_attribute("data-slug") for r in console.find_all("#tenants tbody tr")]
    console.step("tenants-list")
    console.open("/console/tenants/globex/suspend/")
    console.fill("#id_confirm", "globex")
    console.fill("#id_reason", "invoice overdue")
    console.submit("#suspend-form button[type=submit]")
    assert "suspended since" in console.find("#suspended-badge").text
    assert not Tenant.objects.get(slug="globex").active
    console.step("tenant-suspended")
    ensure_roles()  # a transactional test before this one may have emptied the groups
    console.open("/console/users/")
    console.fill("#id_username", "auditor")
    Select(console.find("#id_role")).select_by_value("Viewer")
    console.fill("#id_password1", "a long enough passphrase 7")
    console.fill("#id_password2", "a long enough passphrase 7")
    console.submit("#new-user button[type=submit]")
    assert console.find("[data-username='auditor']")
    console.step("users")
    console.driver.set_window_size(390, 844)
    try:
        console.open("/console/tenants/acme/")
        width = console.driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= console.driver.execute_script("return window.innerWidth")
        console.step("phone-tenant")
    finally:
        console.driver.set_window_size(*WINDOW)


def test_an_admin_runs_a_tenant_from_the_console(
    console: ConsoleBrowser, node_api: NodeApi, staff_account
) -> None:
    seeded = Seeded()
    sign_in(console)
    create_tenant(console)
    key, token = issue_key(console, node_api)
    other_tenants_traffic(seeded)
    call_the_api_and_see_usage(console, node_api, key, token, seeded)
    token = rotate_with_short_grace(console, node_api, key, token)
    edit_a_limit(console, node_api, token)
    force_a_429(console, node_api, key, token)
    find_the_429(console, key)
    revoke(console, node_api, key, token)
    read_the_audit_log(console)
    see_the_overview(console, node_api, seeded)
    run_the_business(console)
    assert len(console.taken) == 22
