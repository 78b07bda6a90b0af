"""The completions API in-process: what a client gets when the model cannot serve it."""

from collections.abc import Callable, Iterator

import pytest
from django.test import AsyncClient

from core.redis import get_sync_redis
from engine.runtime import Engine, GenerationRequest
from inference import engines

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def installed() -> Iterator[Callable[[Engine], Engine]]:
    previous = engines.set_engine(None)
    yield lambda engine: engines.set_engine(engine) or engine
    engines.set_engine(previous)


def _rl_state(tenant_id: int) -> list[bytes]:
    """Every limiter key of the tenant, its usage buffer only if it counts requests or tokens
    (an error count alone is expected: a 503 counts as one error)."""
    redis = get_sync_redis()
    keys = sorted(redis.scan_iter(match=f"rl*:v1:{{t:{tenant_id}}}:*"))
    usage = [key for key in keys if key.endswith(b":usage")]
    fields = [f for key in usage for f in redis.hkeys(key)]
    counted = [f for f in fields if not (isinstance(f, bytes) and f.endswith(b"|e"))]
    return [key for key in keys if not key.endswith(b":usage")] + (usage if counted else [])


async def _complete(token: str, **params: object):
    body = {"model": engines.served_model_id(), "prompt": "Hello", "max_tokens": 4, **params}
    return await AsyncClient().post(
        "/v1/completions",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )


async def test_a_model_that_failed_to_load_gets_503_with_the_fix_and_costs_nothing(
    installed, tiny_model_dir, issued
) -> None:
    from engine.testing import tiny_config

    engine = Engine(tiny_config(tiny_model_dir, model="/nonexistent/model"))
    engine.start()
    engine.wait_ready(30)
    installed(engine)
    response = await _complete(issued.token)
    error = response.json()["error"]
    assert response.status_code == 503 and error["code"] == "model_unavailable"
    assert "INFERENCE_MODEL" in error["message"]
    assert _rl_state(issued.api_key.tenant_id) == []  # refused before admission


async def test_a_full_queue_gets_503_overloaded_and_releases_its_admission(
    installed, make_engine, issued
) -> None:
    engine = installed(make_engine(max_batch=1, max_queue=1, max_wait_ms=0))
    long = GenerationRequest("busy", max_tokens=400, ignore_eos=True)
    running = await engine.submit(long)
    iterator = aiter(running)
    await anext(iterator)  # in its batch now
    queued = await engine.submit(long)
    try:
        response = await _complete(issued.token)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "overloaded"
        assert response["Retry-After"] == "1"
        state = _rl_state(issued.api_key.tenant_id)
        assert not [key for key in state if b":lease:" in key]  # released at once
        assert not [key for key in state if key.endswith(b":usage")]  # not counted as usage
    finally:
        running.cancel()
        queued.cancel()
        await iterator.aclose()


async def test_a_flooding_key_gets_429_before_its_body_is_even_read(
    installed, make_engine, tenant
) -> None:
    from asgiref.sync import sync_to_async

    from tenants.services import api_key_issue, tenant_set_limits

    installed(make_engine())
    await sync_to_async(tenant_set_limits)(
        tenant=tenant, changes={"rpm": 1, "burst_percent": 1}, actor="t"
    )
    issued = await sync_to_async(api_key_issue)(tenant=tenant, actor="t")
    assert (await _complete(issued.token)).status_code == 200
    assert (await _complete(issued.token)).status_code == 429  # Redis refuses: remembered
    garbage = await AsyncClient().post(
        "/v1/completions",
        b"{not json",
        content_type="application/json",
        headers={"Authorization": f"Bearer {issued.token}"},
    )
    assert garbage.status_code == 429  # refused in process, before the body was parsed
    assert garbage.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(garbage["retry-after-ms"]) > 0


@pytest.fixture
def settle_log(monkeypatch) -> list[str]:
    """Records each settlement as it happens (the real one still runs)."""
    from inference import services
    from ratelimit import limiter

    log: list[str] = []
    real = limiter.settle  # the function services.settle names

    async def recording(*args, **kwargs):
        outcome = await real(*args, **kwargs)
        log.append("settled")
        return outcome

    monkeypatch.setattr(services, "settle", recording)
    return log


async def test_a_stream_is_settled_before_its_closing_events_go_out(
    installed, make_engine, issued, settle_log
) -> None:
    """A client holding the end of a stream holds a settled request: a process killed after
    that cannot lose its usage (the chaos benchmark kills one under load)."""
    installed(make_engine())
    response = await _complete(
        issued.token, stream=True, stream_options={"include_usage": True}, max_tokens=3
    )
    seen = []
    async for chunk in response.streaming_content:
        for line in bytes(chunk).decode().splitlines():
            if line.startswith("data: "):
                seen.append(("settled" if settle_log else "open", line[6:]))
    finishing = [state for state, data in seen if '"finish_reason": "' in data or data == "[DONE]"]
    finishing += [state for state, data in seen if '"usage": {' in data]
    assert finishing and set(finishing) == {"settled"}, seen
    assert settle_log == ["settled"]  # once


async def test_a_socket_gets_its_done_frame_after_settlement(
    installed, make_engine, issued, settle_log
) -> None:
    import json

    from channels.testing import WebsocketCommunicator

    from inference.consumers import CompletionConsumer

    installed(make_engine())
    communicator = WebsocketCommunicator(
        CompletionConsumer.as_asgi(),
        "/ws/v1/completions",
        headers=[(b"authorization", f"Bearer {issued.token}".encode())],
    )
    assert (await communicator.connect())[0]
    create = {"type": "completion.create", "id": "a", "prompt": "Hello", "max_tokens": 3}
    await communicator.send_to(text_data=json.dumps(create))
    while True:
        frame = json.loads(await communicator.receive_from(timeout=30))
        if frame["type"] == "completion.done":
            assert settle_log == ["settled"], "the done frame went out before settlement"
            break
        assert not settle_log or frame["type"] != "completion.delta"
    await communicator.disconnect()
