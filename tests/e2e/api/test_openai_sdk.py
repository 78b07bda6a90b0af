"""The official openai package against the live node: the shapes it parses, the errors it raises."""

from typing import Any

import openai
import pytest

from tests.e2e.api.conftest import Customer, model_name

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def client(server, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0, timeout=60)


def body_of(error: openai.APIError) -> dict[str, Any]:
    """The error object the SDK parsed from the response."""
    assert isinstance(error.body, dict), error.body
    return error.body


def test_completions_come_back_in_openai_shape(api_server, customer: Customer) -> None:
    sdk = client(api_server, customer.token)
    model = model_name(api_server)
    assert [m.id for m in sdk.models.list().data] == [model]
    response = sdk.completions.create(
        model=model, prompt="Name a colour.", max_tokens=5, temperature=0
    )
    assert response.object == "text_completion" and response.model == model
    choice = response.choices[0]
    assert choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage is not None
    assert usage.completion_tokens >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    again = sdk.completions.create(
        model=model, prompt="Name a colour.", max_tokens=5, temperature=0
    )
    assert again.choices[0].text == choice.text  # greedy is deterministic


def test_chat_completions_and_their_headers(api_server, customer: Customer) -> None:
    sdk = client(api_server, customer.token)
    raw = sdk.chat.completions.with_raw_response.create(
        model=model_name(api_server),
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=4,
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    for header in (
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "x-request-id",
        "x-queue-time-ms",
        "x-inference-time-ms",
    ):
        assert raw.headers.get(header), header
    assert raw.headers["x-ratelimit-limit-requests"] == "6000"


def test_streams_end_with_usage_when_asked(api_server, customer: Customer) -> None:
    sdk = client(api_server, customer.token)
    chunks = list(
        sdk.chat.completions.create(
            model=model_name(api_server),
            messages=[{"role": "user", "content": "Count."}],
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens >= 1
    plain = sdk.chat.completions.create(
        model=model_name(api_server),
        messages=[{"role": "user", "content": "Count."}],
        max_tokens=12,
        temperature=0,
    )
    assert plain.choices[0].message.content == text
    assert plain.usage == chunks[-1].usage
    streamed = list(
        sdk.completions.create(
            model=model_name(api_server), prompt="Count.", max_tokens=12, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in streamed) == text


def test_the_sdk_raises_its_own_error_classes(api_server, customer: Customer) -> None:
    from tenants.models import Tenant
    from tenants.services import tenant_set_limits

    model = model_name(api_server)
    with pytest.raises(openai.AuthenticationError) as denied:
        client(api_server, "sk_" + "A" * 12 + "_" + "B" * 40).models.list()
    assert body_of(denied.value)["code"] == "invalid_api_key"
    sdk = client(api_server, customer.token)
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.completions.create(model=model, prompt="x", n=21)  # over the node's bound
    assert body_of(bad.value)["param"] == "n"
    tenant_set_limits(
        tenant=Tenant.objects.get(slug=customer.slug),
        changes={"rpm": 1, "burst_percent": 1},
        actor="test",
    )
    import time

    # The node sees the new limit within its version poll (about half a second): until then
    # both calls may pass.
    deadline = time.monotonic() + 30
    while True:
        try:
            for _ in range(2):
                sdk.completions.create(model=model, prompt="x", max_tokens=1)
        except openai.RateLimitError as exc:
            limited = exc
            break
        assert time.monotonic() < deadline, "the new limit never applied"
        time.sleep(0.2)
    assert body_of(limited)["code"] == "rate_limit_exceeded"
    headers = limited.response.headers
    assert int(headers["retry-after"]) >= 1 and int(headers["retry-after-ms"]) > 0
    assert headers["x-ratelimit-limit-requests"] == "1"
