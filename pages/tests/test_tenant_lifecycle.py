"""A tenant's lifecycle in the console: rename (the slug stays), suspend with a typed
confirmation and resume, each audited; a key's own limits shown and set; limit presets to
start from, and the default preset a new tenant gets when no limits are given."""

from unittest.mock import ANY

import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.test import Client

from core.errors import RateLimited, TenantSuspended
from pages.tests.conftest import PASSWORD, tenants_permissions
from ratelimit import limiter
from tenants.auth import authenticate_token
from tenants.keycache import KeyRecord, key_cache
from tenants.models import AdminAction, ApiKey, Tenant
from tenants.presets import LIMIT_PRESETS
from tenants.services import TenantError, tenant_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def viewer(django_user_model) -> Client:
    """A staff account with the tenants app's view permissions only."""
    user = django_user_model.objects.create_user("vic", password=PASSWORD, is_staff=True)
    user.user_permissions.set(tenants_permissions("view_"))
    client = Client()
    client.force_login(user)
    return client


LIMIT_MESSAGE = "{} must be a whole number from 1 to 1,000,000,000,000, or empty for no limit."


def errors_of(form) -> list[str]:
    return [error for errors in form.errors.values() for error in errors]


def audited(action: str) -> AdminAction:
    return AdminAction.objects.get(action=action)


def authenticate(token: str):
    key_cache.clear()  # as another process would see it: from the database
    return async_to_sync(authenticate_token)(token)


def test_a_rename_changes_the_name_keeps_the_slug_and_is_audited(staff: Client, tenant) -> None:
    response = staff.post("/console/tenants/acme/rename/", {"name": "  Acme Holdings "})
    assert response.status_code == 302 and response["Location"] == "/console/tenants/acme/"
    tenant.refresh_from_db()
    assert (tenant.slug, tenant.name) == ("acme", "Acme Holdings")
    action = AdminAction.objects.get(action="tenant.renamed")
    assert action.actor == "console:ada"
    assert (action.before, action.after) == ({"name": "Acme"}, {"name": "Acme Holdings"})
    assert "Acme Holdings" in staff.get("/console/tenants/acme/").content.decode()


def test_an_empty_name_is_refused_on_the_page_and_changes_nothing(staff: Client, tenant) -> None:
    response = staff.post("/console/tenants/acme/rename/", {"name": "   "})
    assert response.status_code == 400
    assert errors_of(response.context["rename_form"]) == ["A name is required."]
    assert Tenant.objects.get().name == "Acme"
    assert not AdminAction.objects.filter(action="tenant.renamed").exists()


def test_renaming_needs_the_change_permission(viewer: Client, tenant) -> None:
    response = viewer.post("/console/tenants/acme/rename/", {"name": "Evil"})
    assert response.status_code == 403 and Tenant.objects.get().name == "Acme"


@pytest.mark.django_db(transaction=True)
def test_suspending_asks_for_the_slug_then_refuses_every_key_and_resume_restores(
    staff: Client, issued
) -> None:
    page = staff.get("/console/tenants/acme/suspend/")
    assert page.status_code == 200 and "403" in page.content.decode()
    wrong = staff.post("/console/tenants/acme/suspend/", {"confirm": "acm"})
    assert wrong.status_code == 400
    assert errors_of(wrong.context["form"]) == [
        "That is not this tenant's slug; nothing was suspended."
    ]
    assert Tenant.objects.get().active

    done = staff.post("/console/tenants/acme/suspend/", {"confirm": "acme", "reason": "unpaid"})
    assert done.status_code == 302
    tenant = Tenant.objects.get()
    assert not tenant.active and tenant.suspended_at is not None
    with pytest.raises(TenantSuspended):
        authenticate(issued.token)
    html = staff.get("/console/tenants/acme/").content.decode()
    assert 'id="suspended-badge"' in html and 'id="resume-form"' in html
    listed = staff.get("/console/tenants/").content.decode()
    assert ">suspended</span>" in listed

    assert staff.post("/console/tenants/acme/resume/").status_code == 302
    assert authenticate(issued.token) is not None
    actions = list(AdminAction.objects.values_list("action", "actor")[:2])
    assert actions == [("tenant.resumed", "console:ada"), ("tenant.suspended", "console:ada")]
    assert audited("tenant.suspended").after == {
        "suspended_at": ANY,
        "reason": "unpaid",
    }


def test_suspend_and_resume_need_the_change_permission(viewer: Client, issued) -> None:
    assert viewer.post("/console/tenants/acme/suspend/", {"confirm": "acme"}).status_code == 403
    assert viewer.post("/console/tenants/acme/resume/").status_code == 403
    assert Tenant.objects.get().active


@pytest.mark.django_db(transaction=True)
def test_a_keys_own_limits_are_shown_set_audited_and_applied(staff: Client, issued) -> None:
    key_id = issued.api_key.key_id
    url = f"/console/tenants/acme/keys/{key_id}/limits/"
    tenant_page = staff.get("/console/tenants/acme/").content.decode()
    assert url in tenant_page
    assert staff.get(url).status_code == 200
    response = staff.post(url, {"rpm": "30", "tokens_per_day": "5000"})
    assert response.status_code == 302
    key = ApiKey.objects.get()
    assert (key.rpm, key.tokens_per_day, key.tpm) == (30, 5000, None)
    action = audited("key.limits_changed")
    assert action.key_id == key_id and action.actor == "console:ada"
    assert action.before and action.after
    assert action.before["rpm"] is None and action.after["rpm"] == 30
    record = authenticate(issued.token)
    assert record.key_limits["rpm"] == 30 and record.key_limits["tokens_per_day"] == 5000
    shown = staff.get("/console/tenants/acme/").content.decode()
    assert ">rpm 30</span>" in shown
    # Clearing a field removes the key's own limit.
    staff.post(url, {"rpm": "", "tokens_per_day": "5000"})
    assert ApiKey.objects.get().rpm is None


