"""Creating tenants and changing their limits: validation messages, the audit trail, and
propagation of a change to the key cache."""

import time

import pytest
from asgiref.sync import async_to_sync
from django.test import Client

from core.redis import get_sync_redis
from tenants.auth import authenticate_token
from tenants.keycache import VERSION_KEY
from tenants.models import AdminAction, Tenant

LIMITS = {"rpm": 600, "tpm": 100000, "burst_percent": 20}
LIMIT_MESSAGE = "{} must be a whole number from 1 to 1,000,000,000,000, or empty for no limit."


def errors_of(form) -> list[str]:
    return [error for errors in form.errors.values() for error in errors]


@pytest.mark.django_db
def test_it_creates_a_tenant_and_audits_who_did_it(staff: Client) -> None:
    data = {"slug": "globex", "name": "Globex", "rpm": 300, "tpm": "", "burst_percent": 30}
    response = staff.post("/console/tenants/", data)
    assert response.status_code == 302 and response["Location"] == "/console/tenants/globex/"
    tenant = Tenant.objects.get(slug="globex")
    assert (tenant.name, tenant.rpm, tenant.tpm, tenant.burst_percent) == ("Globex", 300, None, 30)
    action = AdminAction.objects.get(action=AdminAction.Action.TENANT_CREATED)
    assert action.actor == "console:ada" and action.tenant == tenant
    assert action.after is not None
    assert action.after["rpm"] == 300 and action.after["tpm"] is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"slug": "Not A Slug"}, "Use 1-64 lowercase letters, digits or hyphens"),
        ({"slug": ""}, "A slug is required."),
        ({"rpm": 0}, LIMIT_MESSAGE.format("Requests per minute")),
        ({"tpm": "lots"}, LIMIT_MESSAGE.format("Tokens per minute")),
        ({"max_inflight": 10**13}, LIMIT_MESSAGE.format("Max in-flight requests")),
        ({"burst_percent": 101}, "Burst percent must be a whole number from 1 to 100."),
        ({"burst_percent": ""}, "Burst percent is required (1-100)."),
        (
            {"tokens_per_day": 5000, "tokens_per_month": 100},
            "Tokens per day cannot be more than tokens per month.",
        ),
    ],
)
def test_a_bad_new_tenant_gets_a_clear_message_and_no_row(
    staff: Client, changes: dict, message: str
) -> None:
    response = staff.post("/console/tenants/", {"slug": "globex", **LIMITS, **changes})
    assert response.status_code == 400
    assert any(e.startswith(message) for e in errors_of(response.context["form"]))
    assert message.split("“")[0] in response.content.decode()
    assert not Tenant.objects.exists() and not AdminAction.objects.exists()


@pytest.mark.django_db
def test_a_taken_slug_is_refused(staff: Client, tenant) -> None:
    response = staff.post("/console/tenants/", {"slug": "acme", **LIMITS})
    assert response.status_code == 400
    assert errors_of(response.context["form"]) == ["A tenant with the slug “acme” already exists."]
    assert Tenant.objects.count() == 1


@pytest.mark.django_db
def test_the_tenant_list_sums_each_tenants_last_day(staff: Client, issued, add_usage) -> None:
    add_usage(issued.api_key, 3, 5, 100, 20)
    add_usage(issued.api_key, 4, 2, 10, 10)
    add_usage(issued.api_key, 60 * 25, 1000)  # older than 24 h: not counted
    row = staff.get("/console/tenants/").context["tenants"][0]
    assert (row.requests, row.tokens, row.throttled, row.active_keys) == (7, 140, 0, 1)


@pytest.mark.django_db
def test_an_unknown_tenant_is_404(staff: Client) -> None:
    assert staff.get("/console/tenants/nobody/").status_code == 404
    assert staff.post("/console/tenants/nobody/limits/", LIMITS).status_code == 404


@pytest.mark.django_db
def test_saving_limits_goes_through_the_service_with_before_and_after(
    staff: Client, tenant, django_capture_on_commit_callbacks
) -> None:
    redis = get_sync_redis()
    redis.set(VERSION_KEY, "before")
    data = {"rpm": 1200, "tpm": "", "max_inflight": 4, "burst_percent": 20}
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post("/console/tenants/acme/limits/", data)
    assert response.status_code == 302
    tenant.refresh_from_db()
    assert (tenant.rpm, tenant.tpm, tenant.max_inflight) == (1200, None, 4)
    action = AdminAction.objects.get(action=AdminAction.Action.LIMITS_CHANGED)
    assert action.actor == "console:ada"
    assert action.before is not None and action.after is not None
    assert (action.before["rpm"], action.after["rpm"]) == (600, 1200)
    assert (action.before["tpm"], action.after["tpm"]) == (100000, None)
    assert redis.get(VERSION_KEY) != b"before"  # every process's key cache is told
    page = staff.get(response["Location"]).content.decode()
    assert "Limits saved (max_inflight, rpm, tpm)" in page


@pytest.mark.django_db
def test_bad_limits_are_explained_and_change_nothing(staff: Client, tenant) -> None:
    response = staff.post(
        "/console/tenants/acme/limits/", {"rpm": -1, "tpm": 5, "burst_percent": 0}
    )
    assert response.status_code == 400
    errors = response.context["limits_form"].errors
    assert errors["rpm"] == [LIMIT_MESSAGE.format("Requests per minute")]
    assert errors["burst_percent"] == ["Burst percent must be a whole number from 1 to 100."]
    tenant.refresh_from_db()
    assert tenant.rpm == 600
    assert not AdminAction.objects.filter(action=AdminAction.Action.LIMITS_CHANGED).exists()


@pytest.mark.django_db
def test_saving_unchanged_limits_writes_no_audit_row(staff: Client, tenant) -> None:
    response = staff.post("/console/tenants/acme/limits/", LIMITS, follow=True)
    assert "Nothing changed." in response.content.decode()
    assert not AdminAction.objects.filter(action=AdminAction.Action.LIMITS_CHANGED).exists()


@pytest.mark.django_db(transaction=True)
def test_a_saved_limit_reaches_an_already_cached_key_within_a_second(staff: Client, issued):
    def rpm() -> int | None:
        record = async_to_sync(authenticate_token)(issued.token)
        assert record is not None
        return record.tenant_limits["rpm"]

    assert rpm() == 600  # now cached
    staff.post("/console/tenants/acme/limits/", {**LIMITS, "rpm": 900})
    deadline = time.monotonic() + 1.0
    while rpm() != 900:
        assert time.monotonic() < deadline, "the cached record kept the old limit"
        time.sleep(0.05)
