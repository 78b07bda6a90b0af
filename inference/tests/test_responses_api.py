"""POST /v1/responses in-process: OpenAI's shapes (checked by the openai package's own types),
the typed event stream, refusals that name their field, and the same admission, usage and
cancellation as /v1/chat/completions."""

import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.core.handlers.asgi import ASGIHandler
from django.db.models import Sum
from django.test import AsyncClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from console.handlers import ApiHandler, PathDispatcher
from console.tests.test_api_json_errors import call
from core.errors import ModelUnavailable
from engine.runtime import GenerationRequest
from inference import engines
from inference.responses_api import ResponseShape
from inference.responses_schemas import ResponseCreateIn
from inference.tests.test_bad_input_properties import json_values, text
from inference.tests.test_gone_clients import counted_usage, leases, request_scope, wait_for
from ratelimit import flush
from tenants.models import UsageMinute
from tenants.services import IssuedKey, api_key_issue, tenant_set_limits

pytestmark = pytest.mark.django_db(transaction=True)

STREAM_EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
OPENING = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
CLOSING = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


async def _post(token: str, **fields: Any):
    body = {"model": engines.served_model_id(), "input": "Hello", **fields}
    return await AsyncClient().post(
        "/v1/responses",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )


async def _events(response) -> list[tuple[str, dict[str, Any]]]:
    """The (event line, data) pairs of a streamed answer."""
    return _parse(b"".join([chunk async for chunk in response.streaming_content]).decode())


