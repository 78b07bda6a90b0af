"""The adapter registry's writes (tenants/adapters.py) and reads (tenants/adapter_selectors.py):
each write atomic, audited and announced after commit; every refusal an AdapterRefused with a
message fit for a user, writing nothing."""

import importlib
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest
from django.db import IntegrityError, transaction

from core.redis import get_sync_redis
from core.tests.adapter_folders import write_adapter, write_base
from tenants.adapter_selectors import (
    AdapterUsageRow,
    adapter_tenants,
    adapter_usage,
    tenant_adapters,
)
from tenants.adapters import (
    REGISTRY_VERSION_KEY,
    AdapterRefused,
    adapter_add,
    adapter_grant,
    adapter_remove,
    adapter_revoke,
)
from tenants.keycache import VERSION_KEY
from tenants.models import Adapter, AdapterGrant, AdapterUsageDay, AdminAction, Tenant
from tenants.services import tenant_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def folder(tmp_path: Path, settings) -> Callable[..., str]:
    """Writes adapters that fit the served base (a tiny T5's config.json) and returns their path."""
    settings.INFERENCE_MODEL = str(write_base(tmp_path / "base"))
    settings.INFERENCE_MAX_ADAPTER_RANK = 16

    def write(name: str = "a", **kwargs: object) -> str:
        return str(write_adapter(tmp_path / "adapters" / name, **kwargs))  # type: ignore[arg-type]

    return write


