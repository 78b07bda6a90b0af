"""The scheduling weight in the console's limits form: shown, saved and audited like the
limits, explained when out of range, and 1 when left empty."""

import pytest
from django.test import Client

from tenants.models import AdminAction, Tenant

LIMITS = {"rpm": 600, "tpm": 100000, "burst_percent": 20}
WEIGHT_MESSAGE = "Scheduling weight must be a whole number from 1 to 1,000."

pytestmark = pytest.mark.django_db


def test_the_limits_form_shows_the_weight(staff: Client, tenant) -> None:
    page = staff.get("/console/tenants/acme/").content.decode()
    assert 'name="scheduling_weight"' in page and "Scheduling weight" in page


def test_a_weight_is_saved_and_audited(staff: Client, tenant) -> None:
    response = staff.post("/console/tenants/acme/limits/", {**LIMITS, "scheduling_weight": 3})
    assert response.status_code == 302
    tenant.refresh_from_db()
    assert tenant.scheduling_weight == 3
    action = AdminAction.objects.get(action=AdminAction.Action.LIMITS_CHANGED)
    assert action.before is not None and action.after is not None
    assert (action.before["scheduling_weight"], action.after["scheduling_weight"]) == (1, 3)
    page = staff.get(response["Location"]).content.decode()
    assert "Limits saved (scheduling_weight)" in page


@pytest.mark.parametrize("weight", [0, 1001, "x"])
def test_a_bad_weight_is_explained_and_changes_nothing(staff: Client, tenant, weight) -> None:
    response = staff.post("/console/tenants/acme/limits/", {**LIMITS, "scheduling_weight": weight})
    assert response.status_code == 400
    assert response.context["limits_form"].errors["scheduling_weight"] == [WEIGHT_MESSAGE]
    tenant.refresh_from_db()
    assert tenant.scheduling_weight == 1
    assert not AdminAction.objects.filter(action=AdminAction.Action.LIMITS_CHANGED).exists()


def test_an_empty_weight_is_one(staff: Client, tenant) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(scheduling_weight=4)
    response = staff.post("/console/tenants/acme/limits/", {**LIMITS, "scheduling_weight": ""})
    assert response.status_code == 302
    tenant.refresh_from_db()
    assert tenant.scheduling_weight == 1


def test_a_new_tenant_can_be_given_a_weight(staff: Client) -> None:
    data = {"slug": "globex", "burst_percent": 20, "scheduling_weight": 2}
    assert staff.post("/console/tenants/", data).status_code == 302
    assert Tenant.objects.get(slug="globex").scheduling_weight == 2
