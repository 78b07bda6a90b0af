"""A client that leaves stops its work and is billed nothing it did not get: a queued
non-streamed request leaves the queue, and nothing is counted as usage."""

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from django.core.handlers.asgi import ASGIHandler

from console.handlers import ApiHandler, PathDispatcher
from core.redis import get_sync_redis
from engine.runtime import GenerationRequest
from inference import engines

pytestmark = pytest.mark.django_db(transaction=True)


def counted_usage(tenant_id: int) -> list[bytes | str]:
    """Usage fields counted for the tenant (requests or tokens; error counts aside)."""
    redis = get_sync_redis()
    keys = redis.scan_iter(match=f"rl*:v1:{{t:{tenant_id}}}:usage")
    fields = [f for key in keys for f in redis.hkeys(key)]
    return [f for f in fields if not (isinstance(f, bytes) and f.endswith(b"|e"))]


def leases(tenant_id: int) -> list[bytes]:
    return list(get_sync_redis().scan_iter(match=f"rl:v1:{{t:{tenant_id}}}:lease:*"))


async def wait_for(condition: Callable[[], object], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def request_scope(token: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/completions",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {token}".encode()),
        ],
        "client": ("127.0.0.1", 5555),
        "server": ("testserver", 80),
    }


@pytest.mark.parametrize("stream", [False, True])
async def test_a_queued_request_whose_client_left_leaves_the_queue_and_costs_nothing(
    installed, make_engine, issued, stream: bool
) -> None:
    engine = installed(make_engine(max_batch=1, max_wait_ms=0))
    busy = await engine.submit(GenerationRequest("busy", max_tokens=500, ignore_eos=True))
    iterator = aiter(busy)
    await anext(iterator)  # the model is busy with it now
    body = b'{"model": "%s", "prompt": "Hello", "max_tokens": 4, "stream": %s}' % (
        engines.served_model_id().encode(),
        b"true" if stream else b"false",
    )
    app = PathDispatcher(ApiHandler(), ASGIHandler())
    client = ApplicationCommunicator(app, request_scope(issued.token, body))
    try:
        await client.send_input({"type": "http.request", "body": body, "more_body": False})
        await wait_for(lambda: engine.status()["queue_depth"] == 1, "the request to queue")
        await client.send_input({"type": "http.disconnect"})
        await wait_for(lambda: engine.status()["queue_depth"] == 0, "the request to leave")
        tenant_id = issued.api_key.tenant_id
        await wait_for(lambda: not leases(tenant_id), "its lease to be released")
        assert counted_usage(tenant_id) == []
    finally:
        busy.cancel()
        await iterator.aclose()
        await client.wait(30)
