"""The Users page: an Administrator adds console accounts with a role and a password, changes
their role and deactivates them; every change is audited; bad input changes nothing. Sign-ins and
failed sign-ins are audited (username tried and client address, never the password)."""

import re
from collections.abc import Callable

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from pages.tests.roles import PASSWORD, role_account
from tenants.models import AdminAction

pytestmark = pytest.mark.django_db

USERS = "/console/users/"
NEW_PASSWORD = "a long enough passphrase 7"


def add(client: Client, username: str = "carol", role: str = "Operator", **extra: str):
    data = {"username": username, "role": role, "password1": NEW_PASSWORD}
    data["password2"] = NEW_PASSWORD
    return client.post(USERS, {**data, **extra})


def roles_of(user) -> set[str]:
    return set(user.groups.values_list("name", flat=True))


@pytest.fixture
def admin(as_role: Callable[[str], Client]) -> Client:
    return as_role("Administrator")


def test_an_administrator_adds_a_user_who_can_sign_in_with_that_role(
    admin: Client, django_user_model
) -> None:
    response = add(admin)
    assert response.status_code == 302 and response["Location"] == USERS
    carol = django_user_model.objects.get(username="carol")
    assert carol.is_staff and carol.is_active and not carol.is_superuser
    assert roles_of(carol) == {"Operator"} and carol.check_password(NEW_PASSWORD)
    audit = AdminAction.objects.get(action=AdminAction.Action.USER_ADDED)
    assert audit.actor == "console:administrator" and audit.tenant is None
    assert audit.after == {"username": "carol", "role": "Operator"}
    assert NEW_PASSWORD not in str(audit.after)
    page = admin.get(USERS).content.decode()
    assert 'data-username="carol"' in page and "Console user “carol” added." in page
    client = Client()
    signed = client.post("/console/login/", {"username": "carol", "password": NEW_PASSWORD})
    assert signed.status_code == 302
    assert client.get("/console/tenants/").status_code == 200
    assert client.get(USERS).status_code == 403


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ({"password2": "something else entirely 9"}, "password2", "The two passwords differ."),
        ({"password1": "short", "password2": "short"}, "password1", "too short"),
        ({"username": "bad name!"}, "username", "Enter a valid username"),
        ({"role": "Superuser"}, "role", "Select a valid choice"),
        ({"username": ""}, "username", "This field is required."),
    ],
)
def test_bad_input_adds_nobody_and_says_why(
    admin: Client, django_user_model, extra: dict, field: str, message: str
) -> None:
    count = django_user_model.objects.count()
    response = add(admin, **extra)
    assert response.status_code == 400
    html = response.content.decode()
    assert f'id="id_{field}_error"' in html and message in html
    assert django_user_model.objects.count() == count
    assert not AdminAction.objects.exists()
    assert NEW_PASSWORD not in html


def test_a_taken_username_is_refused_whatever_its_case(admin: Client, django_user_model) -> None:
    add(admin, username="carol")
    response = add(admin, username="Carol")
    assert response.status_code == 400
    assert "An account named “Carol” exists already." in response.content.decode()
    assert django_user_model.objects.filter(username__iexact="carol").count() == 1
    assert AdminAction.objects.filter(action=AdminAction.Action.USER_ADDED).count() == 1


def test_a_role_change_moves_the_account_and_is_audited(admin: Client, django_user_model) -> None:
    dave = role_account(django_user_model, "Viewer", "dave")
    dave.groups.add(Group.objects.create(name="on-call"))
    response = admin.post(f"{USERS}{dave.pk}/role/", {"role": "Operator"})
    assert response.status_code == 302
    assert roles_of(dave) == {"Operator", "on-call"}
    audit = AdminAction.objects.get(action=AdminAction.Action.USER_ROLE_SET)
    assert audit.before == {"role": "Viewer"}
    assert audit.after == {"username": "dave", "role": "Operator"}
    client = Client()
    client.force_login(dave)
    assert client.get("/console/tenants/").status_code == 200
    # The same role again writes nothing.
    admin.post(f"{USERS}{dave.pk}/role/", {"role": "Operator"})
    assert AdminAction.objects.filter(action=AdminAction.Action.USER_ROLE_SET).count() == 1
    assert admin.post(f"{USERS}{dave.pk}/role/", {"role": "root"}).status_code == 302
    assert roles_of(dave) == {"Operator", "on-call"}


def test_a_deactivated_account_is_signed_out_and_cannot_sign_in(
    admin: Client, django_user_model
) -> None:
    erin = role_account(django_user_model, "Operator", "erin")
    erin_client = Client()
    erin_client.force_login(erin)
    assert erin_client.get("/console/").status_code == 200
    assert admin.post(f"{USERS}{erin.pk}/active/", {"active": "0"}).status_code == 302
    erin.refresh_from_db()
    assert not erin.is_active
    assert erin_client.get("/console/")["Location"].startswith("/console/login/")
    signed = Client().post("/console/login/", {"username": "erin", "password": PASSWORD})
    assert signed.status_code == 400
    audit = AdminAction.objects.get(action=AdminAction.Action.USER_DEACTIVATED)
    assert audit.before == {"active": True}
    assert audit.after == {"username": "erin", "active": False}
    admin.post(f"{USERS}{erin.pk}/active/", {"active": "1"})
    erin.refresh_from_db()
    assert erin.is_active
    assert AdminAction.objects.filter(action=AdminAction.Action.USER_REACTIVATED).count() == 1


