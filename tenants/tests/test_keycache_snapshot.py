"""A process that (re)starts while Postgres is down: the shared snapshot in Redis tells it what
the other processes learned, so a valid key works and an invalid one gets 401, not 503.

A fresh KeyCache stands for the new process (authenticate_token is pointed at it) and Postgres
is cut as in test_keycache_outage.py, at the one function that reads key rows; one test starts
a real second process whose Postgres is unreachable.
"""

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as aredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import OperationalError
from django.test import AsyncClient

from core.errors import DependencyUnavailable
from core.redis import get_redis
from tenants import auth, keycache, keysnapshot, tokens
from tenants.auth import authenticate_token
from tenants.keycache import KeyCache, KeyRecord
from tenants.models import ApiKey
from tenants.services import IssuedKey, api_key_issue, api_key_revoke, tenant_suspend
from tenants.tests.helpers import record_of
from tests.childproc import child_env, django_script, start_child

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def postgres_down(monkeypatch) -> Callable[[], list[str]]:
    calls: list[str] = []

    async def unreachable(key_id: str) -> KeyRecord | None:
        calls.append(key_id)
        raise OperationalError("connection refused")

    def cut() -> list[str]:
        monkeypatch.setattr(keycache, "_load_record", unreachable)
        return calls

    return cut


@pytest.fixture
def restart(monkeypatch) -> Callable[[], KeyCache]:
    """Give authenticate_token the empty cache of a process that has just started."""

    def start() -> KeyCache:
        cache = KeyCache()
        monkeypatch.setattr(auth, "key_cache", cache)
        return cache

    return start


async def shared() -> None:
    """Wait for the snapshot writes the loads so far started in the background."""
    await asyncio.gather(*keycache._snapshot_tasks)


def made_up_token(key_id: str | None = None) -> str:
    key_id = key_id or tokens.new_key_id()
    return tokens.format_token(settings.API_KEY_PREFIX, key_id, tokens.new_secret())


async def revoked_key(tenant) -> IssuedKey:
    key = await sync_to_async(api_key_issue)(tenant=tenant, name="old", actor="test")
    await sync_to_async(api_key_revoke)(api_key=key.api_key, actor="test")
    return key


async def test_a_new_process_tells_keys_apart_during_an_outage(
    issued, tenant, postgres_down, restart
) -> None:
    revoked = await revoked_key(tenant)
    unknown = made_up_token()
    # Another process meets each of them while Postgres is up.
    assert await authenticate_token(issued.token) is not None
    assert await authenticate_token(revoked.token) is None
    assert await authenticate_token(unknown) is None
    await shared()
    calls = postgres_down()
    restart()
    assert (await record_of(issued.token)).key_id == issued.api_key.key_id
    assert await authenticate_token(made_up_token(issued.api_key.key_id)) is None  # wrong secret
    assert await authenticate_token(revoked.token) is None
    assert await authenticate_token(unknown) is None
    with pytest.raises(DependencyUnavailable):  # an id nobody has asked Postgres about
        await authenticate_token(made_up_token())
    assert len(calls) == 1  # then the back-off; the snapshot answered the rest
    assert (await record_of(issued.token)).key_id == issued.api_key.key_id  # kept in memory


# A process started while Postgres is unreachable (nothing listens on port 1): for each token on
# stdin, how it authenticates.
CHILD = """
import asyncio, sys
from core.errors import DependencyUnavailable
from tenants.auth import authenticate_token

async def main():
    for line in sys.stdin:
        try:
            outcome = "ok" if await authenticate_token(line.strip()) else "refused"
        except DependencyUnavailable:
            outcome = "unavailable"
        print(outcome, flush=True)

asyncio.run(main())
"""


async def test_a_process_started_during_an_outage_answers_from_the_snapshot(issued, tenant) -> None:
    revoked = await revoked_key(tenant)
    unknown = made_up_token()
    for token in (issued.token, revoked.token, unknown):
        await authenticate_token(token)
    await shared()
    env = child_env(DATABASE_URL="postgres://postgres@127.0.0.1:1/down", API_KEY_PRELOAD="0")
    child = start_child(django_script(CHILD), env)
    wrong = made_up_token(issued.api_key.key_id)
    tokens_in = (issued.token, wrong, revoked.token, unknown, made_up_token())
    try:
        lines = "".join(f"{token}\n" for token in tokens_in)
        out, _ = await sync_to_async(child.communicate)(lines, 60)
    finally:
        child.kill()
    assert out.split() == ["ok", "refused", "refused", "refused", "unavailable"]


