"""A key's record carries the names of the adapters granted to its tenant: loaded with the key
(one more query), by the preload too, through the shared snapshot, and fresh in every process
within the version poll after a grant or revoke."""

import asyncio
import json
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async

from core.tests.adapter_folders import write_adapter, write_base
from tenants.adapters import adapter_add, adapter_grant, adapter_remove, adapter_revoke
from tenants.keycache import KeyCache, KeyRecord, _load_record
from tenants.models import Adapter
from tenants.services import api_key_issue, tenant_create
from tenants.tests.helpers import record_of

pytestmark = pytest.mark.django_db(transaction=True)

POLL = 0.5


@pytest.fixture
def adapters(tmp_path: Path, settings) -> list[Adapter]:
    """Two adapters, `alpha` and `beta`, granted to nobody yet."""
    settings.INFERENCE_MODEL = str(write_base(tmp_path / "base"))
    settings.API_KEY_VERSION_POLL_SECONDS = POLL
    return [
        adapter_add(name=name, path=str(write_adapter(tmp_path / name)), actor="t")
        for name in ("alpha", "beta")
    ]


async def test_a_loaded_record_holds_its_tenants_grants_only(adapters, tenant, issued) -> None:
    alpha, beta = adapters
    other = await sync_to_async(tenant_create)(slug="other", actor="t")
    await sync_to_async(adapter_grant)(adapter=alpha, tenant=tenant, actor="t")
    await sync_to_async(adapter_grant)(adapter=beta, tenant=tenant, actor="t")
    await sync_to_async(adapter_grant)(adapter=beta, tenant=other, actor="t")
    loaded = await _load_record(issued.api_key.key_id)
    assert loaded is not None and loaded.adapters == {"alpha", "beta"}
    key = await sync_to_async(api_key_issue)(tenant=other, actor="t")
    assert (await record_of(key.token)).adapters == {"beta"}


async def test_grants_and_revokes_reach_a_cached_record_within_the_poll(
    adapters, tenant, issued
) -> None:
    alpha, _ = adapters
    assert (await record_of(issued.token)).adapters == frozenset()
    await sync_to_async(adapter_grant)(adapter=alpha, tenant=tenant, actor="t")
    await asyncio.sleep(POLL + 0.1)
    assert (await record_of(issued.token)).adapters == {"alpha"}
    await sync_to_async(adapter_revoke)(adapter=alpha, tenant=tenant, actor="t")
    await asyncio.sleep(POLL + 0.1)
    assert (await record_of(issued.token)).adapters == frozenset()
    await sync_to_async(adapter_grant)(adapter=alpha, tenant=tenant, actor="t")
    await asyncio.sleep(POLL + 0.1)
    assert (await record_of(issued.token)).adapters == {"alpha"}
    await sync_to_async(adapter_remove)(adapter=alpha, actor="t")
    await asyncio.sleep(POLL + 0.1)
    assert (await record_of(issued.token)).adapters == frozenset()


def test_the_preload_carries_the_grants(adapters, tenant, issued) -> None:
    adapter_grant(adapter=adapters[1], tenant=tenant, actor="t")
    cache = KeyCache()
    assert cache.preload(10) == 1
    record = cache.cached_now(issued.api_key.key_id)
    assert record is not None and record.adapters == {"beta"}


def test_the_shared_snapshot_keeps_the_grants_and_reads_old_ones_as_none(
    adapters, tenant, issued
) -> None:
    adapter_grant(adapter=adapters[0], tenant=tenant, actor="t")
    cache = KeyCache()
    cache.preload(10)
    record = cache.cached_now(issued.api_key.key_id)
    assert record is not None
    payload = record.to_json()
    assert json.loads(payload)["adapters"] == ["alpha"]
    assert KeyRecord.from_json(payload) == record
    written_before_adapters = json.loads(payload)
    del written_before_adapters["adapters"]
    assert KeyRecord.from_json(json.dumps(written_before_adapters)).adapters == frozenset()
