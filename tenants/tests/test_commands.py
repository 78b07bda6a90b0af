import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tenants.auth import authenticate_token
from tenants.models import AdminAction, ApiKey, Tenant

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_tenant_prints_the_slug_and_stores_the_limits() -> None:
    assert (
        run(
            "create_tenant",
            "globex",
            "--name",
            "Globex",
            "--rpm",
            "60",
            "--tpm",
            "5000",
            "--max-inflight",
            "3",
            "--tokens-per-day",
            "100000",
            "--tokens-per-month",
            "2000000",
            "--burst",
            "10",
        )
        == "globex\n"
    )
    tenant = Tenant.objects.get(slug="globex")
    assert tenant.name == "Globex"
    assert tenant.limits() == {
        "rpm": 60,
        "tpm": 5000,
        "max_inflight": 3,
        "tokens_per_day": 100000,
        "tokens_per_month": 2000000,
    }
    assert tenant.burst_percent == 10


@pytest.mark.parametrize(
    "args, message",
    [
        (("create_tenant", "Bad Slug"), "slug must be"),
        (("create_tenant", "ok", "--burst", "0"), "burst_percent"),
    ],
)
def test_create_tenant_refuses_bad_input_and_writes_nothing(args, message) -> None:
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert not Tenant.objects.exists() and not AdminAction.objects.exists()


def test_create_tenant_refuses_a_duplicate(tenant) -> None:
    with pytest.raises(CommandError, match="already exists"):
        run("create_tenant", "acme")
    assert Tenant.objects.count() == 1


def test_set_limits_changes_only_what_is_given(tenant) -> None:
    out = run("set_limits", "acme", "--rpm", "30", "--tpm", "none")
    assert out.strip() == (
        "rpm=30 tpm=none max_inflight=none tokens_per_day=none "
        "tokens_per_month=none burst_percent=20 scheduling_weight=1"
    )
    tenant.refresh_from_db()
    assert (tenant.rpm, tenant.tpm) == (30, None)


def test_set_limits_refuses_an_unknown_tenant_or_no_change(tenant) -> None:
    with pytest.raises(CommandError, match="no tenant"):
        run("set_limits", "nobody", "--rpm", "3")
    with pytest.raises(CommandError, match="nothing to change"):
        run("set_limits", "acme")


@pytest.mark.django_db(transaction=True)
async def test_issue_key_prints_a_token_that_works(tenant) -> None:
    from asgiref.sync import sync_to_async

    token = (
        await sync_to_async(run)("issue_key", "acme", "--name", "ci", "--expires-in", "30d")
    ).strip()
    record = await authenticate_token(token)
    assert record is not None and record.tenant_slug == "acme"
    key = await ApiKey.objects.aget(key_id=record.key_id)
    assert key.name == "ci" and key.expires_at is not None


@pytest.mark.parametrize(
    "args, message",
    [
        (("issue_key", "nobody"), "no tenant"),
        (("issue_key", "acme", "--expires-in", "soon"), "invalid duration"),
        (("issue_key", "acme", "--scopes", "completions,admin"), "unknown scope"),
    ],
)
def test_issue_key_refuses_bad_input_and_writes_nothing(tenant, args, message) -> None:
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert not ApiKey.objects.exists()


def test_rotate_key_prints_a_new_token_for_the_same_key_id(issued) -> None:
    token = run("rotate_key", issued.api_key.key_id, "--grace", "10m").strip()
    assert token.split("_")[1] == issued.api_key.key_id and token != issued.token
    with pytest.raises(CommandError, match="no API key"):
        run("rotate_key", "doesnotexist")
    with pytest.raises(CommandError, match="invalid duration"):
        run("rotate_key", issued.api_key.key_id, "--grace=-5m")


def test_revoke_key_prints_the_key_id_and_refuses_twice(issued) -> None:
    assert run("revoke_key", issued.api_key.key_id).strip() == issued.api_key.key_id
    assert ApiKey.objects.get().revoked_at is not None
    with pytest.raises(CommandError, match="already revoked"):
        run("revoke_key", issued.api_key.key_id)
