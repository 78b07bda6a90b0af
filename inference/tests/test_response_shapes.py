"""The response bodies the API sends are the schemas it documents (schemas.CompletionOut and
ChatCompletionOut): a field added to, or dropped from, either side fails here."""

from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from django.test import AsyncClient
from pydantic import BaseModel

from engine.runtime import Engine, GenerationResult
from inference.engines import served_model_id
from inference.schemas import ChatCompletionOut, CompletionOut
from inference.sse import Shape
from tenants.services import IssuedKey

ENDPOINTS = [
    ("/v1/completions", {"prompt": "Hello"}, CompletionOut),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}, ChatCompletionOut),
]


def _round_trip(schema: type[BaseModel], body: dict[str, Any]) -> dict[str, Any]:
    # A key the schema does not know is dropped here, a schema field the body lacks is added:
    # either way the result differs from the body.
    return schema.model_validate(body).model_dump(mode="json")


def _result(finish_reason: str = "stop") -> GenerationResult:
    return GenerationResult(
        text="héllo €",
        prompt_tokens=3,
        completion_tokens=5,
        finish_reason=finish_reason,
        queue_seconds=0.0,
        first_token_seconds=None,
        generation_seconds=0.0,
    )


def test_a_whole_completion_keeps_openais_shape() -> None:
    shape = Shape(chat=False, model="m")
    assert shape.response([_result("length")], [[]], 3) == {
        "id": shape.id,
        "object": "text_completion",
        "created": shape.created,
        "model": "m",
        "choices": [{"index": 0, "text": "héllo €", "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        "system_fingerprint": None,
    }


def test_a_whole_chat_completion_keeps_openais_shape() -> None:
    shape = Shape(chat=True, model="m")
    message = {"role": "assistant", "content": "héllo €", "refusal": None}
    assert shape.response([_result()], [[]], 3) == {
        "id": shape.id,
        "object": "chat.completion",
        "created": shape.created,
        "model": "m",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        "system_fingerprint": None,
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("path", "params", "schema"), ENDPOINTS)
async def test_the_body_an_endpoint_sends_is_the_schema_it_documents(
    installed: Callable[[Engine], Engine],
    make_engine: Callable[..., Engine],
    issued: IssuedKey,
    path: str,
    params: dict[str, Any],
    schema: type[BaseModel],
) -> None:
    installed(make_engine())
    response = await AsyncClient().post(
        path,
        {"model": served_model_id(), "max_tokens": 3, **params},
        content_type="application/json",
        headers={"Authorization": f"Bearer {issued.token}"},
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    jsonschema.validate(body, schema.model_json_schema())
    assert _round_trip(schema, body) == body