def _parse(raw: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in filter(None, raw.split("\n\n")):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


async def _cut_prompt(token: str, tokens: int) -> str:
    """A prompt whose greedy answer runs into max_output_tokens (the tiny model often ends
    early)."""
    for n in range(30):
        prompt = f"Tell story number {n}."
        response = await _post(token, input=prompt, max_output_tokens=tokens, temperature=0)
        if response.json()["status"] == "incomplete":
            return prompt
    raise AssertionError("no prompt ran to its max_output_tokens")


async def test_a_response_is_openais_response_object(installed, make_engine, issued) -> None:
    installed(make_engine())
    response = await _post(
        issued.token,
        input=[
            {"role": "user", "content": "Hi"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello", "annotations": []}],
            },
            {"role": "user", "content": [{"type": "input_text", "text": "Bye"}]},
        ],
        instructions="Be brief.",
        max_output_tokens=6,
        temperature=0,
        store=False,
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    parsed = Response.model_validate(body)  # the SDK's own type, validated strictly
    assert parsed.id.startswith("resp_") and parsed.object == "response"
    message = parsed.output[0]
    assert message.type == "message" and message.id.startswith("msg_")
    assert message.role == "assistant" and message.content[0].type == "output_text"
    assert "output_text" not in body  # an SDK property, not a field
    usage = parsed.usage
    assert usage is not None and usage.output_tokens >= 1
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert parsed.status in ("completed", "incomplete") and parsed.instructions == "Be brief."
    assert parsed.temperature == 0 and parsed.max_output_tokens == 6
    assert response["x-ratelimit-limit-requests"] == "600"
    assert response["x-ratelimit-remaining-tokens"]


async def test_a_stream_sends_the_typed_events_in_order(installed, make_engine, issued) -> None:
    installed(make_engine())
    plain = (await _post(issued.token, max_output_tokens=8, temperature=0)).json()
    response = await _post(issued.token, max_output_tokens=8, temperature=0, stream=True)
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    assert response["x-ratelimit-limit-requests"] == "600"
    events = await _events(response)
    kinds = [kind for kind, _ in events]
    deltas = kinds[len(OPENING) : -len(CLOSING) - 1]
    final = "response.completed" if plain["status"] == "completed" else "response.incomplete"
    assert kinds == [*OPENING, *deltas, *CLOSING, final]
    assert deltas and set(deltas) == {"response.output_text.delta"}
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    for kind, data in events:
        assert data["type"] == kind
        STREAM_EVENTS.validate_python(data)  # each one the SDK's typed event
    text = "".join(data["delta"] for kind, data in events if kind.endswith(".delta"))
    assert events[len(OPENING) + len(deltas)][1]["text"] == text
    last = Response.model_validate(events[-1][1]["response"])
    assert last.output_text == text == Response.model_validate(plain).output_text
    assert last.usage == Response.model_validate(plain).usage
    assert events[0][1]["response"]["status"] == "in_progress"


def test_a_failure_after_the_start_is_an_error_event_then_response_failed() -> None:
    body = ResponseCreateIn.model_validate({"model": "m", "input": "Hi"})
    shape = ResponseShape(body, model="m")
    opening = _parse(shape.opening().decode())
    events = _parse(shape.failed(ModelUnavailable("The node stopped this request.")).decode())
    assert [kind for kind, _ in events] == ["error", "response.failed"]
    assert [data["sequence_number"] for _, data in opening + events] == list(range(6))
    error, failed = (data for _, data in events)
    assert (error["code"], error["message"]) == (
        "model_unavailable",
        "The node stopped this request.",
    )
    assert "error" not in error  # a top-level `error` would make the SDK raise, not yield it
    parsed = STREAM_EVENTS.validate_python(failed)
    assert parsed.response.status == "failed" and parsed.response.error.code == "server_error"
    STREAM_EVENTS.validate_python(error)


async def test_a_cut_answer_is_incomplete_for_max_output_tokens(
    installed, make_engine, issued
) -> None:
    installed(make_engine())
    prompt = await _cut_prompt(issued.token, 3)
    body = (await _post(issued.token, input=prompt, max_output_tokens=3, temperature=0)).json()
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete" and body["usage"]["output_tokens"] == 3
    streamed = await _post(
        issued.token, input=prompt, max_output_tokens=3, temperature=0, stream=True
    )
    kind, last = (await _events(streamed))[-1]
    assert kind == "response.incomplete" and last["response"]["status"] == "incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_usage_is_counted_and_flushed_to_postgres_like_chat(
    installed, make_engine, issued
) -> None:
    installed(make_engine())
    plain = (await _post(issued.token, max_output_tokens=5)).json()["usage"]
    events = await _events(await _post(issued.token, max_output_tokens=7, stream=True))
    streamed = events[-1][1]["response"]["usage"]
    tenant_id = issued.api_key.tenant_id
    await wait_for(lambda: not leases(tenant_id), "both to settle")
    await sync_to_async(flush.flush)()
    rows = await UsageMinute.objects.filter(tenant_id=tenant_id).aaggregate(
        r=Sum("requests"), p=Sum("prompt_tokens"), c=Sum("completion_tokens")
    )
    assert rows == {
        "r": 2,
        "p": plain["input_tokens"] + streamed["input_tokens"],
        "c": plain["output_tokens"] + streamed["output_tokens"],
    }


async def test_a_limited_key_gets_429_with_its_headers(installed, make_engine, tenant) -> None:
    installed(make_engine())
    await sync_to_async(tenant_set_limits)(
        tenant=tenant, changes={"rpm": 1, "burst_percent": 1}, actor="t"
    )
    issued = await sync_to_async(api_key_issue)(tenant=tenant, actor="t")
    assert (await _post(issued.token, max_output_tokens=2)).status_code == 200
    limited = await _post(issued.token, max_output_tokens=2)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(limited["retry-after"]) >= 1 and int(limited["retry-after-ms"]) > 0


async def test_a_key_without_the_completions_scope_is_refused(
    installed, make_engine, tenant
) -> None:
    installed(make_engine())
    issued = await sync_to_async(api_key_issue)(tenant=tenant, scopes=["models"], actor="t")
    response = await _post(issued.token)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"


REFUSED = [
    ({"store": True}, "store", "stores nothing"),
    ({"previous_response_id": "resp_123"}, "previous_response_id", "stores nothing"),
    ({"background": True}, "background", "stores nothing"),
    ({"conversation": "conv_1"}, "conversation", "stores nothing"),
    ({"tools": [{"type": "function", "name": "f"}]}, "tools", "not supported"),
    ({"tool_choice": "required"}, "tool_choice", "not supported"),
    ({"text": {"format": {"type": "json_object"}}}, "text.format", "text format"),
    ({"reasoning": {"effort": "high"}}, "reasoning", "not supported"),
    ({"truncation": "auto"}, "truncation", "auto"),
    ({"include": ["message.output_text.logprobs"]}, "include", "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs", "not supported"),
    ({"model": "gpt-4o"}, "model", "does not exist"),
    ({"max_tokens": 5}, "max_tokens", "Unrecognized request argument"),
    ({"max_output_tokens": 10**6}, "max_output_tokens", "max_output_tokens must be between"),
    (
        {"input": [{"type": "function_call_output", "call_id": "c", "output": "4"}]},
        "input",
        "function_call_output",
    ),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
        "input",
        "input_image",
    ),
    ({"input": [{"role": "assistant", "content": "Hi"}]}, "input", "from the user"),
    ({"input": []}, "input", "non-empty list"),
    ({"input": 7}, "input", "a string or"),
    ({"input": [[None, None]]}, "input.0", ""),
    ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role", ""),
]


