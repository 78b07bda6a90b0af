"""Work before admission: long prompts are encoded off the event loop, requests refused
before admission spend the key's request rate (never tokens), and max_tokens past the
engine's limit is refused before anything is reserved."""

import threading

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from hypothesis import given, settings
from hypothesis import strategies as st

from core.redis import get_sync_redis
from inference import engines
from tenants.services import api_key_issue, tenant_set_limits

pytestmark = pytest.mark.django_db(transaction=True)


async def complete(token: str, **params: object):
    body = {"model": engines.served_model_id(), "prompt": "Hello", "max_tokens": 4, **params}
    return await AsyncClient().post(
        "/v1/completions",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )


def limiter_keys(tenant_id: int) -> list[str]:
    redis = get_sync_redis()
    return sorted(key.decode() for key in redis.scan_iter(match=f"rl:v1:{{t:{tenant_id}}}:*"))


async def test_a_long_prompt_is_encoded_off_the_event_loop(
    installed, make_engine, issued, monkeypatch
) -> None:
    engine = installed(make_engine())
    threads: list[threading.Thread] = []
    real = engine.encode_prompt

    def recording(text: str) -> list[int]:
        threads.append(threading.current_thread())
        ids: list[int] = real(text)
        return ids

    monkeypatch.setattr(engine, "encode_prompt", recording)
    loop_thread = threading.current_thread()
    await complete(issued.token, prompt="Hello there. " * 10)
    await complete(issued.token, prompt="word " * (engines.INLINE_PROMPT_CHARS // 5 + 1))
    assert threads[0] is loop_thread  # short: cheaper than a thread hop
    assert threads[1] is not loop_thread  # long: the event loop keeps serving meanwhile


async def test_requests_refused_before_admission_spend_the_keys_request_rate(
    installed, make_engine, tenant
) -> None:
    installed(make_engine())
    await sync_to_async(tenant_set_limits)(
        tenant=tenant, changes={"rpm": 2, "burst_percent": 1}, actor="t"
    )
    issued = await sync_to_async(api_key_issue)(tenant=tenant, actor="t")
    too_long = "word " * 3000  # far past the tiny model's 512 tokens, under the char cap
    statuses = [(await complete(issued.token, prompt=too_long)).status_code for _ in range(4)]
    # The burst allows two, then the rate is spent: 429 (then from the in-process cache).
    assert statuses[:1] == [400] and statuses[-1] == 429, statuses
    refused = await complete(issued.token)  # a good request of the same key: 429 as well
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    keys = limiter_keys(tenant.pk)
    assert not [key for key in keys if ":lease" in key or key.endswith((":tpm", ":inflight"))]


async def test_max_tokens_past_the_engine_limit_is_refused_before_any_reservation(
    installed, make_engine, issued
) -> None:
    installed(make_engine(max_output_tokens=8))
    response = await complete(issued.token, max_tokens=9)
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "max_tokens", error
    keys = limiter_keys(issued.api_key.tenant_id)
    # Only the request rate was spent (rpm); no tokens reserved, no lease taken.
    assert keys and all(key.endswith(":rpm") for key in keys), keys


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.characters(codec="utf-8"), max_size=300) | st.from_regex(r"[a-z0-9 .,\t]*"))
def test_the_cheap_token_bound_never_exceeds_the_real_count(tiny_loaded, text: str) -> None:
    assert tiny_loaded.min_tokens(text) <= len(tiny_loaded.encode(text))


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model_dir):
    from engine.loading import load_model

    return load_model(str(tiny_model_dir), quantization="none", device="cpu")


async def test_a_prompt_certainly_too_long_is_refused_without_encoding(
    installed, make_engine, issued, monkeypatch
) -> None:
    engine = installed(make_engine())
    encoded: list[str] = []
    model = engine._loaded()
    real = model.encode

    def recording(text: str) -> list[int]:
        encoded.append(text)
        ids: list[int] = real(text)
        return ids

    monkeypatch.setattr(model, "encode", recording)
    response = await complete(issued.token, prompt="word " * 600)  # 600 words > 512 tokens
    error = response.json()["error"]
    assert response.status_code == 400 and "at least 601" in error["message"], error
    assert encoded == []
