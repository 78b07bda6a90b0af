"""OpenAI's documented request fields: those that change nothing here are accepted (and the
answer is the same as without them), null means absent for every optional field, and those
this model cannot honour are refused with a 400 naming that field, never another."""

from typing import Any

import pytest
from django.test import AsyncClient
from pydantic import BaseModel

from inference import engines
from inference.schemas import ChatCompletionIn, CompletionIn

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def engine(installed, make_engine):
    return installed(make_engine())


async def post(path: str, token: str, body: dict[str, Any]):
    return await AsyncClient().post(
        path, body, content_type="application/json", headers={"Authorization": f"Bearer {token}"}
    )


def chat_body(**fields: object) -> dict[str, Any]:
    return {
        "model": engines.served_model_id(),
        "messages": [{"role": "user", "content": "Translate to German: Hello"}],
        "max_tokens": 4,
        "temperature": 0,
        **fields,
    }


def completion_body(**fields: object) -> dict[str, Any]:
    return {
        "model": engines.served_model_id(),
        "prompt": "Translate to German: Hello",
        "max_tokens": 4,
        "temperature": 0,
        **fields,
    }


async def answer(path: str, token: str, body: dict[str, Any]) -> str:
    response = await post(path, token, body)
    assert response.status_code == 200, response.content
    choice = response.json()["choices"][0]
    text: str = choice["message"]["content"] if "message" in choice else choice["text"]
    return text


IGNORED_CHAT_FIELDS = [
    ("store", False),
    ("metadata", {"team": "search", "run": "42"}),
    ("user", "user-1234"),
    ("service_tier", "auto"),
    ("service_tier", "flex"),
    ("prompt_cache_key", "tenant-a/prefix-1"),
    ("prompt_cache_retention", "24h"),
    ("prompt_cache_options", {"mode": "implicit", "ttl": "30m"}),
    ("safety_identifier", "c0ffee"),
    ("parallel_tool_calls", True),
    ("parallel_tool_calls", False),
    ("tools", []),
    ("tool_choice", "none"),
    ("tool_choice", "auto"),
    ("function_call", "none"),
    ("functions", []),
    ("response_format", {"type": "text"}),
    ("modalities", ["text"]),
    ("reasoning_effort", "none"),
    ("verbosity", "medium"),
    ("stream_options", None),
]


@pytest.mark.parametrize(("field", "value"), IGNORED_CHAT_FIELDS)
async def test_a_chat_field_that_changes_nothing_is_accepted_and_changes_nothing(
    engine, issued, field: str, value: object
) -> None:
    plain = await answer("/v1/chat/completions", issued.token, chat_body())
    assert await answer("/v1/chat/completions", issued.token, chat_body(**{field: value})) == plain


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_include_obfuscation_is_accepted_on_a_stream(engine, issued, path: str) -> None:
    body = completion_body if path == "/v1/completions" else chat_body
    options = {"include_usage": True, "include_obfuscation": False}
    response = await post(path, issued.token, body(stream=True, stream_options=options))
    assert response.status_code == 200
    events = b"".join([chunk async for chunk in response.streaming_content]).decode()
    assert events.rstrip().endswith("data: [DONE]") and '"usage":{"prompt_tokens"' in events
    assert "obfuscation" not in events  # ignored: no padding field, asked for or not


def optional_fields(schema: type[BaseModel]) -> list[str]:
    return [name for name, field in schema.model_fields.items() if not field.is_required()]


@pytest.mark.parametrize(
    ("path", "schema", "body"),
    [
        ("/v1/completions", CompletionIn, completion_body),
        ("/v1/chat/completions", ChatCompletionIn, chat_body),
    ],
)
async def test_null_means_absent_for_every_optional_field(
    engine, issued, path: str, schema: type[BaseModel], body
) -> None:
    plain = await answer(path, issued.token, body())
    # Every optional field the schema has (also those added later), null at once; the few
    # the test sets itself keep their value.
    nulls = {name: None for name in optional_fields(schema)}
    for kept in ("max_tokens", "temperature"):
        nulls.pop(kept)
    assert {"stream", "stream_options", "user", "stop", "seed"} <= set(nulls)
    assert await answer(path, issued.token, body(**nulls)) == plain


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/completions", "stream"),
        ("/v1/completions", "echo"),
        ("/v1/completions", "suffix"),
        ("/v1/chat/completions", "stream"),
        ("/v1/chat/completions", "store"),
        ("/v1/chat/completions", "max_completion_tokens"),
        ("/v1/chat/completions", "response_format"),
    ],
)
async def test_a_null_optional_field_alone_is_accepted(
    engine, issued, path: str, field: str
) -> None:
    body = completion_body if path == "/v1/completions" else chat_body
    await answer(path, issued.token, body(**{field: None}))


async def test_a_null_required_field_is_refused_naming_it(engine, issued) -> None:
    response = await post("/v1/completions", issued.token, completion_body(prompt=None))
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "prompt", error


