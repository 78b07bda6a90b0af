"""Chat requests on the WebSocket: `chat.completion.create` frames render their messages as
/v1/chat/completions does, stream `chat.completion.*` frames, and are limited, billed and
cancelled like any other request; the completion frames keep their shape."""

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db.models import Sum
from django.test import AsyncClient

from core.redis import get_sync_redis
from engine.runtime import Engine, GenerationRequest
from inference.consumers import CompletionConsumer
from inference.engines import served_model_id
from ratelimit.flush import flush
from tenants import services as tenant_services
from tenants.models import UsageMinute

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 30  # seconds: generous, for a busy machine
MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": [{"type": "text", "text": "Another one?"}]},
]


@pytest.fixture
def served(
    settings, make_engine: Callable[..., Engine], installed: Callable[[Engine], Engine]
) -> Engine:
    # Every lookup reads the key version: new limits apply to the very next request.
    settings.API_KEY_VERSION_POLL_SECONDS = 0
    return installed(make_engine())


async def open_socket(token: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        CompletionConsumer.as_asgi(),
        "/ws/v1/completions",
        headers=[(b"authorization", f"Bearer {token}".encode())],
    )
    connected, _ = await communicator.connect(timeout=WAIT)
    assert connected
    return communicator


async def send(communicator: WebsocketCommunicator, frame: dict[str, Any]) -> None:
    await communicator.send_to(text_data=json.dumps(frame))


def chat(request_id: str, **params: Any) -> dict[str, Any]:
    return {
        "type": "chat.completion.create",
        "id": request_id,
        "messages": MESSAGES,
        "max_tokens": 6,
        "temperature": 0,
        **params,
    }


async def frames_until_end(communicator: WebsocketCommunicator) -> list[dict[str, Any]]:
    """Frames up to and including the next done or error frame."""
    frames: list[dict[str, Any]] = []
    while not frames or not frames[-1]["type"].endswith(("completion.done", "error")):
        frames.append(json.loads(await communicator.receive_from(timeout=WAIT)))
    return frames


async def still_answers(communicator: WebsocketCommunicator) -> None:
    """The socket is open and serves: a small chat runs to its end."""
    await send(communicator, chat("after", max_tokens=2))
    assert (await frames_until_end(communicator))[-1]["type"] == "chat.completion.done"


async def test_a_chat_streams_as_the_rest_route_answers_it(served, issued) -> None:
    rest = await AsyncClient().post(
        "/v1/chat/completions",
        {"model": served_model_id(), "messages": MESSAGES, "max_tokens": 6, "temperature": 0},
        content_type="application/json",
        headers={"Authorization": f"Bearer {issued.token}"},
    )
    assert rest.status_code == 200, rest.content
    expected = rest.json()
    communicator = await open_socket(issued.token)
    await send(communicator, chat("c1"))
    frames = await frames_until_end(communicator)
    await communicator.disconnect()
    started, *deltas, done = frames
    assert started["type"] == "chat.completion.started" and started["id"] == "c1"
    assert started["ratelimit"]["x-ratelimit-limit-requests"] == "600"
    assert deltas and all(f["type"] == "chat.completion.delta" and f["id"] == "c1" for f in deltas)
    assert all(set(f) == {"type", "id", "delta", "completion_tokens"} for f in deltas)
    text = "".join(f["delta"]["content"] for f in deltas)
    # Same prompt (rendered from the same messages), same parameters: the same greedy answer.
    assert text == expected["choices"][0]["message"]["content"]
    assert done["type"] == "chat.completion.done" and done["id"] == "c1"
    assert done["usage"] == expected["usage"]
    assert done["finish_reason"] == expected["choices"][0]["finish_reason"]


async def test_a_chat_on_the_socket_is_counted_once_in_postgres(served, issued) -> None:
    communicator = await open_socket(issued.token)
    await send(communicator, chat("c1"))
    done = (await frames_until_end(communicator))[-1]
    await communicator.disconnect()
    assert done["type"] == "chat.completion.done", done
    rows = UsageMinute.objects.filter(api_key_id=issued.api_key.pk)
    usage: dict[str, Any] = {}
    async with asyncio.timeout(WAIT):
        while usage.get("requests") != 1:
            await sync_to_async(flush)()
            usage = await rows.aaggregate(
                requests=Sum("requests"),
                prompt=Sum("prompt_tokens"),
                completion=Sum("completion_tokens"),
            )
            await asyncio.sleep(0.05)
    assert usage == {
        "requests": 1,
        "prompt": done["usage"]["prompt_tokens"],
        "completion": done["usage"]["completion_tokens"],
    }


