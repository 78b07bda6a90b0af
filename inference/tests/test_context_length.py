"""A prompt past the model's context is OpenAI's 400 context_length_exceeded (the SDK's
BadRequestError, LangChain's context-overflow error), with honest numbers, on REST and on the
WebSocket alike; 413 stays for bodies over the byte cap."""

import json
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from core.redis import get_sync_redis
from inference import engines
from inference.consumers import CompletionConsumer

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 16  # the engine's max_input_tokens in these tests


async def post(path: str, token: str, body: dict[str, Any]):
    return await AsyncClient().post(
        path, body, content_type="application/json", headers={"Authorization": f"Bearer {token}"}
    )


async def complete(token: str, prompt: str):
    body = {"model": engines.served_model_id(), "prompt": prompt, "max_tokens": 2}
    return await post("/v1/completions", token, body)


def context_error(response) -> dict[str, Any]:
    assert response.status_code == 400, response.content
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "context_length_exceeded"
    return error


def reserved_tokens(tenant_id: int) -> list[str]:
    redis = get_sync_redis()
    keys = [key.decode() for key in redis.scan_iter(match=f"rl:v1:{{t:{tenant_id}}}:*")]
    return [key for key in keys if ":lease" in key or key.endswith((":tpm", ":inflight"))]


async def test_a_counted_prompt_gives_its_tokens_and_the_limit(
    installed, make_engine, issued
) -> None:
    engine = installed(make_engine(max_input_tokens=LIMIT))
    prompt = "themodelruns" * 10  # one word of many tokens: only encoding can tell
    tokens = engine.count_tokens(prompt)
    assert tokens > LIMIT
    error = context_error(await complete(issued.token, prompt))
    assert error["param"] == "prompt"
    assert f"maximum context length is {LIMIT} tokens" in error["message"]
    assert f"your prompt resulted in {tokens} tokens" in error["message"]
    assert reserved_tokens(issued.api_key.tenant_id) == []  # refused before admission


async def test_a_prompt_refused_by_its_words_says_at_least(
    installed, make_engine, issued, monkeypatch
) -> None:
    engine = installed(make_engine(max_input_tokens=LIMIT))
    encoded: list[str] = []
    model = engine._loaded()
    real = model.encode

    def recording(text: str) -> list[int]:
        encoded.append(text)
        ids: list[int] = real(text)
        return ids

    monkeypatch.setattr(model, "encode", recording)
    error = context_error(await complete(issued.token, "word " * 40))
    # Not tokenized, so the count is a lower bound and says so.
    assert encoded == []
    assert "resulted in at least 41 tokens (counted without tokenizing)" in error["message"]


async def test_a_prompt_over_the_character_cap_gives_its_characters(
    installed, make_engine, issued, settings
) -> None:
    installed(make_engine(max_input_tokens=LIMIT))
    settings.API_MAX_PROMPT_CHARS = 100
    error = context_error(await complete(issued.token, "x" * 150))
    assert error["param"] == "prompt"
    assert "maximum prompt length is 100 characters" in error["message"]
    assert "your prompt has 150 characters" in error["message"]
    assert "tokens" not in error["message"].split("However")[1]  # none were counted


async def test_the_engines_own_character_cap_is_a_context_error_too(
    installed, make_engine, issued, settings
) -> None:
    installed(make_engine(max_input_tokens=LIMIT))
    settings.API_MAX_PROMPT_CHARS = 10**6
    error = context_error(await complete(issued.token, "x" * (LIMIT * 64 + 1)))
    assert f"more than {LIMIT * 64} characters" in error["message"]


async def test_a_chat_names_its_messages(installed, make_engine, issued) -> None:
    engine = installed(make_engine(max_input_tokens=LIMIT))
    content = "themodelruns" * 10
    body = {
        "model": engines.served_model_id(),
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 2,
    }
    error = context_error(await post("/v1/chat/completions", issued.token, body))
    assert error["param"] == "messages"
    tokens = engine.count_tokens(content)
    assert f"your messages resulted in {tokens} tokens" in error["message"]
    assert "reduce the length of the messages" in error["message"]


async def test_a_prompt_that_fits_is_served(installed, make_engine, issued) -> None:
    engine = installed(make_engine(max_input_tokens=LIMIT))
    prompt = "the model runs"
    response = await complete(issued.token, prompt)
    assert response.status_code == 200, response.content
    assert response.json()["usage"]["prompt_tokens"] == engine.count_tokens(prompt)


async def test_a_body_over_the_byte_cap_is_still_413(issued, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = await complete(issued.token, "x" * 2000)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


async def test_the_socket_gets_the_same_error(installed, make_engine, issued) -> None:
    engine = installed(make_engine(max_input_tokens=LIMIT))
    prompt = "themodelruns" * 10
    communicator = WebsocketCommunicator(
        CompletionConsumer.as_asgi(),
        "/ws/v1/completions",
        headers=[(b"authorization", f"Bearer {issued.token}".encode())],
    )
    connected, _ = await communicator.connect()
    assert connected
    try:
        create = {"type": "completion.create", "id": "a", "prompt": prompt, "max_tokens": 2}
        await communicator.send_to(text_data=json.dumps(create))
        frame = json.loads(await communicator.receive_from(timeout=30))
        assert frame["type"] == "error" and frame["id"] == "a"
        error = frame["error"]
        assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
        assert f"resulted in {engine.count_tokens(prompt)} tokens" in error["message"]
        # The socket stays open: a prompt that fits is served on it.
        create = {"type": "completion.create", "id": "b", "prompt": "hi", "max_tokens": 2}
        await communicator.send_to(text_data=json.dumps(create))
        types: list[str] = []
        while not types or types[-1] not in ("completion.done", "error"):
            types.append(json.loads(await communicator.receive_from(timeout=60))["type"])
        assert types[0] == "completion.started" and types[-1] == "completion.done", types
    finally:
        await communicator.disconnect()