async def test_a_new_process_answers_401_not_503_over_http(issued, postgres_down, restart) -> None:
    unknown = made_up_token()
    for token in (issued.token, unknown):
        await authenticate_token(token)
    await shared()
    postgres_down()
    restart()
    client = AsyncClient()
    for token, status in ((issued.token, 200), (unknown, 401), (made_up_token(), 503)):
        response = await client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == status, response.json()


async def test_without_redis_either_an_unseen_key_still_gets_503(
    issued, postgres_down, restart, monkeypatch
) -> None:
    assert await authenticate_token(issued.token) is not None
    await shared()
    postgres_down()
    restart()
    dead = aredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.1)
    monkeypatch.setattr(keysnapshot, "get_redis", lambda: dead)
    with pytest.raises(DependencyUnavailable):
        await authenticate_token(issued.token)


async def test_no_secret_reaches_redis(issued) -> None:
    assert await authenticate_token(issued.token) is not None
    await shared()
    stored = await get_redis().get(keysnapshot.RECORD_PREFIX + issued.api_key.key_id)
    assert isinstance(stored, bytes) and issued.api_key.secret_hash.encode() in stored
    secret = issued.token.rsplit("_", 1)[1].encode()
    for key in await get_redis().keys("*"):
        if await get_redis().type(key) == b"string":
            value = await get_redis().get(key)
            assert isinstance(value, bytes) and secret not in value


async def test_a_revocation_while_postgres_is_up_is_not_undone_by_the_snapshot(
    issued, postgres_down, restart
) -> None:
    assert await authenticate_token(issued.token) is not None
    await shared()
    await sync_to_async(api_key_revoke)(api_key=issued.api_key, actor="test")
    postgres_down()
    restart()
    # The snapshot of the valid key went with the change: nothing vouches for it any more.
    with pytest.raises(DependencyUnavailable):
        await authenticate_token(issued.token)


async def test_a_reload_after_a_revocation_shares_the_revoked_record(
    issued, postgres_down, restart
) -> None:
    assert await authenticate_token(issued.token) is not None
    await sync_to_async(api_key_revoke)(api_key=issued.api_key, actor="test")
    await asyncio.sleep(0.6)  # the version poll drops the cached record
    assert await authenticate_token(issued.token) is None  # reloaded from Postgres
    await shared()
    postgres_down()
    restart()
    assert await authenticate_token(issued.token) is None


async def test_a_load_from_before_a_change_cannot_write_its_snapshot_after_it(issued) -> None:
    version = await get_redis().get(keycache.VERSION_KEY)
    row = await ApiKey.objects.select_related("tenant").aget(pk=issued.api_key.pk)
    before = KeyRecord.from_row(row)  # read before the revocation commits
    await sync_to_async(api_key_revoke)(api_key=issued.api_key, actor="test")
    await keysnapshot.remember(before.key_id, before.to_json(), version)
    assert await keysnapshot.recall(before.key_id) is None


async def test_suspending_a_tenant_drops_its_keys_snapshots(
    issued, tenant, postgres_down, restart
) -> None:
    assert await authenticate_token(issued.token) is not None
    await shared()
    await sync_to_async(tenant_suspend)(tenant=tenant, actor="test")
    postgres_down()
    restart()
    with pytest.raises(DependencyUnavailable):
        await authenticate_token(issued.token)


async def test_made_up_ids_leave_at_most_the_bound_in_redis(
    monkeypatch, postgres_down, restart, settings
) -> None:
    settings.API_KEY_NEGATIVE_CACHE_SIZE = 100

    async def nobody(key_id: str) -> KeyRecord | None:
        return None  # Postgres knows none of them

    monkeypatch.setattr(keycache, "_load_record", nobody)
    ids = [tokens.new_key_id() for _ in range(5000)]
    for key_id in ids:
        assert await keycache.key_cache.get(key_id) is None
    await shared()
    redis = get_redis()
    assert await redis.zcard(keysnapshot.UNKNOWN_KEY) == 100
    assert await redis.pttl(keysnapshot.UNKNOWN_KEY) > 0
    assert len(await redis.keys("auth:v1:{keys}:snapshot*")) == 1  # the one set, no key per id
    postgres_down()
    restart()
    assert await authenticate_token(made_up_token(ids[-1])) is None  # the newest are kept
    with pytest.raises(DependencyUnavailable):
        await authenticate_token(made_up_token(ids[0]))