async def test_an_assistant_message_may_have_null_content(engine, issued) -> None:
    messages = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": None, "refusal": None, "name": None},
        {"role": "user", "content": "Hello again", "name": None},
    ]
    await answer("/v1/chat/completions", issued.token, chat_body(messages=messages))
    # Only the assistant's: a user message without content is refused, naming it.
    messages = [{"role": "user", "content": None}]
    response = await post("/v1/chat/completions", issued.token, chat_body(messages=messages))
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"].startswith("messages.0.content"), error


FUNCTION = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
REFUSED_CHAT_FIELDS = [
    ("tools", [FUNCTION], "unsupported_parameter"),
    ("functions", [{"name": "lookup", "parameters": {}}], "unsupported_parameter"),
    ("function_call", {"name": "lookup"}, "unsupported_value"),
    ("tool_choice", "required", "unsupported_value"),
    ("tool_choice", {"type": "function", "function": {"name": "lookup"}}, "unsupported_value"),
    ("response_format", {"type": "json_object"}, "unsupported_value"),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x"}}, "unsupported_value"),
    ("modalities", ["text", "audio"], "unsupported_value"),
    ("audio", {"voice": "alloy", "format": "mp3"}, "unsupported_parameter"),
    ("prediction", {"type": "content", "content": "Hallo"}, "unsupported_parameter"),
    ("web_search_options", {}, "unsupported_parameter"),
    ("reasoning_effort", "high", "unsupported_value"),
    ("verbosity", "low", "unsupported_value"),
    ("moderation", {"model": "omni-moderation-latest"}, "unsupported_parameter"),
    ("store", True, "unsupported_value"),
]


@pytest.mark.parametrize(("field", "value", "code"), REFUSED_CHAT_FIELDS)
async def test_a_field_this_model_cannot_honour_is_refused_naming_itself(
    engine, issued, field: str, value: object, code: str
) -> None:
    response = await post("/v1/chat/completions", issued.token, chat_body(**{field: value}))
    error = response.json()["error"]
    assert response.status_code == 400, error
    assert error["param"] == field and error["code"] == code, error
    assert f"'{field}'" in error["message"] or field in error["message"]
    if field != "store":
        assert "with this model" in error["message"], error


async def test_function_calling_as_langchain_sends_it_names_tools(engine, issued) -> None:
    # bind_tools: tools, with parallel_tool_calls and a tool_choice beside them; the refusal
    # was about parallel_tool_calls before.
    body = chat_body(tools=[FUNCTION], parallel_tool_calls=False, tool_choice="auto")
    response = await post("/v1/chat/completions", issued.token, body)
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "tools", error
    assert error["message"] == "Unsupported parameter: 'tools' is not supported with this model."


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}, "tool_calls"),
        ({"role": "assistant", "content": "x", "function_call": {"name": "f"}}, "function_call"),
        ({"role": "assistant", "content": "x", "audio": {"id": "a1"}}, "audio"),
    ],
)
async def test_calls_in_the_history_are_refused_naming_them(
    engine, issued, message: dict[str, Any], param: str
) -> None:
    messages = [{"role": "user", "content": "Hi"}, message, {"role": "user", "content": "Go"}]
    response = await post("/v1/chat/completions", issued.token, chat_body(messages=messages))
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == f"messages.1.{param}", error


async def test_a_content_part_other_than_text_is_refused_naming_it(engine, issued) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]
    body = chat_body(messages=[{"role": "user", "content": content}])
    response = await post("/v1/chat/completions", issued.token, body)
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "messages.0.content.1.type", error
    assert "'image_url'" in error["message"]


async def test_text_parts_are_read_and_their_extra_fields_ignored(engine, issued) -> None:
    content = [
        {"type": "text", "text": "Translate to German: "},
        {"type": "text", "text": "Hello", "prompt_cache_breakpoint": {"ttl": "30m"}},
    ]
    plain = await answer("/v1/chat/completions", issued.token, chat_body())
    body = chat_body(messages=[{"role": "user", "content": content}])
    assert await answer("/v1/chat/completions", issued.token, body) == plain


async def test_an_unknown_field_is_still_unrecognized(engine, issued) -> None:
    response = await post("/v1/chat/completions", issued.token, chat_body(colour="blue"))
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "colour"
    assert error["message"] == "Unrecognized request argument supplied: colour"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("metadata", {"k" * 65: "v"}),
        ("metadata", {str(n): "v" for n in range(17)}),
        ("metadata", {"k": 1}),
        ("service_tier", "turbo"),
        ("parallel_tool_calls", "yes"),
        ("store", "false"),
    ],
)
async def test_an_accepted_field_is_still_validated(
    engine, issued, field: str, value: object
) -> None:
    response = await post("/v1/chat/completions", issued.token, chat_body(**{field: value}))
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"].startswith(field), error
