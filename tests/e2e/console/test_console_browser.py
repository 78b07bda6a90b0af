"""An admin's journey through the console in headless Chromium against a live daphne.

Each step saves a screenshot (`make screenshots` writes them to docs/img/console/). Traffic is
seeded as UsageMinute/ThrottleEvent rows until the completions API is merged; the steps that
need the API (call it with the key, rotation seen through the API, limit headers, a forced
429) are listed in docs/console.md and slot in after the matching steps below."""

import csv
import io
import re

import pytest
from asgiref.sync import async_to_sync

from tenants.auth import authenticate_token
from tenants.keycache import KeyRecord, key_cache
from tenants.models import AdminAction, ApiKey, Tenant
from tenants.services import api_key_issue, tenant_create
from tests.e2e.console.browser import STAFF_PASSWORD, STAFF_USERNAME, TOKEN, ConsoleBrowser
from tests.e2e.console.seed import seed_throttles, seed_usage

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def authenticate(token: str) -> KeyRecord | None:
    key_cache.clear()  # this process's cache would otherwise lag the server's change
    return async_to_sync(authenticate_token)(token)


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


def issue_key(console: ConsoleBrowser) -> tuple[ApiKey, str]:
    console.allow_clipboard()
    token = console.issue_key("backend", expires="90d")
    match = TOKEN.match(token)
    assert match, "the token page shows a token of the documented shape"
    assert authenticate(token).tenant_slug == "acme"
    assert console.copy_token() == token
    console.step("token-shown-once", mask="#token")
    # Back and forward again: the page was no-store, so the browser must not show it again.
    console.driver.back()
    console.driver.forward()
    assert token not in console.driver.page_source
    return ApiKey.objects.get(key_id=match.group(1)), token


def other_tenants_traffic() -> None:
    for slug, name, scale in (("globex", "Globex", 25), ("initech", "Initech", 9)):
        tenant = tenant_create(slug=slug, name=name, limits={"rpm": 300}, actor="cli:seed")
        key = api_key_issue(tenant=tenant, name="prod", actor="cli:seed").api_key
        seed_usage(key, scale=scale)
        if slug == "initech":
            seed_throttles(key, every=23)


def see_key_usage(console: ConsoleBrowser, key: ApiKey) -> dict[str, int]:
    console.open_tenant("acme")
    assert console.chart_totals(f"chart-key-{key.key_id}") == {"accepted": 0, "429s": 0}
    usage, throttled = seed_usage(key), seed_throttles(key)
    console.open_tenant("acme")
    totals = console.chart_totals(f"chart-key-{key.key_id}")
    assert totals == {"accepted": usage["requests"], "429s": sum(throttled.values())}
    console.step("key-usage-chart", focus="#usage")
    readout = console.hover_chart(f"chart-key-{key.key_id}", 0.97)
    assert re.fullmatch(r"\d\d:\d\d UTC · accepted \d+ · 429s \d+", readout), readout
    return {**usage, **throttled}


def rotate_with_short_grace(console: ConsoleBrowser, key: ApiKey, old_token: str) -> str:
    console.open_tenant("acme")
    new_token = console.rotate_key(key.key_id, custom_grace="30s")
    assert new_token != old_token and TOKEN.match(new_token).group(1) == key.key_id
    assert "keeps working for 30s" in console.find("#token-note").text
    assert authenticate(new_token) is not None
    assert authenticate(old_token) is not None  # inside the grace
    console.step("rotated-token", mask="#token")
    console.open_tenant("acme")
    assert console.key_state(key.key_id) == "rotating"
    return new_token


def edit_a_limit(console: ConsoleBrowser, token: str) -> None:
    console.set_limits(burst_percent=0)
    assert "Burst percent must be a whole number from 1 to 100." in console.field_errors(
        "#limits-form"
    )
    console.step("limits-error", focus="#limits")
    console.set_limits(burst_percent=20, rpm=1200)
    assert any(m.startswith("Limits saved (rpm)") for m in console.messages())
    change = AdminAction.objects.filter(action=AdminAction.Action.LIMITS_CHANGED).first()
    assert change.actor == f"console:{STAFF_USERNAME}"
    assert (change.before["rpm"], change.after["rpm"]) == (600, 1200)
    assert authenticate(token).tenant_limits["rpm"] == 1200
    console.step("limits-saved")


def revoke(console: ConsoleBrowser, key: ApiKey, token: str) -> None:
    console.start_revoke(key.key_id)
    console.confirm_revoke("not-the-id")
    assert "That is not this key's id; nothing was revoked." in console.field_errors("#revoke-form")
    assert authenticate(token) is not None
    console.step("revoke-confirmation")
    console.confirm_revoke(key.key_id)
    assert console.key_state(key.key_id) == "revoked"
    assert authenticate(token) is None
    console.step("key-revoked", focus="#keys")


def find_429s(console: ConsoleBrowser, seeded: dict[str, int]) -> None:
    console.open("/console/tenants/acme/throttles/")
    console.find("#id_reason option[value='tenant-tpm']").click()
    console.submit("#throttle-filters button[type=submit]")
    assert console.find("#throttle-summary").text == f"tenant-tpm: {seeded['tenant-tpm']}"
    console.step("throttle-audit")
    export = console.find("#csv-export").get_attribute("href").removeprefix(console.base_url)
    rows = list(csv.DictReader(io.StringIO(console.fetch_text(export))))
    assert {r["reason"] for r in rows} == {"tenant-tpm"}
    assert sum(int(r["count"]) for r in rows) == seeded["tenant-tpm"]


def read_the_audit_log(console: ConsoleBrowser) -> None:
    console.open("/console/audit/?tenant=acme")
    change = console.find("tr[data-action='tenant.limits_changed'] .diff tr.changed")
    assert change.get_attribute("data-field") == "rpm"
    assert change.text.split() == ["rpm", "600", "1200"]
    actions = [r.get_attribute("data-action") for r in console.find_all("tr[data-action]")]
    assert actions == [
        "key.revoked",
        "tenant.limits_changed",
        "key.rotated",
        "key.issued",
        "tenant.created",
    ]
    console.step("audit-log")


def see_the_overview(console: ConsoleBrowser, seeded: dict[str, int]) -> None:
    console.open("/console/")
    node = console.chart_totals("chart-requests")["accepted"]
    assert node > seeded["requests"]  # acme's and the other tenants' rows together
    assert int(console.find("#stat-requests .stat-value").get_attribute("data-value")) == node
    busiest = [r.text.split()[0] for r in console.find_all("#busiest tbody tr")]
    assert busiest == ["acme", "globex", "initech"]
    throttled = [r.text.split()[0] for r in console.find_all("#most-throttled tbody tr")]
    assert throttled == ["acme", "initech"]
    console.step("overview")
    console.step("overview-tenants", focus=".columns")


def test_an_admin_runs_a_tenant_from_the_console(console: ConsoleBrowser, staff_account) -> None:  # type: ignore[no-untyped-def]
    sign_in(console)
    create_tenant(console)
    key, token = issue_key(console)
    other_tenants_traffic()
    seeded = see_key_usage(console, key)
    token = rotate_with_short_grace(console, key, token)
    edit_a_limit(console, token)
    revoke(console, key, token)
    find_429s(console, seeded)
    read_the_audit_log(console)
    see_the_overview(console, seeded)
    assert len(console.taken) == 16