@pytest.fixture
def capture(django_capture_on_commit_callbacks):
    """Runs the after-commit announcements of the writes inside it."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def versions() -> tuple[object, object]:
    redis = get_sync_redis()
    return redis.get(REGISTRY_VERSION_KEY), redis.get(VERSION_KEY)


def actions() -> list[tuple[str, str, str | None]]:
    return [
        (a.action, a.actor, a.tenant.slug if a.tenant else None)
        for a in AdminAction.objects.filter(action__startswith="adapter.").order_by("id")
    ]


def test_adding_registers_the_folder_audits_and_moves_the_registry_version(folder, capture) -> None:
    path = folder(rank=8, targets=["v", "q", "wo"])
    with capture() as callbacks:
        adapter = adapter_add(name="support-v2", path=path, actor="ops@example.com")
    assert len(callbacks) == 1
    adapter = Adapter.objects.get(pk=adapter.pk)
    assert (adapter.name, adapter.path, adapter.rank) == ("support-v2", path, 8)
    assert adapter.target_modules == ["q", "v", "wo"]
    assert versions()[0] is not None
    assert actions() == [("adapter.added", "ops@example.com", None)]
    assert AdminAction.objects.get().after == {
        "name": "support-v2",
        "path": path,
        "rank": 8,
        "target_modules": ["q", "v", "wo"],
    }


def test_a_relative_path_is_stored_absolute(folder, monkeypatch, tmp_path: Path) -> None:
    folder("rel")
    monkeypatch.chdir(tmp_path)
    adapter = adapter_add(name="rel", path="adapters/rel", actor="t")
    assert adapter.path == str(tmp_path / "adapters" / "rel")


@pytest.mark.parametrize("name", ["", "Upper", "-lead", "has space", "a/b", "x" * 65, "ünï", "a\n"])
def test_a_malformed_name_is_refused(folder, name: str) -> None:
    with pytest.raises(AdapterRefused, match="an adapter name is 1-64 characters"):
        adapter_add(name=name, path=folder(), actor="t")
    assert not Adapter.objects.exists() and not AdminAction.objects.exists()


def test_the_served_base_models_name_is_refused(folder, settings) -> None:
    settings.INFERENCE_MODEL_NAME = "flan"
    for name in ("flan", "base"):  # the id clients see, and the model folder's name
        with pytest.raises(AdapterRefused, match=f"'{name}' is the served base model's name"):
            adapter_add(name=name, path=folder(), actor="t")
    assert not Adapter.objects.exists()


def test_the_database_refuses_a_malformed_name_too(folder) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Adapter.objects.create(name="Bad Name", path="/x", rank=4, target_modules=["q"])


def test_a_taken_name_is_refused(folder) -> None:
    adapter_add(name="taken", path=folder("one"), actor="t")
    with pytest.raises(AdapterRefused, match="an adapter named 'taken' already exists"):
        adapter_add(name="taken", path=folder("two"), actor="t")
    assert Adapter.objects.get().path.endswith("one")
    assert len(actions()) == 1


def test_an_invalid_folder_is_refused_with_its_reason_and_writes_nothing(folder, capture) -> None:
    with capture() as callbacks, pytest.raises(AdapterRefused) as refused:
        adapter_add(name="big", path=folder(rank=32), actor="t")
    assert str(refused.value) == (
        "the folder is not an adapter this node can serve: rank 32 is above this node's "
        "maximum (16)"
    )
    with pytest.raises(AdapterRefused, match="does not exist"):
        adapter_add(name="gone", path="/no/such/folder", actor="t")
    with pytest.raises(AdapterRefused, match="give the adapter's folder"):
        adapter_add(name="blank", path=" ", actor="t")
    assert not Adapter.objects.exists() and not AdminAction.objects.exists()
    assert callbacks == [] and versions() == (None, None)


def test_granting_and_revoking_audit_with_the_tenant_and_move_the_key_version(
    folder, capture, tenant, issued
) -> None:
    adapter = adapter_add(name="a", path=folder(), actor="t")
    with capture():
        grant = adapter_grant(adapter=adapter, tenant=tenant, actor="op")
    granted_version = versions()[1]
    assert granted_version is not None
    assert (grant.adapter, grant.tenant) == (adapter, tenant)
    assert tenant_adapters(tenant) == [adapter]
    with capture():
        adapter_revoke(adapter=adapter, tenant=tenant, actor="op")
    assert versions()[1] not in (None, granted_version)
    assert tenant_adapters(tenant) == []
    assert actions() == [
        ("adapter.added", "t", None),
        ("adapter.granted", "op", "acme"),
        ("adapter.revoked", "op", "acme"),
    ]


def test_a_second_grant_and_a_revoke_of_nothing_are_refused(folder, tenant) -> None:
    adapter = adapter_add(name="a", path=folder(), actor="t")
    adapter_grant(adapter=adapter, tenant=tenant, actor="t")
    with pytest.raises(AdapterRefused, match="'a' is already granted to 'acme'"):
        adapter_grant(adapter=adapter, tenant=tenant, actor="t")
    adapter_revoke(adapter=adapter, tenant=tenant, actor="t")
    with pytest.raises(AdapterRefused, match="'a' is not granted to 'acme'"):
        adapter_revoke(adapter=adapter, tenant=tenant, actor="t")
    assert [a for a, _, _ in actions()] == ["adapter.added", "adapter.granted", "adapter.revoked"]


def test_removing_drops_the_grants_keeps_the_usage_and_announces_both(
    folder, capture, tenant, issued
) -> None:
    other = tenant_create(slug="other", actor="t")
    adapter = adapter_add(name="a", path=folder(), actor="t")
    for who in (tenant, other):
        adapter_grant(adapter=adapter, tenant=who, actor="t")
    AdapterUsageDay.objects.create(tenant=tenant, adapter="a", day=date(2026, 12, 1), requests=3)
    with capture() as callbacks:
        adapter_remove(adapter=adapter, actor="op")
    assert len(callbacks) == 2 and None not in versions()
    assert not Adapter.objects.exists() and not AdapterGrant.objects.exists()
    assert AdapterUsageDay.objects.get().requests == 3
    removed = AdminAction.objects.get(action=AdminAction.Action.ADAPTER_REMOVED)
    assert removed.before is not None and removed.before["tenants"] == ["acme", "other"]
    with pytest.raises(AdapterRefused, match="the adapter 'a' no longer exists"):
        adapter_grant(adapter=adapter, tenant=tenant, actor="t")


def test_the_selectors_list_grants_both_ways_by_name(folder, tenant) -> None:
    other = tenant_create(slug="beta", actor="t")
    zed = adapter_add(name="zed", path=folder("z"), actor="t")
    alpha = adapter_add(name="alpha", path=folder("a"), actor="t")
    for adapter, who in ((zed, tenant), (alpha, tenant), (zed, other)):
        adapter_grant(adapter=adapter, tenant=who, actor="t")
    assert tenant_adapters(tenant) == [alpha, zed]
    assert tenant_adapters(other) == [zed]
    assert adapter_tenants(zed) == [tenant, other]
    assert adapter_tenants(alpha) == [tenant]


def test_usage_is_read_per_day_tenant_and_adapter(tenant) -> None:
    other = tenant_create(slug="beta", actor="t")
    rows = [
        (tenant, "a", date(2026, 12, 1), 1),
        (tenant, "a", date(2026, 12, 2), 2),
        (tenant, "b", date(2026, 12, 2), 4),
        (other, "a", date(2026, 12, 2), 8),
        (other, "a", date(2026, 12, 3), 16),
    ]
    for who, name, day, n in rows:
        AdapterUsageDay.objects.create(
            tenant=who, adapter=name, day=day, requests=n, prompt_tokens=10 * n, completion_tokens=n
        )
    start, end = date(2026, 12, 1), date(2026, 12, 2)
    assert adapter_usage(start=start, end=end) == [
        AdapterUsageRow(date(2026, 12, 2), "acme", "a", 2, 20, 2),
        AdapterUsageRow(date(2026, 12, 2), "acme", "b", 4, 40, 4),
        AdapterUsageRow(date(2026, 12, 2), "beta", "a", 8, 80, 8),
        AdapterUsageRow(date(2026, 12, 1), "acme", "a", 1, 10, 1),
    ]
    by_tenant = adapter_usage(start=start, end=end, tenant=other)
    assert [r.requests for r in by_tenant] == [8]
    by_adapter = adapter_usage(start=start, end=date(2026, 12, 3), adapter="a")
    assert [r.requests for r in by_adapter] == [16, 2, 8, 1]


def test_the_roles_may_read_adapters_and_only_administrators_change_them() -> None:
    from django.apps import apps
    from django.contrib.auth.models import Group

    # The groups as the migrations make them (a transactional test may have emptied them).
    importlib.import_module("tenants.migrations.0005_console_roles").create_roles(apps, None)
    importlib.import_module("tenants.migrations.0008_adapters").grant_views(apps, None)
    views = {"view_adapter", "view_adaptergrant", "view_adapterusageday"}
    for role in ("Viewer", "Operator", "Administrator"):
        codenames = set(Group.objects.get(name=role).permissions.values_list("codename", flat=True))
        assert views <= codenames, role
        assert ("manage_adapters" in codenames) == (role == "Administrator"), role
    assert Tenant._meta.permissions[1][0] == "manage_adapters"
