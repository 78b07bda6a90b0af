"""The console's three roles, made by tenants/migrations/0005: Viewer reads everything and
changes nothing; Operator also issues, rotates and revokes keys and sets limits; Administrator
also creates tenants and manages console users. Each role's allowed and refused actions, through
the test client: a refused POST is a 403 and writes nothing."""

from collections.abc import Callable

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from pages.tests.roles import ensure_roles
from pages.tests.test_permissions import READS, actions, assert_refused, state
from tenants.models import AdminAction, Tenant

pytestmark = pytest.mark.django_db

VIEW = {
    "view_tenant",
    "view_apikey",
    "view_usageminute",
    "view_throttleevent",
    "view_adminaction",
    # tenants/migrations/0008_adapters
    "view_adapter",
    "view_adaptergrant",
    "view_adapterusageday",
}
EXPECTED = {
    "Viewer": VIEW,
    "Operator": VIEW | {"add_apikey", "change_apikey", "change_tenant"},
    "Administrator": VIEW
    | {"add_apikey", "change_apikey", "change_tenant"}
    | {"add_tenant", "manage_adapters", "manage_console_users"},
}
MAY = {
    "Viewer": set(),
    "Operator": {"set limits", "issue key", "rotate key", "revoke key"},
    "Administrator": {"create tenant", "set limits", "issue key", "rotate key", "revoke key"},
}
MANAGE_USERS = "tenants.manage_console_users (Can add console users and set their roles)"
USERS_PAGE = "/console/users/"


def user_actions() -> dict[str, tuple[str, dict]]:
    return {
        "add user": (
            USERS_PAGE,
            {
                "username": "newbie",
                "role": "Viewer",
                "password1": "a long enough passphrase 7",
                "password2": "a long enough passphrase 7",
            },
        ),
    }


def test_the_migration_makes_three_groups_with_exactly_their_permissions() -> None:
    ensure_roles()
    for name, codenames in EXPECTED.items():
        perms = Group.objects.get(name=name).permissions.all()
        assert {p.content_type.app_label for p in perms} == {"tenants"}
        assert {p.codename for p in perms} == codenames, name


def test_making_the_roles_twice_changes_nothing() -> None:
    ensure_roles()
    ensure_roles()
    assert Group.objects.filter(name__in=EXPECTED).count() == 3
    assert Group.objects.get(name="Viewer").permissions.count() == len(VIEW)


@pytest.mark.parametrize("role", list(EXPECTED))
def test_every_role_reads_every_page(as_role: Callable[[str], Client], issued, role: str) -> None:
    client = as_role(role)
    for url in READS:
        assert client.get(url).status_code == 200, (role, url)


@pytest.mark.parametrize("role", list(EXPECTED))
def test_each_role_does_what_it_may_and_is_refused_the_rest(
    as_role: Callable[[str], Client], issued, role: str
) -> None:
    client = as_role(role)
    refused = {n: a for n, a in actions(issued.api_key.key_id).items() if n not in MAY[role]}
    before = state()
    for url, data, missing in refused.values():
        assert_refused(client.post(url, data), missing[-1:])
    assert state() == before
    for name, (url, data, _) in actions(issued.api_key.key_id).items():
        if name in MAY[role]:
            assert client.post(url, data).status_code in (200, 302), (role, name)
    actor = f"console:{role.lower()}"
    assert state()[2] - before[2] == len(MAY[role])
    assert {a for a in state()[0] if a[0] == "globex"} == (
        {("globex", 300, None, 20)} if "create tenant" in MAY[role] else set()
    )
    assert AdminAction.objects.filter(actor=actor).count() == len(MAY[role])


@pytest.mark.parametrize("role", ["Viewer", "Operator"])
def test_only_administrators_open_the_users_page(
    as_role: Callable[[str], Client], django_user_model, role: str
) -> None:
    client = as_role(role)
    assert_refused(client.get(USERS_PAGE), [MANAGE_USERS])
    before = (state(), list(django_user_model.objects.values_list("username", "is_active")))
    for url, data in user_actions().values():
        assert_refused(client.post(url, data), [MANAGE_USERS])
    target = django_user_model.objects.get(username=role.lower())
    assert_refused(
        client.post(f"/console/users/{target.pk}/role/", {"role": "Administrator"}), [MANAGE_USERS]
    )
    assert_refused(
        client.post(f"/console/users/{target.pk}/active/", {"active": "0"}), [MANAGE_USERS]
    )
    after = (state(), list(django_user_model.objects.values_list("username", "is_active")))
    assert after == before
    assert set(target.groups.values_list("name", flat=True)) == {role}


def test_an_administrator_opens_the_users_page(as_role: Callable[[str], Client]) -> None:
    html = as_role("Administrator").get(USERS_PAGE).content.decode()
    assert 'id="new-user"' in html and 'data-username="administrator"' in html


def test_a_viewer_sees_no_action_and_no_users_link(
    as_role: Callable[[str], Client], issued
) -> None:
    client = as_role("Viewer")
    html = client.get("/console/tenants/acme/").content.decode()
    assert issued.api_key.key_id in html
    for form in ('id="issue-form"', 'id="limits-form"', "/rotate/", "/revoke/", USERS_PAGE):
        assert form not in html
    assert 'id="new-tenant"' not in client.get("/console/tenants/").content.decode()


def test_an_operator_sees_key_and_limit_actions_only(
    as_role: Callable[[str], Client], issued
) -> None:
    client = as_role("Operator")
    html = client.get("/console/tenants/acme/").content.decode()
    for form in ('id="issue-form"', 'id="limits-form"', "/rotate/", "/revoke/"):
        assert form in html
    assert USERS_PAGE not in html
    assert 'id="new-tenant"' not in client.get("/console/tenants/").content.decode()


def test_an_administrator_sees_every_action_and_the_users_link(
    as_role: Callable[[str], Client], issued
) -> None:
    client = as_role("Administrator")
    html = client.get("/console/tenants/acme/").content.decode()
    for form in ('id="issue-form"', 'id="limits-form"', "/rotate/", "/revoke/"):
        assert form in html
    assert f'href="{USERS_PAGE}"' in html
    assert 'id="new-tenant"' in client.get("/console/tenants/").content.decode()


def test_renaming_and_suspending_a_tenant_are_an_administrators(
    as_role: Callable[[str], Client], issued
) -> None:
    # An Operator's change_tenant is for limits; a tenant's lifecycle needs add_tenant too.
    lifecycle = {
        "rename": ("/console/tenants/acme/rename/", {"name": "Acme Two"}),
        "suspend": ("/console/tenants/acme/suspend/", {"confirm": "acme", "reason": "test"}),
        "resume": ("/console/tenants/acme/resume/", {}),
    }
    operator = as_role("Operator")
    assert 'id="suspend-link"' not in operator.get("/console/tenants/acme/").content.decode()
    before = list(Tenant.objects.values_list("name", "active"))
    for url, data in lifecycle.values():
        assert_refused(operator.post(url, data), ["tenants.add_tenant (Can add tenant)"])
    assert list(Tenant.objects.values_list("name", "active")) == before
    admin = as_role("Administrator")
    assert 'id="suspend-link"' in admin.get("/console/tenants/acme/").content.decode()
    for url, data in (lifecycle["rename"], lifecycle["suspend"]):
        assert admin.post(url, data).status_code == 302
    assert list(Tenant.objects.values_list("name", "active")) == [("Acme Two", False)]
