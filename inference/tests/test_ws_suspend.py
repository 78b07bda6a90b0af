"""A suspended tenant on an open WebSocket: the socket is told (an `error` frame, code
tenant_suspended) and closed with 4401 soon after the suspension, idle or mid-stream, with no
request of its own; a socket opened while suspended is refused the same way; resuming lets a
new socket work at once. Every wait has a timeout, so a broken watcher fails, never hangs."""

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from core.errors import TENANT_SUSPENDED_MESSAGE
from engine.runtime import Engine
from inference.consumers import CLOSE_AUTH_FAILED, CompletionConsumer
from tenants.services import tenant_resume, tenant_suspend

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 30  # seconds for frames that need the model, on a busy machine
# The production poll of the key version (0.5 s) and the socket's re-check (0.25 s) make the
# design bound about 0.75 s; the deadline adds room for a loaded test machine.
TOLD_WITHIN = 5.0
LONG = 256  # tokens: a stream that may still run when the suspension is seen (or has ended)


@pytest.fixture
def served(make_engine: Callable[..., Engine], installed: Callable[[Engine], Engine]) -> Engine:
    return installed(make_engine())


def socket(token: str) -> WebsocketCommunicator:
    return WebsocketCommunicator(
        CompletionConsumer.as_asgi(),
        "/ws/v1/completions",
        headers=[(b"authorization", f"Bearer {token}".encode())],
    )


async def send_create(communicator: WebsocketCommunicator, request_id: str, tokens: int) -> None:
    frame = {"type": "completion.create", "id": request_id, "prompt": "Hi", "max_tokens": tokens}
    await communicator.send_to(text_data=json.dumps(frame))


async def frame_of_type(communicator: WebsocketCommunicator, *types: str) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = json.loads(await communicator.receive_from(timeout=WAIT))
        if frame["type"] in types:
            return frame


async def told_and_closed(communicator: WebsocketCommunicator, deadline: float) -> float:
    """The suspension's error frame, then close 4401, both before `deadline` (monotonic);
    returns when the error frame came."""
    frame = await asyncio.wait_for(
        frame_of_type(communicator, "error"), timeout=max(0.0, deadline - time.monotonic())
    )
    assert frame["error"] == {
        "message": TENANT_SUSPENDED_MESSAGE,
        "type": "permission_error",
        "param": None,
        "code": "tenant_suspended",
    }, frame
    told = time.monotonic()
    closed = await communicator.receive_output(timeout=max(0.01, deadline - time.monotonic()))
    assert closed == {"type": "websocket.close", "code": CLOSE_AUTH_FAILED}
    await communicator.wait()
    return told


@override_settings(API_KEY_VERSION_POLL_SECONDS=0.5)
async def test_an_idle_socket_is_told_and_closed_when_its_tenant_is_suspended(
    served, issued, tenant
) -> None:
    communicator = socket(issued.token)
    assert (await communicator.connect(timeout=WAIT))[0]
    await send_create(communicator, "before", 4)
    assert (await frame_of_type(communicator, "completion.done", "error"))["type"] == (
        "completion.done"
    )
    await sync_to_async(tenant_suspend)(tenant=tenant, actor="test")
    suspended = time.monotonic()
    told = await told_and_closed(communicator, suspended + TOLD_WITHIN)
    assert told - suspended < TOLD_WITHIN


@override_settings(API_KEY_VERSION_POLL_SECONDS=0.5)
async def test_a_running_stream_stops_when_its_tenant_is_suspended(served, issued, tenant) -> None:
    communicator = socket(issued.token)
    assert (await communicator.connect(timeout=WAIT))[0]
    await send_create(communicator, "long", LONG)
    started = await frame_of_type(communicator, "completion.started", "error")
    assert started["type"] == "completion.started", started
    await sync_to_async(tenant_suspend)(tenant=tenant, actor="test")
    deadline = time.monotonic() + TOLD_WITHIN
    # The stopped request's own done frame (cancelled, billed for what was sent) may come
    # first; no completion may come after the suspension's error frame.
    while True:
        frame = await asyncio.wait_for(
            frame_of_type(communicator, "completion.done", "error"),
            timeout=max(0.0, deadline - time.monotonic()),
        )
        if frame["type"] == "error":
            assert frame["error"]["code"] == "tenant_suspended", frame
            break
    closed = await communicator.receive_output(timeout=WAIT)
    assert closed == {"type": "websocket.close", "code": CLOSE_AUTH_FAILED}
    await communicator.wait()


async def test_a_socket_opened_while_suspended_is_refused_and_one_after_resume_works(
    served, issued, tenant
) -> None:
    await sync_to_async(tenant_suspend)(tenant=tenant, actor="test")
    refused = socket(issued.token)
    assert (await refused.connect(timeout=WAIT))[0]  # accepted, then told
    await told_and_closed(refused, time.monotonic() + TOLD_WITHIN)
    await sync_to_async(tenant_resume)(tenant=tenant, actor="test")
    await asyncio.sleep(0.6)  # one version poll
    served_again = socket(issued.token)
    assert (await served_again.connect(timeout=WAIT))[0]
    await send_create(served_again, "after", 4)
    frame = await frame_of_type(served_again, "completion.done", "error")
    assert frame["type"] == "completion.done", frame
    await served_again.disconnect()
