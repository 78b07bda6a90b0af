"""/v1/responses against the live node, through the clients that call it by default: the
official openai package (client.responses.create, plain and streamed, sync and async) and
LangChain's ChatOpenAI(use_responses_api=True)."""

import asyncio
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from openai.types.responses import ResponseCompletedEvent, ResponseIncompleteEvent

from ratelimit.flush import flush
from tenants.models import UsageMinute
from tests.e2e.api.conftest import Customer, model_name, wait_for_release

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def client(server, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0, timeout=60)


def body_of(error: openai.APIError) -> dict[str, Any]:
    assert isinstance(error.body, dict), error.body
    return error.body


def test_the_sdk_parses_a_response_and_its_stream(api_server, customer: Customer) -> None:
    sdk = client(api_server, customer.token)
    model = model_name(api_server)
    raw = sdk.responses.with_raw_response.create(
        model=model,
        input="Name a colour.",
        instructions="Be brief.",
        max_output_tokens=8,
        temperature=0,
    )
    response = raw.parse()
    assert response.object == "response" and response.status in ("completed", "incomplete")
    assert response.output_text and response.output[0].type == "message"
    assert response.usage is not None and response.usage.output_tokens >= 1
    assert raw.headers["x-ratelimit-limit-requests"] == "6000"
    assert raw.headers["x-ratelimit-remaining-tokens"]
    events = list(
        sdk.responses.create(
            model=model,
            input="Name a colour.",
            instructions="Be brief.",
            max_output_tokens=8,
            temperature=0,
            stream=True,
        )
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == f"response.{response.status}"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    last = events[-1]
    assert isinstance(last, ResponseCompletedEvent | ResponseIncompleteEvent)
    assert text == response.output_text == last.response.output_text
    assert last.response.usage == response.usage


def test_the_async_sdk_and_its_stream_helper(api_server, customer: Customer) -> None:
    model = model_name(api_server)

    async def run() -> tuple[str, str]:
        sdk = openai.AsyncOpenAI(
            base_url=f"{api_server.url}/v1", api_key=customer.token, max_retries=0, timeout=60
        )
        plain = await sdk.responses.create(
            model=model,
            input=[{"role": "user", "content": [{"type": "input_text", "text": "Count."}]}],
            max_output_tokens=6,
            temperature=0,
        )
        async with sdk.responses.stream(
            model=model, input="Count.", max_output_tokens=6, temperature=0
        ) as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_response()
        await sdk.close()
        return plain.output_text, final.output_text

    plain, streamed = asyncio.run(run())
    assert plain == streamed and plain


def test_fields_the_node_cannot_honour_raise_bad_request(api_server, customer: Customer) -> None:
    sdk = client(api_server, customer.token)
    model = model_name(api_server)
    refused: list[tuple[dict[str, Any], str]] = [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_abc"}, "previous_response_id"),
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"text": {"format": {"type": "json_object"}}}, "text.format"),
    ]
    for fields, param in refused:
        with pytest.raises(openai.BadRequestError) as bad:
            sdk.responses.create(model=model, input="Hi", **fields)
        assert body_of(bad.value)["param"] == param
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.responses.create(model="gpt-4o", input="Hi")
    assert body_of(missing.value)["code"] == "model_not_found"


def test_langchain_invokes_and_streams_over_responses(api_server, customer: Customer) -> None:
    chat = ChatOpenAI(
        model=model_name(api_server),
        base_url=f"{api_server.url}/v1",
        api_key=customer.token,  # type: ignore[arg-type]
        use_responses_api=True,
        max_tokens=6,  # type: ignore[call-arg]
        temperature=0,
        max_retries=0,
    )
    conversation = [
        SystemMessage("Be brief."),
        HumanMessage("Hi"),
        AIMessage("Hello"),
        HumanMessage("Count."),
    ]
    answer = chat.invoke(conversation)
    assert answer.text and answer.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] >= 1
    chunks = list(chat.stream(conversation))
    assert "".join(chunk.text for chunk in chunks) == answer.text


def test_responses_usage_reaches_usage_and_postgres(api_server, customer: Customer) -> None:
    sdk = client(api_server, customer.token)
    model = model_name(api_server)
    seen = [
        sdk.responses.create(model=model, input=f"Item {n}", max_output_tokens=4 + n).usage
        for n in range(2)
    ]
    streamed = list(
        sdk.responses.create(model=model, input="Streamed", max_output_tokens=7, stream=True)
    )
    assert isinstance(streamed[-1], ResponseCompletedEvent | ResponseIncompleteEvent)
    seen.append(streamed[-1].response.usage)
    assert wait_for_release(customer.tenant_id) == []
    flush()
    rows = UsageMinute.objects.filter(tenant_id=customer.tenant_id)
    assert sum(r.requests for r in rows) == 3
    assert sum(r.prompt_tokens for r in rows) == sum(u.input_tokens for u in seen if u)
    assert sum(r.completion_tokens for r in rows) == sum(u.output_tokens for u in seen if u)