def test_an_administrator_cannot_change_their_own_account_or_a_superuser(
    admin: Client, django_user_model
) -> None:
    me = django_user_model.objects.get(username="administrator")
    root = django_user_model.objects.create_superuser("root", password=PASSWORD)
    for target in (me, root):
        admin.post(f"{USERS}{target.pk}/active/", {"active": "0"})
        admin.post(f"{USERS}{target.pk}/role/", {"role": "Viewer"})
        target.refresh_from_db()
        assert target.is_active
    assert roles_of(me) == {"Administrator"} and roles_of(root) == set()
    assert not AdminAction.objects.exists()
    page = admin.get(USERS).content.decode()
    assert "You cannot change your own role" in page or "changed in the Django admin" in page
    assert f'action="{USERS}{me.pk}/active/"' not in page
    assert f'action="{USERS}{root.pk}/role/"' not in page


def test_changes_are_post_only_and_need_a_csrf_token(django_user_model) -> None:
    ada = role_account(django_user_model, "Administrator", "ada")
    target = role_account(django_user_model, "Viewer", "vic")
    client = Client(enforce_csrf_checks=True)
    client.force_login(ada)
    assert client.get(f"{USERS}{target.pk}/active/").status_code == 405
    assert client.post(f"{USERS}{target.pk}/active/", {"active": "0"}).status_code == 403
    assert add(client).status_code == 403
    target.refresh_from_db()
    assert target.is_active and not django_user_model.objects.filter(username="carol").exists()


def test_an_unknown_account_is_a_404(admin: Client) -> None:
    assert admin.post(f"{USERS}999999/active/", {"active": "0"}).status_code == 404


def test_the_password_is_hidden_from_error_reports(admin: Client) -> None:
    request = add(admin, password2="something else entirely 9").wsgi_request
    assert set(request.sensitive_post_parameters) == {"password1", "password2"}


def test_a_sign_in_and_a_failed_one_are_audited_without_the_password(
    as_role: Callable[[str], Client],
) -> None:
    as_role("Viewer")  # makes the account "viewer"
    client = Client(REMOTE_ADDR="127.0.0.1")
    client.post("/console/login/", {"username": "viewer", "password": "wrong password 1"})
    client.post("/console/login/", {"username": "viewer", "password": PASSWORD})
    failed = AdminAction.objects.get(action=AdminAction.Action.SIGN_IN_FAILED)
    assert failed.actor == "anonymous"
    assert failed.after == {"username": "viewer", "address": "127.0.0.1"}
    signed = AdminAction.objects.get(action=AdminAction.Action.SIGN_IN)
    assert signed.actor == "console:viewer"
    assert signed.after == {"username": "viewer", "address": "127.0.0.1"}
    stored = str(list(AdminAction.objects.values()))
    assert "wrong password 1" not in stored and PASSWORD not in stored


def test_the_audit_page_shows_sign_ins_with_the_username_tried(admin: Client) -> None:
    Client().post("/console/login/", {"username": "mallory", "password": "guess 123456"})
    html = admin.get("/console/audit/?action=console.sign_in_failed").content.decode()
    assert 'data-action="console.sign_in_failed"' in html and "Sign-in failed" in html
    assert "mallory" in html and "guess 123456" not in html
    assert ">deleted<" not in html


def link_of(response) -> str:
    html = response.content.decode()
    match = re.search(r'id="token" class="token" type="text" value="([^"]+)"', html)
    assert match, "no link on the page"
    return match.group(1).removeprefix("http://testserver")


def test_without_a_password_the_new_user_gets_a_one_time_set_password_link(
    admin: Client, django_user_model
) -> None:
    response = add(admin, username="frank", password1="", password2="")
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    frank = django_user_model.objects.get(username="frank")
    assert not frank.has_usable_password() and roles_of(frank) == {"Operator"}
    link = link_of(response)
    assert link.startswith("/console/set-password/")
    assert link not in str(list(AdminAction.objects.values())) and "_messages" not in str(
        admin.session.items()
    )
    owner = Client()
    form_page = owner.get(link, follow=True)
    assert 'id="set-password-form"' in form_page.content.decode()
    assert "frame-ancestors 'none'" in form_page["Content-Security-Policy"]
    assert "no-store" in form_page["Cache-Control"]
    posted = owner.post(
        form_page.request["PATH_INFO"],
        {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert posted.status_code == 302 and posted["Location"] == "/console/login/"
    frank.refresh_from_db()
    assert frank.check_password(NEW_PASSWORD)
    done = AdminAction.objects.get(action=AdminAction.Action.USER_PASSWORD_SET)
    assert done.actor == "console:frank"
    assert AdminAction.objects.filter(action=AdminAction.Action.USER_PASSWORD_LINK).count() == 1
    # Spent: the same link opens no form a second time.
    again = Client().get(link, follow=True).content.decode()
    assert 'id="link-invalid"' in again and 'id="set-password-form"' not in again


def test_an_administrator_makes_a_new_link_for_an_existing_account(
    admin: Client, django_user_model
) -> None:
    gina = role_account(django_user_model, "Viewer", "gina")
    response = admin.post(f"{USERS}{gina.pk}/password-link/")
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    assert 'id="set-password-form"' in Client().get(link_of(response), follow=True).content.decode()
    assert Client().get("/console/set-password/Zm9v/bad-token/").status_code == 200
    assert 'id="link-invalid"' in Client().get("/console/set-password/Zm9v/x-y/").content.decode()
    root = django_user_model.objects.create_superuser("root", password=PASSWORD)
    assert admin.post(f"{USERS}{root.pk}/password-link/").status_code == 302
    assert AdminAction.objects.filter(action=AdminAction.Action.USER_PASSWORD_LINK).count() == 1
