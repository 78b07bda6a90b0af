"""Console permissions: every page needs the tenants app's view permissions of what it shows,
every action its add/change permission; staff status alone opens nothing. Three staff accounts:
none (every page a 403 naming what is missing), view only (reads everything, changes nothing)
and full (does everything)."""

import secrets

import pytest
from django.test import Client

from pages.tests.conftest import tenants_permissions
from tenants.models import AdminAction, ApiKey, Tenant

pytestmark = pytest.mark.django_db

OVERVIEW = [
    "tenants.view_tenant (Can view tenant)",
    "tenants.view_apikey (Can view api key)",
    "tenants.view_usageminute (Can view usage minute)",
    "tenants.view_throttleevent (Can view throttle event)",
]
TENANT_PAGE = [*OVERVIEW, "tenants.view_adminaction (Can view admin action)"]
THROTTLES = [OVERVIEW[0], OVERVIEW[1], OVERVIEW[3]]
KEY = OVERVIEW[:2]
ADD_TENANT = "tenants.add_tenant (Can add tenant)"
CHANGE_TENANT = "tenants.change_tenant (Can change tenant)"
ADD_APIKEY = "tenants.add_apikey (Can add api key)"
CHANGE_APIKEY = "tenants.change_apikey (Can change api key)"

READS = {
    "/console/": OVERVIEW,
    "/console/tenants/": OVERVIEW,
    "/console/tenants/acme/": TENANT_PAGE,
    "/console/audit/": ["tenants.view_adminaction (Can view admin action)"],
    "/console/tenants/acme/throttles/": THROTTLES,
    "/console/tenants/acme/throttles.csv": THROTTLES,
    "/console/usage.csv": OVERVIEW,
    "/console/tenants/acme/usage.csv": OVERVIEW,
    "/console/adapters/": [
        "tenants.view_adapter (Can view adapter)",
        "tenants.view_adaptergrant (Can view adapter grant)",
    ],
}


def actions(key_id: str) -> dict[str, tuple[str, dict, list[str]]]:
    """Each console action: its URL, a valid form, and the permissions it needs."""
    keys = f"/console/tenants/acme/keys/{key_id}"
    return {
        "create tenant": (
            "/console/tenants/",
            {"slug": "globex", "name": "Globex", "rpm": 300, "burst_percent": 20},
            [*OVERVIEW, ADD_TENANT],
        ),
        "set limits": (
            "/console/tenants/acme/limits/",
            {"rpm": 700, "tpm": 100000, "burst_percent": 20},
            [*TENANT_PAGE, CHANGE_TENANT],
        ),
        "issue key": (
            "/console/tenants/acme/keys/",
            {"once": secrets.token_urlsafe(24), "name": "new", "scopes": ["completions"]},
            [*TENANT_PAGE, ADD_APIKEY],
        ),
        "rotate key": (
            f"{keys}/rotate/",
            {"once": secrets.token_urlsafe(24), "grace": "0"},
            [*KEY, CHANGE_APIKEY],
        ),
        "revoke key": (f"{keys}/revoke/", {"confirm": key_id}, [*KEY, CHANGE_APIKEY]),
    }


def state() -> tuple:
    """Everything an action could change or audit."""
    tenants = list(Tenant.objects.values_list("slug", "rpm", "tpm", "burst_percent"))
    keys = list(ApiKey.objects.values_list("key_id", "secret_hash", "revoked_at"))
    return tenants, keys, AdminAction.objects.count()


def signed_in(django_user_model, name: str, perms) -> Client:
    user = django_user_model.objects.create_user(name, password="x" * 20, is_staff=True)
    user.user_permissions.set(perms)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def nobody(django_user_model) -> Client:
    return signed_in(django_user_model, "nobody", [])


@pytest.fixture
def viewer(django_user_model) -> Client:
    return signed_in(django_user_model, "viewer", tenants_permissions("view_"))


def assert_refused(response, missing: list[str]) -> None:
    html = response.content.decode()
    assert response.status_code == 403, response.request["PATH_INFO"]
    for label in missing:
        assert f"Your account lacks the permission {label}." in html
    assert html.count("Your account lacks") == len(missing)
    # The console's own page, with the console's headers.
    assert 'class="topbar"' in html and "Permission needed" in html
    assert "frame-ancestors 'none'" in response["Content-Security-Policy"]
    assert "private" in response["Cache-Control"]


def test_without_permissions_every_page_is_a_403_naming_what_is_missing(
    nobody: Client, issued
) -> None:
    for url, missing in READS.items():
        assert_refused(nobody.get(url), missing)
    for url in ("rotate", "revoke"):
        page = nobody.get(f"/console/tenants/acme/keys/{issued.api_key.key_id}/{url}/")
        assert_refused(page, [*KEY, CHANGE_APIKEY])


