"""Sign-in attempts are limited per (username, address), per client address and, as a ceiling
that slows rather than locks, per username, by the Lua limiter."""

import pytest
from django.test import Client, override_settings

from pages.tests.conftest import PASSWORD
from ratelimit.login import check_login_sync

pytestmark = pytest.mark.django_db


def attempt(client: Client, username: str, password: str, addr: str = "203.0.113.7"):
    return client.post(
        "/console/login/", {"username": username, "password": password}, REMOTE_ADDR=addr
    )


@override_settings(RATELIMIT_LOGIN_PAIR_PER_MINUTE=3, RATELIMIT_LOGIN_ADDRESS_PER_MINUTE=50)
def test_a_username_is_locked_from_an_address_after_its_attempts_even_with_the_right_password(
    client: Client, staff_user
) -> None:
    statuses = [attempt(client, staff_user.username, "wrong").status_code for _ in range(3)]
    assert statuses == [400, 400, 400]
    refused = attempt(client, staff_user.username, PASSWORD)
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) >= 1
    assert b"Too many sign-in attempts" in refused.content
    assert "_auth_user_id" not in client.session  # the right password did not get in
    # Another account from another address is not affected, nor this account elsewhere.
    other = attempt(Client(), "someone-else", "wrong", addr="198.51.100.9")
    assert other.status_code == 400
    assert attempt(Client(), staff_user.username, PASSWORD, addr="198.51.100.9").status_code == 302


@override_settings(
    RATELIMIT_LOGIN_PAIR_PER_MINUTE=3,
    RATELIMIT_LOGIN_USERNAME_PER_MINUTE=6,
    RATELIMIT_LOGIN_SLOWED_PER_MINUTE=1,
    RATELIMIT_LOGIN_ADDRESS_PER_MINUTE=50,
)
def test_an_attacker_on_many_addresses_cannot_keep_the_admin_out(
    client: Client, staff_user
) -> None:
    attackers = [f"203.0.113.{i}" for i in range(1, 21)]
    name = staff_user.username
    for address in attackers:  # each spends what it can (counted before any password check)
        for _ in range(10):
            if not check_login_sync(address=address, username=name).allowed:
                break
    assert all(not check_login_sync(address=a, username=name).allowed for a in attackers)
    # The real admin, from their own address, is slowed to one attempt a minute, not refused.
    response = attempt(client, staff_user.username, PASSWORD, addr="198.51.100.20")
    assert response.status_code == 302 and response["Location"] == "/console/"
    assert client.get("/console/").status_code == 200


@override_settings(RATELIMIT_LOGIN_USERNAME_PER_MINUTE=50, RATELIMIT_LOGIN_ADDRESS_PER_MINUTE=4)
def test_an_address_is_locked_whatever_usernames_it_tries(client: Client, staff_user) -> None:
    for n in range(4):
        assert attempt(client, f"guess-{n}", "wrong").status_code == 400
    assert attempt(client, staff_user.username, PASSWORD).status_code == 429
    # The same account signs in from another address.
    ok = attempt(Client(), staff_user.username, PASSWORD, addr="198.51.100.10")
    assert ok.status_code == 302


def test_the_admin_login_leads_to_the_throttled_console_login(client: Client) -> None:
    response = client.get("/admin/login/?next=/admin/")
    assert response.status_code == 302
    assert response["Location"] == "/console/login/?next=%2Fadmin%2F"