def test_a_key_limit_set_in_the_console_is_what_the_limiter_enforces(staff: Client, issued) -> None:
    staff.post(f"/console/tenants/acme/keys/{issued.api_key.key_id}/limits/", {"rpm": "1"})
    record = KeyRecord.from_row(ApiKey.objects.select_related("tenant").get())
    async_to_sync(limiter.admit)(record, tokens=1)
    with pytest.raises(RateLimited) as refused:
        async_to_sync(limiter.admit)(record, tokens=1)
    assert "key" in refused.value.message and "requests per minute" in refused.value.message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"rpm": "10k"}, "“10k” is not a whole number: Requests per minute takes digits only"),
        ({"tpm": "0"}, LIMIT_MESSAGE.format("Tokens per minute")),
        (
            {"tokens_per_day": "900", "tokens_per_month": "100"},
            "Tokens per day cannot be more than tokens per month.",
        ),
    ],
)
def test_a_bad_key_limit_is_explained_and_saves_nothing(
    staff: Client, issued, data: dict, message: str
) -> None:
    url = f"/console/tenants/acme/keys/{issued.api_key.key_id}/limits/"
    response = staff.post(url, data)
    assert response.status_code == 400
    assert any(error.startswith(message) for error in errors_of(response.context["form"]))
    assert ApiKey.objects.get().limit_overrides() == dict.fromkeys(LIMIT_MESSAGE_FIELDS)
    assert not AdminAction.objects.filter(action="key.limits_changed").exists()


LIMIT_MESSAGE_FIELDS = ("rpm", "tpm", "max_inflight", "tokens_per_day", "tokens_per_month")


def test_a_viewer_sees_a_keys_limits_but_cannot_set_them(viewer: Client, issued) -> None:
    url = f"/console/tenants/acme/keys/{issued.api_key.key_id}/limits/"
    page = viewer.get(url)
    assert page.status_code == 200 and 'id="key-limits-form"' not in page.content.decode()
    assert viewer.post(url, {"rpm": "1"}).status_code == 403
    assert ApiKey.objects.get().rpm is None


def test_a_tenant_made_without_limits_gets_the_default_preset(settings) -> None:
    settings.TENANT_DEFAULT_PRESET = "trial"
    tenant = tenant_create(slug="fresh", actor="test")
    assert {name: getattr(tenant, name) for name in LIMIT_PRESETS["trial"]} == dict(
        LIMIT_PRESETS["trial"]
    )
    assert (AdminAction.objects.get().after or {})["preset"] == "trial"
    # A limit given overrides the preset's; None is an explicit "no limit".
    other = tenant_create(slug="other", limits={"rpm": 5, "tokens_per_day": None}, actor="t")
    assert (other.rpm, other.tokens_per_day, other.tpm) == (5, None, LIMIT_PRESETS["trial"]["tpm"])


def test_the_create_tenant_command_takes_a_preset_and_defaults_to_the_setting(settings) -> None:
    settings.TENANT_DEFAULT_PRESET = "standard"
    call_command("create_tenant", "std")
    call_command("create_tenant", "big", "--preset", "enterprise", "--rpm", "7")
    std, big = Tenant.objects.get(slug="std"), Tenant.objects.get(slug="big")
    assert std.tokens_per_month == LIMIT_PRESETS["standard"]["tokens_per_month"]
    assert big.rpm == 7 and big.tpm == LIMIT_PRESETS["enterprise"]["tpm"]
    with pytest.raises(TenantError, match="unknown preset"):
        tenant_create(slug="x", preset="gold", actor="t")


def test_the_create_form_starts_from_the_default_or_the_chosen_preset(
    staff: Client, settings
) -> None:
    settings.TENANT_DEFAULT_PRESET = "trial"
    form = staff.get("/console/tenants/").context["form"]
    assert form.initial["rpm"] == LIMIT_PRESETS["trial"]["rpm"]
    form = staff.get("/console/tenants/?preset=enterprise").context["form"]
    assert form.initial["tokens_per_day"] == LIMIT_PRESETS["enterprise"]["tokens_per_day"]
    page = staff.get("/console/tenants/?preset=nonsense")
    assert page.status_code == 200 and page.context["form"].initial["rpm"] == 60


def test_the_limits_form_can_be_filled_from_a_preset_without_saving(staff: Client, tenant) -> None:
    response = staff.get("/console/tenants/acme/?preset=standard")
    form = response.context["limits_form"]
    assert form.initial["tokens_per_month"] == LIMIT_PRESETS["standard"]["tokens_per_month"]
    assert form.initial["scheduling_weight"] == 1  # not part of a preset: the tenant's own
    assert Tenant.objects.get().tokens_per_month is None  # shown, not saved
