"""Streams cut mid-way: every lease released, every reservation settled, and usage equal to
what the clients received."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from ratelimit.flush import flush
from tenants.models import UsageMinute
from tests.e2e.api.conftest import Customer, long_prompt, model_name, wait_for_release
from tests.e2e.api.rawclients import Received, sse_cut, ws_cut

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

STREAMS = 20


def _payload(api_server, customer: Customer) -> dict:
    return {
        "model": model_name(api_server),
        "prompt": long_prompt(api_server, customer.token),
        "max_tokens": 400,
        "temperature": 0,
        "stream": True,
    }


def _prompt_tokens(api_server, customer: Customer, payload: dict) -> int:
    import openai

    sdk = openai.OpenAI(base_url=f"{api_server.url}/v1", api_key=customer.token, max_retries=0)
    one = {**payload, "stream": False, "max_tokens": 1}
    return sdk.completions.create(**one).usage.prompt_tokens


def _usage() -> tuple[int, int, int]:
    flush()
    rows = UsageMinute.objects.all()
    return (
        sum(r.requests for r in rows),
        sum(r.prompt_tokens for r in rows),
        sum(r.completion_tokens for r in rows),
    )


def _check(received: list[Received], customer: Customer, prompt_tokens: int, before) -> None:
    assert wait_for_release(customer.tenant_id) == []
    assert sum(not got.finished for got in received) >= STREAMS // 2  # really cut mid-way
    requests, prompt, completion = (now - then for now, then in zip(_usage(), before, strict=True))
    assert requests == STREAMS
    assert prompt == STREAMS * prompt_tokens
    assert completion == sum(got.completion_tokens for got in received)


def test_sse_streams_cut_mid_way_bill_exactly_what_arrived(api_server, customer: Customer) -> None:
    payload = _payload(api_server, customer)
    prompt_tokens = _prompt_tokens(api_server, customer, payload)
    before = _usage()
    with ThreadPoolExecutor(max_workers=5) as pool:
        received = list(
            pool.map(
                lambda n: sse_cut(api_server.url, customer.token, payload, cut_after=1 + n % 7),
                range(STREAMS),
            )
        )
    _check(received, customer, prompt_tokens, before)


def test_websocket_streams_cut_mid_way_bill_exactly_what_arrived(
    api_server, customer: Customer
) -> None:
    payload = {k: v for k, v in _payload(api_server, customer).items() if k != "stream"}
    prompt_tokens = _prompt_tokens(api_server, customer, payload)
    before = _usage()
    url = api_server.url.replace("http://", "ws://") + "/ws/v1/completions"

    async def run_all() -> list[Received]:
        return list(
            await asyncio.gather(
                *(ws_cut(url, customer.token, payload, cut_after=1 + n % 7) for n in range(STREAMS))
            )
        )

    received = asyncio.run(run_all())
    _check(received, customer, prompt_tokens, before)
