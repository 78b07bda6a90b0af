"""Clients as users run them against the live node: LangChain's ChatOpenAI (invoke, ainvoke,
stream, astream, batch, with the usage it reports), and the openai SDK's own retries of a 429
(retry-after-ms honoured, counted at the server; RateLimitError once its retries run out)."""

import asyncio
import time
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, BaseMessageChunk
from langchain_openai import ChatOpenAI
from openai.types import Completion

from ratelimit import limiter
from ratelimit.flush import flush
from tenants.keycache import KeyRecord
from tenants.models import ApiKey, ThrottleEvent, UsageMinute
from tests.e2e.api.conftest import Customer, model_name, wait_for_release

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

QUESTION = "Name a colour."


def chat_model(server, token: str, **options: object) -> ChatOpenAI:
    return ChatOpenAI(
        model=model_name(server),
        base_url=f"{server.url}/v1",
        api_key=token,  # type: ignore[arg-type]  # a SecretStr in its stub; a str is accepted
        temperature=0,
        max_tokens=8,  # type: ignore[call-arg]  # an alias of max_completion_tokens
        max_retries=0,
        timeout=60,
        **options,  # type: ignore[arg-type]
    )


def assert_usage(message: BaseMessage) -> None:
    """LangChain's usage_metadata, from the usage the node reported."""
    usage = getattr(message, "usage_metadata", None)
    assert usage is not None, message
    assert usage["input_tokens"] >= 1 and 1 <= usage["output_tokens"] <= 8
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def joined(chunks: list[BaseMessageChunk]) -> AIMessageChunk:
    assert chunks, "no chunks"
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert isinstance(total, AIMessageChunk)
    return total


def test_chat_openai_invokes_streams_and_batches(api_server, customer: Customer) -> None:
    model = chat_model(api_server, customer.token)
    answer = model.invoke(QUESTION)
    assert isinstance(answer, AIMessage) and isinstance(answer.content, str) and answer.content
    assert answer.response_metadata["model_name"] == model_name(api_server)
    assert answer.response_metadata["finish_reason"] in ("stop", "length")
    assert_usage(answer)

    streamed = joined(
        list(chat_model(api_server, customer.token, stream_usage=True).stream(QUESTION))
    )
    assert streamed.content == answer.content  # greedy: the same text, in pieces
    assert streamed.usage_metadata == answer.usage_metadata

    batch = model.batch([QUESTION, "Say hello.", QUESTION])
    assert [m.content for m in batch][0::2] == [answer.content, answer.content]
    for message in batch:
        assert_usage(message)
    assert not wait_for_release(customer.tenant_id)


def test_chat_openai_async_calls(api_server, customer: Customer) -> None:
    model = chat_model(api_server, customer.token)
    streaming = chat_model(api_server, customer.token, stream_usage=True)

    async def run() -> tuple[AIMessage, AIMessageChunk, list[AIMessage]]:
        answer = await model.ainvoke(QUESTION)
        streamed = joined([chunk async for chunk in streaming.astream(QUESTION)])
        batch = await model.abatch([QUESTION, QUESTION])
        return answer, streamed, batch

    answer, streamed, batch = asyncio.run(run())
    assert answer.content and streamed.content == answer.content
    assert streamed.usage_metadata == answer.usage_metadata
    assert [m.content for m in batch] == [answer.content] * 2
    assert_usage(answer)


class Exchanges:
    """Every request the SDK sent and the answer it got, timed, through httpx's own hooks."""

    def __init__(self) -> None:
        self.log: list[tuple[str, float, int, str]] = []

    def client(self) -> openai.DefaultHttpxClient:
        # The SDK's own HTTP client class (its httpx), with hooks that see each attempt.
        return openai.DefaultHttpxClient(
            timeout=60,
            event_hooks={"request": [self._sent], "response": [self._answered]},
        )

    def _sent(self, request: Any) -> None:
        self.log.append(("request", time.monotonic(), 0, ""))

    def _answered(self, response: Any) -> None:
        wait = response.headers.get("retry-after-ms", "")
        self.log.append(("response", time.monotonic(), response.status_code, wait))

    def statuses(self) -> list[int]:
        return [status for kind, _, status, _ in self.log if kind == "response"]


