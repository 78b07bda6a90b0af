"""One journey per console role in headless Chromium against a live daphne: what a Viewer, an
Operator and an Administrator see, what each may do, and that what they may not do is refused
even when the request is forged (a POST with the page's own CSRF token gets 403 and writes
nothing). The roles are the groups tenants/migrations/0005 makes."""

from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from pages.tests.roles import ensure_roles, role_account
from tenants.models import AdminAction, ApiKey, Tenant
from tenants.services import api_key_issue, tenant_create
from tests.e2e.console.browser import TOKEN, ConsoleBrowser

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PASSWORD = "console role password 8842"
NEW_PASSWORD = "carol's own passphrase 5"
USERS = "/console/users/"


@pytest.fixture
def screenshots_dir(tmp_path: Path) -> Path:
    """Never docs/img/console: `make screenshots` is the main journey's."""
    return tmp_path / "screenshots"


@pytest.fixture
def acme(transactional_db) -> ApiKey:
    """A tenant with one key, made as the commands would."""
    tenant = tenant_create(slug="acme", name="Acme", limits={"rpm": 600}, actor="cli:seed")
    return api_key_issue(tenant=tenant, name="backend", actor="cli:seed").api_key


def sign_in_as(console: ConsoleBrowser, django_user_model, role: str) -> None:
    ensure_roles()
    user = role_account(django_user_model, role)
    user.set_password(PASSWORD)
    user.save()
    console.login(user.get_username(), PASSWORD)
    assert console.path() == "/console/"


def links_to(console: ConsoleBrowser, path: str) -> int:
    return len(console.find_all(f"a[href='{path}']"))


def forged_post(console: ConsoleBrowser, path: str, fields: dict[str, str]) -> int:
    """POST `fields` to `path` from the page, with its CSRF token, as a crafted form would;
    returns the status."""
    script = (
        "const [path, fields, done] = arguments;"
        "const body = new FormData();"
        "body.append('csrfmiddlewaretoken',"
        " document.querySelector('input[name=csrfmiddlewaretoken]').value);"
        "for (const [k, v] of Object.entries(fields)) body.append(k, v);"
        "fetch(path, {method: 'POST', body, credentials: 'same-origin', redirect: 'manual'})"
        ".then(r => done(r.status), () => done(0));"
    )
    return console.driver.execute_async_script(script, path, fields)


def assert_forbidden_page(console: ConsoleBrowser, path: str, permission: str) -> None:
    console.open(path)
    assert "Permission needed" in console.text()
    assert f"Your account lacks the permission {permission}" in console.text()


def test_a_viewer_reads_every_page_and_can_change_nothing(
    console: ConsoleBrowser, django_user_model, acme: ApiKey
) -> None:
    sign_in_as(console, django_user_model, "Viewer")
    assert links_to(console, USERS) == 0
    console.open("/console/tenants/")
    assert console.find_all("#new-tenant") == []
    console.open_tenant("acme")
    assert console.key_row(acme.key_id).is_displayed()
    for absent in ("#issue-form", "#limits-form", "#keys-table a[href$='/rotate/']"):
        assert console.find_all(absent) == [], absent
    assert console.find_all("#keys-table a[href$='/revoke/']") == []
    assert console.find("#limits-table").is_displayed()
    console.step("viewer-tenant", focus="h1")
    console.open("/console/audit/")
    assert console.find_all("tr[data-action='console.sign_in']")
    assert_forbidden_page(console, USERS, "tenants.manage_console_users")
    assert_forbidden_page(
        console, f"/console/tenants/acme/keys/{acme.key_id}/revoke/", "tenants.change_apikey"
    )
    console.step("viewer-refused")
    audited = AdminAction.objects.count()
    assert (
        forged_post(console, "/console/tenants/acme/limits/", {"rpm": "1", "burst_percent": "20"})
        == 403
    )
    assert (
        forged_post(
            console, f"/console/tenants/acme/keys/{acme.key_id}/revoke/", {"confirm": acme.key_id}
        )
        == 403
    )
    assert Tenant.objects.get(slug="acme").rpm == 600
    assert ApiKey.objects.get(pk=acme.pk).revoked_at is None
    assert AdminAction.objects.count() == audited


