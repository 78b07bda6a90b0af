"""A tenant's scheduling weight: stored with a database constraint, changed like its limits
(service, command), audited, and carried to every process's key records."""

import asyncio
import io
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, transaction

from tenants.models import AdminAction, Tenant
from tenants.services import TenantError, tenant_set_limits
from tenants.tests.helpers import record_of


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_a_new_tenant_weighs_one(tenant) -> None:
    assert tenant.scheduling_weight == 1


@pytest.mark.django_db
def test_the_database_refuses_a_weight_out_of_range(tenant) -> None:
    for weight in (0, 1001):
        with pytest.raises(IntegrityError), transaction.atomic():
            Tenant.objects.filter(pk=tenant.pk).update(scheduling_weight=weight)


@pytest.mark.django_db
def test_a_weight_change_is_audited_before_and_after(tenant) -> None:
    tenant_set_limits(tenant=tenant, changes={"scheduling_weight": 3}, actor="alice")
    tenant.refresh_from_db()
    assert tenant.scheduling_weight == 3
    change = AdminAction.objects.get(action=AdminAction.Action.LIMITS_CHANGED)
    assert change.actor == "alice" and change.before is not None and change.after is not None
    assert (change.before["scheduling_weight"], change.after["scheduling_weight"]) == (1, 3)


@pytest.mark.django_db
def test_it_rejects_bad_weights_and_writes_nothing(tenant) -> None:
    before = AdminAction.objects.count()
    for weight in (0, -1, 1001, None, 1.5, "2"):
        changes: dict[str, Any] = {"scheduling_weight": weight}  # wrong types on purpose
        with pytest.raises(TenantError, match="scheduling_weight"):
            tenant_set_limits(tenant=tenant, changes=changes, actor="t")
    tenant.refresh_from_db()
    assert tenant.scheduling_weight == 1
    assert AdminAction.objects.count() == before


@pytest.mark.django_db
def test_set_limits_takes_a_weight(tenant) -> None:
    out = run("set_limits", "acme", "--weight", "4")
    assert out.split()[-1] == "scheduling_weight=4"
    tenant.refresh_from_db()
    assert (tenant.scheduling_weight, tenant.rpm) == (4, 600)  # nothing else changed
    with pytest.raises(CommandError, match="scheduling_weight must be an integer from 1"):
        run("set_limits", "acme", "--weight", "0")


@pytest.mark.django_db(transaction=True)
async def test_key_records_carry_the_weight_and_follow_a_change(issued, tenant) -> None:
    assert (await record_of(issued.token)).scheduling_weight == 1
    await sync_to_async(tenant_set_limits)(
        tenant=tenant, changes={"scheduling_weight": 5}, actor="test"
    )
    await asyncio.sleep(0.6)  # one version poll, as for limits
    assert (await record_of(issued.token)).scheduling_weight == 5