def test_without_permissions_every_action_is_refused_and_changes_nothing(
    nobody: Client, issued
) -> None:
    before = state()
    for url, data, missing in actions(issued.api_key.key_id).values():
        assert_refused(nobody.post(url, data), missing)
    assert state() == before


def test_a_view_only_account_reads_every_page(viewer: Client, issued, add_throttle) -> None:
    add_throttle(issued.api_key, minutes_ago=3, count=4)
    for url in READS:
        assert viewer.get(url).status_code == 200, url
    assert b"key-rpm" in b"".join(viewer.get("/console/tenants/acme/throttles.csv"))


def test_a_view_only_account_changes_nothing_and_is_told_which_permission_it_lacks(
    viewer: Client, issued
) -> None:
    before = state()
    for url, data, missing in actions(issued.api_key.key_id).values():
        assert_refused(viewer.post(url, data), missing[-1:])
    # The rotate and revoke pages are those actions' forms: refused too.
    for url in ("rotate", "revoke"):
        page = viewer.get(f"/console/tenants/acme/keys/{issued.api_key.key_id}/{url}/")
        assert_refused(page, [CHANGE_APIKEY])
    assert state() == before


def test_a_view_only_account_sees_no_action_forms_but_every_value(viewer: Client, issued) -> None:
    html = viewer.get("/console/tenants/acme/").content.decode()
    assert issued.api_key.key_id in html
    for form in ('id="issue-form"', 'id="limits-form"', "/rotate/", "/revoke/"):
        assert form not in html
    assert 'id="limits-table"' in html
    assert '<tr data-field="rpm"><th>Requests per minute</th><td class="num">600</td>' in html
    tenants = viewer.get("/console/tenants/").content.decode()
    assert 'id="new-tenant"' not in tenants and 'href="/console/tenants/acme/"' in tenants


def test_the_first_visit_offers_tenant_creation_only_to_who_may_create(
    viewer: Client, staff: Client
) -> None:
    assert "Create the first tenant" not in viewer.get("/console/").content.decode()
    assert "Create the first tenant" in staff.get("/console/").content.decode()


def test_a_full_account_sees_every_form_and_does_every_action(staff: Client, issued) -> None:
    html = staff.get("/console/tenants/acme/").content.decode()
    for form in ('id="issue-form"', 'id="limits-form"', "/rotate/", "/revoke/"):
        assert form in html
    assert 'id="new-tenant"' in staff.get("/console/tenants/").content.decode()
    for name, (url, data, _) in actions(issued.api_key.key_id).items():
        assert staff.post(url, data).status_code in (200, 302), name
    assert Tenant.objects.filter(slug="globex").exists()
    assert Tenant.objects.get(slug="acme").rpm == 700
    assert ApiKey.objects.get(name="new").revoked_at is None
    assert ApiKey.objects.get(key_id=issued.api_key.key_id).revoked_at is not None
    actors = set(AdminAction.objects.exclude(actor="test").values_list("actor", flat=True))
    assert actors == {"console:ada"}


@pytest.mark.parametrize(
    "granted", ["create tenant", "set limits", "issue key", "rotate key", "revoke key"]
)
def test_each_action_needs_exactly_its_own_permission(
    django_user_model, issued, granted: str
) -> None:
    codename = {
        "create tenant": "add_tenant",
        "set limits": "change_tenant",
        "issue key": "add_apikey",
        "rotate key": "change_apikey",
        "revoke key": "change_apikey",
    }[granted]
    perms = tenants_permissions("view_") | tenants_permissions(codename)
    client = signed_in(django_user_model, "operator", perms)
    for name, (url, data, missing) in actions(issued.api_key.key_id).items():
        if name == granted or missing[-1].startswith(f"tenants.{codename} "):
            continue
        assert_refused(client.post(url, data), missing[-1:])
    url, data, _ = actions(issued.api_key.key_id)[granted]
    assert client.post(url, data).status_code in (200, 302)
    assert AdminAction.objects.filter(actor="console:operator").count() == 1


def test_a_superuser_needs_no_explicit_permission(django_user_model, issued) -> None:
    user = django_user_model.objects.create_superuser("root", password="x" * 20)
    client = Client()
    client.force_login(user)
    assert client.get("/console/tenants/acme/").status_code == 200
    url, data, _ = actions(issued.api_key.key_id)["set limits"]
    assert client.post(url, data).status_code == 302
    assert Tenant.objects.get(slug="acme").rpm == 700


def test_an_inactive_account_with_every_permission_is_sent_to_sign_in(staff_user, issued) -> None:
    staff_user.is_active = False
    staff_user.save()
    client = Client()
    client.force_login(staff_user)
    assert client.get("/console/tenants/acme/")["Location"].startswith("/console/login/")