def limited_customer(server, customer: Customer, rpm: int, **limits: int) -> KeyRecord:
    """The customer's key under new limits, once the node applies them (its key cache polls
    their version: until its answers carry the new rpm), with every earlier request settled
    and counted, and the counts of usage and 429s emptied."""
    from tenants.models import Tenant
    from tenants.services import tenant_set_limits

    tenant = Tenant.objects.get(slug=customer.slug)
    tenant_set_limits(tenant=tenant, changes={"rpm": rpm, **limits}, actor="test")
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=customer.token, max_retries=0)
    deadline = time.monotonic() + 30
    while True:
        raw = sdk.completions.with_raw_response.create(
            model=model_name(server), prompt="x", max_tokens=1
        )
        if raw.headers.get("x-ratelimit-limit-requests") == str(rpm):
            break
        assert time.monotonic() < deadline, "the new limits never applied"
        time.sleep(0.3)
    assert not wait_for_release(customer.tenant_id)
    flush()
    UsageMinute.objects.filter(tenant_id=customer.tenant_id).delete()
    ThrottleEvent.objects.filter(tenant_id=customer.tenant_id).delete()
    key = ApiKey.objects.select_related("tenant").get(key_id=customer.key_id)
    return KeyRecord.from_row(key)


def server_counts(tenant_id: int) -> tuple[int, int]:
    """(requests accepted, requests refused with 429) that the node counted for the tenant."""
    flush()
    accepted = sum(row.requests for row in UsageMinute.objects.filter(tenant_id=tenant_id))
    refused = sum(row.count for row in ThrottleEvent.objects.filter(tenant_id=tenant_id))
    return accepted, refused


def retrying_sdk(server, customer: Customer, exchanges: Exchanges) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.url}/v1",
        api_key=customer.token,
        max_retries=2,
        http_client=exchanges.client(),
    )


def test_the_sdk_waits_retry_after_ms_then_succeeds(api_server, customer: Customer) -> None:
    model = model_name(api_server)
    record = limited_customer(api_server, customer, rpm=12, burst_percent=1)  # one per 5 s
    exchanges = Exchanges()
    sdk = retrying_sdk(api_server, customer, exchanges)
    time.sleep(5.2)  # the request that saw the new limit spent the window: let it free

    async def spend_then_call() -> Completion:
        # Another client of the key takes the window's one request just before the SDK's.
        admission = await limiter.admit(record, tokens=1)
        await limiter.settle(admission, prompt_tokens=0, completion_tokens=0, count_usage=False)
        return await asyncio.to_thread(
            sdk.completions.create, model=model, prompt=QUESTION, max_tokens=4
        )

    assert asyncio.run(spend_then_call()).choices
    assert exchanges.statuses() == [429, 200]
    (_, refused_at, _, wait_ms), (_, retried_at, _, _) = exchanges.log[1], exchanges.log[2]
    assert 0 < int(wait_ms) <= 5000
    # The SDK slept the node's retry-after-ms (to the millisecond) before it tried again.
    assert retried_at - refused_at >= int(wait_ms) / 1000 - 0.005
    assert server_counts(customer.tenant_id) == (1, 1)


def test_the_sdk_raises_rate_limit_error_when_its_retries_run_out(
    api_server, customer: Customer
) -> None:
    model = model_name(api_server)
    record = limited_customer(api_server, customer, rpm=6001, max_inflight=1)
    exchanges = Exchanges()
    sdk = retrying_sdk(api_server, customer, exchanges)

    async def call_while_the_slot_is_held() -> openai.RateLimitError:
        # Another client holds the key's one in-flight slot throughout the SDK's retries.
        admission = await limiter.admit(record, tokens=1)
        try:
            with pytest.raises(openai.RateLimitError) as refused:
                await asyncio.to_thread(
                    sdk.completions.create, model=model, prompt=QUESTION, max_tokens=4
                )
        finally:
            await limiter.settle(admission, prompt_tokens=0, completion_tokens=0, count_usage=False)
        return refused.value

    error = asyncio.run(call_while_the_slot_is_held())
    assert exchanges.statuses() == [429, 429, 429]  # the first try and max_retries=2 retries
    assert isinstance(error.body, dict) and error.body["code"] == "rate_limit_exceeded"
    # Once the slot is free the same client succeeds, without a retry.
    exchanges.log.clear()
    assert sdk.completions.create(model=model, prompt=QUESTION, max_tokens=4).choices
    assert exchanges.statuses() == [200]
    assert server_counts(customer.tenant_id) == (1, 3)
