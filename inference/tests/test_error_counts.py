"""The API counts the error answers of authenticated keys (not 401s, not 429s) per key and
minute; after a flush they are UsageMinute.errors, next to the key's accepted requests."""

import asyncio
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.db.models import Sum
from django.test import AsyncClient

from inference.engines import served_model_id
from ratelimit import errorcount, flush, limiter
from tenants.models import ThrottleEvent, UsageMinute
from tenants.services import api_key_issue, tenant_create

from .test_engines import failed_engine

pytestmark = pytest.mark.django_db(transaction=True)

GOOD = {"prompt": "Translate to German: hello", "max_tokens": 2, "temperature": 0}
BAD = {"prompt": "hello", "max_tokens": -3}  # max_tokens must be at least 1


async def _complete(body: dict[str, object], token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"model": served_model_id(), **body}
    return await AsyncClient().post(
        "/v1/completions", body, content_type="application/json", headers=headers
    )


async def _flushed() -> dict[str, int]:
    """Wait for the counts the error handlers started (tasks of this loop), flush, sum up."""
    await asyncio.gather(*errorcount._running)
    await sync_to_async(flush.flush)()
    usage = await UsageMinute.objects.aaggregate(r=Sum("requests"), e=Sum("errors"))
    throttled = await ThrottleEvent.objects.aaggregate(n=Sum("count"))
    return {"requests": usage["r"] or 0, "errors": usage["e"] or 0, "429s": throttled["n"] or 0}


@sync_to_async
def _customer(**limits: int) -> str:
    tenant = tenant_create(slug="initech", limits=limits, actor="test")
    return api_key_issue(tenant=tenant, name="k", actor="test").token


async def test_a_bad_parameter_from_a_key_is_one_error(installed, make_engine) -> None:
    installed(make_engine())
    token = await _customer(rpm=600)
    response = await _complete(BAD, token)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_tokens"
    assert await _flushed() == {"requests": 0, "errors": 1, "429s": 0}
    assert await _flushed() == {"requests": 0, "errors": 1, "429s": 0}  # moved once


async def test_429s_and_401s_are_not_errors(installed, make_engine) -> None:
    installed(make_engine())
    token = await _customer(rpm=1, burst_percent=1)  # one request, then 429s
    assert (await _complete(GOOD, token)).status_code == 200
    assert (await _complete(GOOD, token)).status_code == 429
    assert (await _complete(GOOD)).status_code == 401
    assert (await _complete(BAD)).status_code == 401  # no key: nobody to count it against
    assert (await _complete(GOOD, token[:-4] + "abcd")).status_code == 401
    assert await _flushed() == {"requests": 1, "errors": 0, "429s": 1}
    limiter.reset_state()  # forget the cached refusal: this key may be refused in process
    assert (await _complete(BAD, token)).status_code == 400
    assert await _flushed() == {"requests": 1, "errors": 1, "429s": 1}


async def test_a_model_that_cannot_serve_counts_its_503s(installed, tiny_model_dir: Path) -> None:
    installed(failed_engine(tiny_model_dir))
    token = await _customer(rpm=600)
    response = await _complete(GOOD, token)
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_unavailable"
    assert await _flushed() == {"requests": 0, "errors": 1, "429s": 0}


async def test_an_error_that_ends_a_stream_is_counted(installed, make_engine) -> None:
    engine = installed(make_engine())
    token = await _customer(rpm=600)
    # The tiny model (seed 0) samples this to the full 512 tokens, about a second on a quiet
    # CPU: the engine is stopped long before the stream could end by itself.
    long = {"prompt": "Tell me a very long story.", "max_tokens": 512, "temperature": 1, "seed": 0}
    response = await _complete({**long, "stream": True}, token)
    assert response.status_code == 200
    chunks = aiter(response.streaming_content)
    first = await anext(chunks)
    assert first.startswith(b"data: {")
    await asyncio.to_thread(engine.stop, 0.0)  # past the drain at once: running rows fail
    rest = b"".join([chunk async for chunk in chunks])
    assert b'"code":"model_unavailable"' in rest and rest.endswith(b"data: [DONE]\n\n")
    assert await _flushed() == {"requests": 1, "errors": 1, "429s": 0}
