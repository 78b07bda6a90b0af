"""A seed outside what torch takes is refused up front (400 `seed`, before any limit is
spent), and a request that still fails on its own gets an error that fits its cause."""

import pytest
from django.test import AsyncClient
from pydantic import ValidationError

from core.redis import get_sync_redis
from engine.generation import SEED_MAX, SEED_MIN
from engine.runtime import GenerationFailed, InvalidGeneration, RowFailed
from inference import engines
from inference.schemas import WsCompletionCreate

pytestmark = pytest.mark.django_db(transaction=True)


def _limiter_keys(tenant_id: int) -> list[bytes]:
    """The tenant's limiter keys, but its usage buffer (a 400 counts one error there)."""
    keys = get_sync_redis().scan_iter(match=f"rl*:v1:{{t:{tenant_id}}}:*")
    return sorted(key for key in keys if not key.endswith(b":usage"))


async def _complete(token: str, **params: object):
    body = {"model": engines.served_model_id(), "prompt": "Hello", "max_tokens": 3, **params}
    return await AsyncClient().post(
        "/v1/completions",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )


@pytest.mark.parametrize("seed", [SEED_MAX + 1, SEED_MIN - 1, 2**200])
async def test_a_seed_torch_cannot_take_gets_400_before_any_limit_is_spent(
    installed, make_engine, issued, seed: int
) -> None:
    installed(make_engine())
    response = await _complete(issued.token, seed=seed, temperature=1.0)
    error = response.json()["error"]
    assert response.status_code == 400
    assert error["param"] == "seed" and error["type"] == "invalid_request_error"
    assert _limiter_keys(issued.api_key.tenant_id) == []  # refused before admission


async def test_the_largest_and_smallest_seeds_are_served(installed, make_engine, issued) -> None:
    installed(make_engine())
    for seed in (SEED_MAX, SEED_MIN):
        response = await _complete(issued.token, seed=seed, temperature=1.0)
        assert response.status_code == 200, response.json()


def test_the_websocket_message_bounds_the_seed_too() -> None:
    frame = {"type": "completion.create", "id": "1", "prompt": "Hello"}
    assert WsCompletionCreate.model_validate({**frame, "seed": SEED_MAX}).seed == SEED_MAX
    with pytest.raises(ValidationError, match="seed"):
        WsCompletionCreate.model_validate({**frame, "seed": SEED_MAX + 1})


def test_engine_errors_map_to_what_their_cause_deserves() -> None:
    invalid = engines.api_error(InvalidGeneration("seed", "seed must be ..."))
    assert (invalid.status, invalid.param) == (400, "seed")
    # One request's own fault would happen again: a 500 that does not ask for a retry.
    own = engines.api_error(RowFailed("The model failed on this request alone (ValueError)."))
    assert (own.status, own.type, own.code) == (500, "server_error", "generation_failed")
    assert "retry" not in own.message.lower() and "ValueError" not in own.message
    # A failed batch (the model, its process) may well pass on another try.
    batch = engines.api_error(GenerationFailed("The model failed on this batch: OSError"))
    assert (batch.status, batch.code) == (503, "model_unavailable")