def test_an_operator_manages_keys_and_limits_but_not_tenants_or_users(
    console: ConsoleBrowser, django_user_model, acme: ApiKey
) -> None:
    sign_in_as(console, django_user_model, "Operator")
    assert links_to(console, USERS) == 0
    console.open("/console/tenants/")
    assert console.find_all("#new-tenant") == []
    console.open_tenant("acme")
    assert console.key_row(acme.key_id).find_element(By.LINK_TEXT, "Rotate").is_displayed()
    console.set_limits(rpm=700)
    assert any("Limits saved" in m for m in console.messages())
    assert Tenant.objects.get(slug="acme").rpm == 700
    token = console.issue_key("batch")
    assert TOKEN.match(token)
    console.step("operator-issued", mask="#token")
    actions = AdminAction.objects.filter(actor="console:operator")
    done = {"console.sign_in", "tenant.limits_changed", "key.issued"}
    assert set(actions.values_list("action", flat=True)) == done
    assert_forbidden_page(console, USERS, "tenants.manage_console_users")
    audited = AdminAction.objects.count()
    new_tenant = {"slug": "globex", "name": "Globex", "burst_percent": "20"}
    assert forged_post(console, "/console/tenants/", new_tenant) == 403
    new_user = {
        "username": "eve",
        "role": "Administrator",
        "password1": NEW_PASSWORD,
        "password2": NEW_PASSWORD,
    }
    assert forged_post(console, USERS, new_user) == 403
    assert not Tenant.objects.filter(slug="globex").exists()
    assert not django_user_model.objects.filter(username="eve").exists()
    assert AdminAction.objects.count() == audited


def test_an_administrator_adds_a_user_sets_its_role_and_sees_it_audited(
    console: ConsoleBrowser, django_user_model, acme: ApiKey
) -> None:
    ensure_roles()
    console.login("administrator", "not the password 1")  # a failed sign-in, audited
    assert console.path().startswith("/console/login/")
    sign_in_as(console, django_user_model, "Administrator")
    console.find(f"a[href='{USERS}']").click()
    console.wait_for("#new-user")
    console.fill("#id_username", "carol")
    Select(console.find("#id_role")).select_by_value("Viewer")
    console.fill("#id_password1", NEW_PASSWORD)
    console.fill("#id_password2", NEW_PASSWORD)
    console.submit("button[name=add-user]")
    row = console.find("#users tr[data-username='carol']")
    assert row.find_element(By.CSS_SELECTOR, ".role").text == "Viewer"
    Select(row.find_element(By.CSS_SELECTOR, "select[name=role]")).select_by_value("Operator")
    console.submit("#users tr[data-username='carol'] button[name=set-role]")
    assert "“carol” is now Operator." in console.messages()
    console.step("users-page", focus="h1")
    carol = django_user_model.objects.get(username="carol")
    assert set(carol.groups.values_list("name", flat=True)) == {"Operator"}
    console.open("/console/audit/")
    for action in ("console.sign_in_failed", "console.sign_in", "user.added", "user.role_set"):
        assert console.find_all(f"tr[data-action='{action}']"), action
    assert "not the password 1" not in console.driver.page_source
    assert NEW_PASSWORD not in console.driver.page_source
    console.step("audit-users-and-sign-ins")
    # The new account signs in with its role: keys and limits, no Users page.
    console.submit("form.signout button")
    console.login("carol", NEW_PASSWORD)
    assert console.path() == "/console/" and links_to(console, USERS) == 0
    console.open_tenant("acme")
    assert console.find_all("#issue-form") and console.find_all("#limits-form")