@pytest.mark.parametrize(("fields", "param", "words"), REFUSED)
async def test_what_the_node_cannot_honour_is_refused_naming_its_field(
    installed, make_engine, issued: IssuedKey, fields: dict[str, Any], param: str, words: str
) -> None:
    installed(make_engine())
    response = await _post(issued.token, **fields)
    error = response.json()["error"]
    assert response.status_code in (400, 404), error
    assert error["param"] == param and words in error["message"]
    assert error["type"] == "invalid_request_error"
    assert not leases(issued.api_key.tenant_id)


async def test_fields_that_change_nothing_are_accepted(installed, make_engine, issued) -> None:
    installed(make_engine())
    response = await _post(
        issued.token,
        max_output_tokens=2,
        store=False,
        metadata={"run": "7"},
        user="u1",
        safety_identifier="s",
        prompt_cache_key="k",
        service_tier="auto",
        parallel_tool_calls=False,
        tools=[],
        tool_choice="auto",
        include=["reasoning.encrypted_content"],
        text={"format": {"type": "text"}, "verbosity": "medium"},
        reasoning={"effort": None},
        truncation="disabled",
        stream=None,
        previous_response_id=None,
    )
    assert response.status_code == 200, response.json()
    assert response.json()["metadata"] == {"run": "7"}


async def test_the_openapi_document_shows_the_route(issued) -> None:
    document = (await AsyncClient().get("/v1/openapi.json")).json()
    operation = document["paths"]["/v1/responses"]["post"]
    assert operation["summary"].startswith("Create a response")
    schema = document["components"]["schemas"]["ResponseCreateIn"]["properties"]["input"]
    assert [kind.get("type") for kind in schema["anyOf"]] == ["string", "array"]


parts = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["input_text", "output_text", "input_image", None]),
        "text": json_values,
    }
)
items = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "tool"]),
        "content": st.one_of(text, st.lists(parts, max_size=3)),
    },
    optional={"type": st.sampled_from(["message", "function_call", 3]), "status": json_values},
)
response_bodies = st.dictionaries(
    st.sampled_from(["input", "instructions", "tools", "text", "reasoning", "include", "store"]),
    st.one_of(json_values, st.lists(items, max_size=3)),
    max_size=4,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=response_bodies)
async def test_every_bad_body_gets_a_4xx_in_the_openai_shape(issued, body: dict[str, Any]) -> None:
    raw = json.dumps({"model": "m", **body}).encode()
    status, headers, answer = await call(
        "POST", "/v1/responses", raw, Authorization=f"Bearer {issued.token}"
    )
    assert 400 <= status < 500 or status == 503, (status, answer[:300])
    assert set(json.loads(answer)["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_that_leaves_releases_its_admission_and_costs_nothing(
    installed, make_engine, issued, stream: bool
) -> None:
    engine = installed(make_engine(max_batch=1, max_wait_ms=0))
    busy = await engine.submit(GenerationRequest("busy", max_tokens=500, ignore_eos=True))
    iterator = aiter(busy)
    await anext(iterator)  # the model is busy with it now
    body = json.dumps(
        {"model": engines.served_model_id(), "input": "Hello", "stream": stream}
    ).encode()
    scope = {**request_scope(issued.token, body), "path": "/v1/responses"}
    client = ApplicationCommunicator(PathDispatcher(ApiHandler(), ASGIHandler()), scope)
    try:
        await client.send_input({"type": "http.request", "body": body, "more_body": False})
        await wait_for(lambda: engine.status()["queue_depth"] == 1, "the request to queue")
        tenant_id = issued.api_key.tenant_id
        assert leases(tenant_id)  # admitted
        await client.send_input({"type": "http.disconnect"})
        await wait_for(lambda: engine.status()["queue_depth"] == 0, "the request to leave")
        await wait_for(lambda: not leases(tenant_id), "its lease to be released")
        assert counted_usage(tenant_id) == []
    finally:
        busy.cancel()
        await iterator.aclose()
        await client.wait(30)