async def test_completion_frames_keep_their_shape_next_to_chat_frames(served, issued) -> None:
    communicator = await open_socket(issued.token)
    await send(
        communicator,
        {"type": "completion.create", "id": "p", "prompt": "Hi", "max_tokens": 3},
    )
    started, *deltas, done = await frames_until_end(communicator)
    await communicator.disconnect()
    assert list(started) == ["type", "id", "ratelimit"]
    assert started["type"] == "completion.started"
    assert deltas and all(list(f) == ["type", "id", "text", "completion_tokens"] for f in deltas)
    assert all(f["type"] == "completion.delta" for f in deltas)
    assert list(done) == ["type", "id", "finish_reason", "usage"]
    assert done["type"] == "completion.done"


async def test_a_chat_over_its_limit_gets_a_429_frame_and_the_socket_stays_open(
    served, issued
) -> None:
    set_limits = sync_to_async(tenant_services.tenant_set_limits)
    tenant = issued.api_key.tenant
    await set_limits(tenant=tenant, changes={"tokens_per_day": 10_000}, actor="test")
    communicator = await open_socket(issued.token)
    await still_answers(communicator)  # spends some of today's tokens
    await set_limits(tenant=tenant, changes={"tokens_per_day": 1}, actor="test")
    await send(communicator, chat("over"))
    frame = (await frames_until_end(communicator))[-1]
    assert frame["type"] == "error" and frame["id"] == "over", frame
    assert frame["error"]["code"] == "insufficient_quota"
    assert frame["headers"]["x-should-retry"] == "false"
    await set_limits(tenant=tenant, changes={"tokens_per_day": None, "rpm": 1}, actor="test")
    codes = []
    for n in range(3):  # the request rate's burst lets one or two through
        await send(communicator, chat(f"r{n}", max_tokens=2))
        last = (await frames_until_end(communicator))[-1]
        codes.append(last["error"]["code"] if last["type"] == "error" else last["type"])
        if last["type"] == "error":
            assert last["headers"]["Retry-After"] and last["headers"]["retry-after-ms"]
            break
    assert codes[-1] == "rate_limit_exceeded", codes
    # Still open and still this socket's: a bad frame is answered, not fatal.
    await send(communicator, {"type": "completion.cancel", "id": "ghost"})
    assert (await frames_until_end(communicator))[-1]["error"]["param"] == "id"
    await communicator.disconnect()


@pytest.mark.parametrize("cancel_type", ["chat.completion.cancel", "completion.cancel"])
async def test_cancel_stops_a_chat_and_bills_nothing_unsent(
    cancel_type, make_engine, installed, issued
) -> None:
    # One row at a time, taken by a long request: the chat waits in the queue until cancelled.
    engine = installed(make_engine(max_batch=1, max_wait_ms=0))
    busy = await engine.submit(GenerationRequest("busy", max_tokens=400, ignore_eos=True))
    iterator = aiter(busy)
    await anext(iterator)  # in its batch now
    try:
        communicator = await open_socket(issued.token)
        await send(communicator, chat("long", max_tokens=50))
        started = json.loads(await communicator.receive_from(timeout=WAIT))
        assert started["type"] == "chat.completion.started", started
        await send(communicator, {"type": cancel_type, "id": "long"})
        done = (await frames_until_end(communicator))[-1]
        assert done["type"] == "chat.completion.done" and done["id"] == "long", done
        assert done["finish_reason"] == "cancelled"
        assert done["usage"]["completion_tokens"] == 0
    finally:
        busy.cancel()
        await iterator.aclose()
    await still_answers(communicator)
    await communicator.disconnect()
    # Every lease released: nothing of the cancelled chat is held.
    redis = get_sync_redis()
    leases = [k for k in redis.scan_iter(match="rl:v1:*") if b":lease:" in k]
    assert leases == []


@pytest.mark.parametrize(
    ("frame", "code", "param"),
    [
        (chat("a", messages=[]), "invalid_request", "messages"),
        (chat("b", messages=[{"role": "tool", "content": "x"}]), "invalid_request", None),
        (chat("c", messages=[{"role": "user"}]), "invalid_request", None),
        (chat("d", messages="Hello"), "invalid_request", "messages"),
        (chat("e", prompt="Hello"), "invalid_request", "prompt"),
        (chat("f", messages=[{"role": "assistant", "content": "x"}]), "unsupported_value", None),
        (chat("g", tools=[{"type": "function"}]), "unsupported_parameter", "tools"),
        (chat("h", max_tokens=2, max_completion_tokens=2), "invalid_request", None),
        (chat("i", model="someone-elses-model"), "model_not_found", "model"),
        ({"type": "chat.completion.create", "messages": MESSAGES}, "invalid_request", "id"),
    ],
)
async def test_a_bad_chat_frame_gets_an_error_frame_and_the_socket_stays_open(
    served, issued, frame, code, param
) -> None:
    communicator = await open_socket(issued.token)
    await send(communicator, frame)
    error = json.loads(await communicator.receive_from(timeout=WAIT))
    assert error["type"] == "error" and error["error"]["code"] == code, error
    assert error["id"] == frame.get("id")
    if param is not None:
        assert (error["error"]["param"] or "").startswith(param), error
    await still_answers(communicator)
    await communicator.disconnect()
