"""Made-up key ids cost bounded memory and one query per id, however many ask at once."""

import asyncio
import secrets
import time

import pytest
from asgiref.sync import sync_to_async

from tenants import keycache, tokens
from tenants.keycache import key_cache
from tenants.services import api_key_issue
from tenants.tests.helpers import record_of

pytestmark = pytest.mark.django_db(transaction=True)


def random_id() -> str:
    return "".join(secrets.choice(tokens.BASE62) for _ in range(tokens.KEY_ID_LENGTH))


@pytest.fixture
def loads(monkeypatch, settings):
    """The key_ids each real load was made for, and a gate the test opens to let loads finish."""
    settings.API_KEY_LOAD_TIMEOUT_SECONDS = 60  # a held gate must not read as a slow Postgres
    settings.API_KEY_VERSION_POLL_SECONDS = 3600  # no Redis round trip inside the test's gets
    calls: list[str] = []
    gate = asyncio.Event()
    gate.set()
    real = keycache._load_record

    async def counted(key_id: str):
        calls.append(key_id)
        await gate.wait()
        return await real(key_id)

    monkeypatch.setattr(keycache, "_load_record", counted)
    return calls, gate


async def test_5000_unknown_ids_leave_at_most_the_bound_in_the_cache(loads, settings) -> None:
    settings.API_KEY_NEGATIVE_CACHE_SIZE = 500
    calls, _ = loads
    ids = [random_id() for _ in range(5000)]
    for start in range(0, len(ids), 50):
        batch = ids[start : start + 50]
        assert await asyncio.gather(*(key_cache.get(i) for i in batch)) == [None] * len(batch)
    assert len(calls) == 5000
    assert len(key_cache._unknown) == 500 and key_cache._entries == {}
    assert await key_cache.get(ids[-1]) is None and len(calls) == 5000  # the newest are kept
    assert await key_cache.get(ids[0]) is None and len(calls) == 5001  # the oldest went first


async def test_an_unknown_id_is_asked_again_once_its_mark_is_old(loads, settings) -> None:
    settings.API_KEY_NEGATIVE_CACHE_SECONDS = 30
    calls, _ = loads
    key_id = random_id()
    assert await key_cache.get(key_id) is None
    assert await key_cache.get(key_id) is None and len(calls) == 1
    key_cache._unknown[key_id] = time.monotonic() - 31
    assert await key_cache.get(key_id) is None and len(calls) == 2


async def test_an_old_unknown_mark_stays_unknown_while_postgres_cannot_answer(
    loads, settings, monkeypatch
) -> None:
    """Stale-if-error for unknown ids too: a made-up token is a 401 during a Postgres outage,
    as it was before it, not a 503 (the chaos run's Postgres cut found it)."""
    from django.db import OperationalError

    from core.errors import DependencyUnavailable

    settings.API_KEY_NEGATIVE_CACHE_SECONDS = 30
    known_unknown, never_seen = random_id(), random_id()
    assert await key_cache.get(known_unknown) is None
    key_cache._unknown[known_unknown] = time.monotonic() - 31  # past its age

    async def unreachable(key_id: str):
        raise OperationalError("connection refused")

    monkeypatch.setattr(keycache, "_load_record", unreachable)
    assert await key_cache.get(known_unknown) is None  # asked again, still unknown
    assert await key_cache.get(known_unknown) is None  # and during the back-off
    with pytest.raises(DependencyUnavailable):
        await key_cache.get(never_seen)  # never seen: the node cannot say


async def test_a_key_issued_after_its_id_was_probed_works_at_once(
    tenant, monkeypatch, settings
) -> None:
    settings.API_KEY_VERSION_POLL_SECONDS = 0
    probed = random_id()
    assert await key_cache.get(probed) is None  # remembered as unknown
    monkeypatch.setattr(tokens, "new_key_id", lambda: probed)
    issued = await sync_to_async(api_key_issue)(tenant=tenant, actor="t")
    # The issue bumped the version, which forgot every unknown mark.
    assert (await record_of(issued.token)).key_id == probed


async def until(condition, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_concurrent_gets_of_one_unknown_id_run_one_query(loads) -> None:
    calls, gate = loads
    await key_cache.get(random_id())  # the version is read now, not inside the gets below
    calls.clear()
    gate.clear()
    key_id = random_id()
    waiters = [asyncio.create_task(key_cache.get(key_id)) for _ in range(50)]
    await until(lambda: len(calls) >= 1)
    for _ in range(20):  # every waiter has run up to its await by now: let any stragglers in
        await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiters) == [None] * 50
    assert calls == [key_id]


async def test_concurrent_gets_of_a_known_key_share_its_one_load(issued, loads) -> None:
    calls, gate = loads
    await key_cache.get(random_id())  # the version is read now, not inside the gets below
    calls.clear()
    gate.clear()
    waiters = [asyncio.create_task(key_cache.get(issued.api_key.key_id)) for _ in range(20)]
    await until(lambda: len(calls) >= 1)
    waiters[0].cancel()  # a client that goes away does not cancel the others' load
    gate.set()
    results = await asyncio.gather(*waiters[1:])
    assert {record.api_key_pk if record else None for record in results} == {issued.api_key.pk}
    assert calls == [issued.api_key.key_id]
