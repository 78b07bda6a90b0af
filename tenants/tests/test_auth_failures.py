"""An address that keeps failing authentication gets 429 before any key lookup (REST)."""

import secrets

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from tenants import keycache, tokens
from tenants.services import api_key_issue

pytestmark = pytest.mark.django_db(transaction=True)

TRAEFIK = "127.0.0.1"  # the test client's own peer address, trusted as our proxy where said


class PeerClient(AsyncClient):
    """An AsyncClient whose requests come from `peer` (the ASGI scope's client)."""

    def __init__(self, peer: str) -> None:
        super().__init__()
        self.peer = peer

    def _base_scope(self, **request):
        # Private in Django, so absent from its stubs.
        return {**super()._base_scope(**request), "client": [self.peer, 50000]}  # type: ignore[misc]


def made_up_token() -> str:
    key_id = "".join(secrets.choice(tokens.BASE62) for _ in range(tokens.KEY_ID_LENGTH))
    return tokens.format_token("sk", key_id, tokens.new_secret())


async def models(client: AsyncClient, token: str, **headers: str):
    return await client.get("/v1/models", headers={"Authorization": f"Bearer {token}", **headers})


@pytest.fixture(autouse=True)
def five_failures(settings, monkeypatch):
    """Five failures a minute per address; the key_ids loaded from Postgres, in order."""
    settings.API_AUTH_FAILURES_PER_MINUTE = 5
    calls: list[str] = []
    real = keycache._load_record

    async def counted(key_id: str):
        calls.append(key_id)
        return await real(key_id)

    monkeypatch.setattr(keycache, "_load_record", counted)
    return calls


async def test_an_address_that_keeps_failing_gets_429_and_another_does_not(db) -> None:
    attacker, bystander = PeerClient("203.0.113.7"), PeerClient("203.0.113.8")
    for _ in range(5):
        assert (await models(attacker, made_up_token())).status_code == 401
    refused = await models(attacker, made_up_token())
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "rate_limit_exceeded" and error["param"] is None
    assert 1 <= int(refused["Retry-After"]) <= 12
    assert 1 <= int(refused["retry-after-ms"]) <= 12_000
    assert (await models(bystander, made_up_token())).status_code == 401


async def test_a_blocked_address_costs_no_key_lookup(five_failures) -> None:
    attacker = PeerClient("198.51.100.20")
    for _ in range(5):
        await models(attacker, made_up_token())
    looked_up = len(five_failures)
    for _ in range(30):
        assert (await models(attacker, made_up_token())).status_code == 429
    assert len(five_failures) == looked_up == 5


async def test_wrong_secrets_for_a_real_key_count_too(issued) -> None:
    prefix, key_id, _ = issued.token.split("_")
    guesser = PeerClient("198.51.100.30")
    for _ in range(5):
        response = await models(guesser, f"{prefix}_{key_id}_{tokens.new_secret()}")
        assert response.status_code == 401
    assert (await models(guesser, f"{prefix}_{key_id}_{tokens.new_secret()}")).status_code == 429


async def test_a_cached_valid_key_still_gets_in_from_a_blocked_address(tenant) -> None:
    cached = await sync_to_async(api_key_issue)(tenant=tenant, actor="t")
    uncached = await sync_to_async(api_key_issue)(tenant=tenant, actor="t")
    office = PeerClient("192.0.2.40")
    assert (await models(office, cached.token)).status_code == 200  # now cached here
    for _ in range(5):
        await models(office, made_up_token())
    assert (await models(office, cached.token)).status_code == 200
    assert (await models(office, uncached.token)).status_code == 429


async def test_missing_or_malformed_tokens_are_not_counted(db) -> None:
    client = PeerClient("192.0.2.41")
    for token in ["", "not-a-token", "sk_short_secret"] * 4:
        assert (await models(client, token)).status_code == 401
    assert (await models(client, made_up_token())).status_code == 401


async def test_behind_the_proxy_the_forwarded_address_is_the_one_limited(settings) -> None:
    settings.TRUSTED_PROXY_HEADER = "X-Forwarded-For"
    settings.TRUSTED_PROXY_ADDRESSES = [TRAEFIK]
    proxy = PeerClient(TRAEFIK)
    for _ in range(5):
        response = await models(proxy, made_up_token(), **{"X-Forwarded-For": "203.0.113.50"})
        assert response.status_code == 401
    blocked = await models(proxy, made_up_token(), **{"X-Forwarded-For": "203.0.113.50"})
    assert blocked.status_code == 429
    other = await models(proxy, made_up_token(), **{"X-Forwarded-For": "203.0.113.51"})
    assert other.status_code == 401  # the proxy itself is not what was limited
    # From a peer that is not our proxy the header proves nothing: that peer is what counts.
    spoofer = PeerClient("198.51.100.60")
    spoofed = await models(spoofer, made_up_token(), **{"X-Forwarded-For": "203.0.113.50"})
    assert spoofed.status_code == 401


async def test_a_valid_key_on_a_blocked_address_gets_in_after_the_cache_is_emptied(
    db, tenant
) -> None:
    """A key change anywhere empties every process's cache; a key this process had accepted
    is still looked up for a blocked address (its secret is no guess), a made-up one is not."""
    from tenants.keycache import bump_version

    issued = await sync_to_async(api_key_issue)(tenant=tenant, actor="t")
    shared = PeerClient("203.0.113.9")  # one NAT: a good client and a bad one behind it
    assert (await models(shared, issued.token)).status_code == 200
    for _ in range(6):
        await models(shared, made_up_token())
    assert (await models(shared, made_up_token())).status_code == 429
    await sync_to_async(bump_version)()
    keycache.key_cache._checked_at = float("-inf")  # see the change now, not in 0.5 s
    assert (await models(shared, issued.token)).status_code == 200
    assert (await models(shared, made_up_token())).status_code == 429
