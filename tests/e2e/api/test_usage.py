"""The usage clients saw, /v1/usage and the Postgres rows agree exactly."""

import asyncio
import json
import urllib.request

import openai
import pytest
from openai.types import CompletionUsage
from websockets.asyncio.client import connect

from ratelimit.flush import flush
from tenants.models import UsageMinute
from tests.e2e.api.conftest import Customer, model_name, wait_for_release

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _ws_usage(server, token: str, count: int) -> list[dict]:
    async def run() -> list[dict]:
        url = server.url.replace("http://", "ws://") + "/ws/v1/completions"
        async with connect(url, additional_headers={"X-API-Key": token}) as ws:
            for n in range(count):
                await ws.send(
                    json.dumps(
                        {
                            "type": "completion.create",
                            "id": f"u{n}",
                            "prompt": f"Question {n}?",
                            "max_tokens": 6 + n,
                        }
                    )
                )
            done: list[dict] = []
            async with asyncio.timeout(60):
                while len(done) < count:
                    frame = json.loads(await ws.recv())
                    assert frame["type"] != "error", frame
                    if frame["type"] == "completion.done":
                        done.append(frame["usage"])
            return done

    return asyncio.run(run())


def _dump(usage: CompletionUsage | None) -> dict:
    assert usage is not None, "no usage in the reply"
    return usage.model_dump()


def _http_usage(server, token: str) -> list[dict]:
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0)
    model = model_name(server)
    seen = []
    for n in range(3):
        seen.append(
            _dump(sdk.completions.create(model=model, prompt=f"Item {n}", max_tokens=4 + n).usage)
        )
        seen.append(
            _dump(
                sdk.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": f"Hello {n}"}], max_tokens=5
                ).usage
            )
        )
    chunks = list(
        sdk.completions.create(
            model=model,
            prompt="Streamed",
            max_tokens=7,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    seen.append(_dump(chunks[-1].usage))
    return seen


def test_the_usage_clients_saw_is_what_usage_and_postgres_say(api_server, customer: Customer):
    seen = _http_usage(api_server, customer.token) + _ws_usage(api_server, customer.token, 3)
    # A stream settles right after its last byte: wait for that before moving usage.
    assert wait_for_release(customer.tenant_id) == []
    flush()
    request = urllib.request.Request(  # noqa: S310 (a test URL)
        f"{api_server.url}/v1/usage", headers={"Authorization": f"Bearer {customer.token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        usage = json.load(response)
    prompt = sum(u["prompt_tokens"] for u in seen)
    completion = sum(u["completion_tokens"] for u in seen)
    for period in ("today", "this_month"):
        assert usage[period]["requests"] == len(seen) == 10
        assert usage[period]["prompt_tokens"] == prompt
        assert usage[period]["completion_tokens"] == completion
        assert usage[period]["total_tokens"] == prompt + completion
    rows = UsageMinute.objects.filter(tenant_id=customer.tenant_id)
    assert sum(r.requests for r in rows) == len(seen)
    assert sum(r.prompt_tokens for r in rows) == prompt
    assert sum(r.completion_tokens for r in rows) == completion
    assert usage["tenant"] == customer.slug
