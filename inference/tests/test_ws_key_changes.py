"""An open WebSocket uses its key as it is now: revoked or expired keys are refused on the
socket that is already open (error frame, close 4401), new quotas apply to its next request,
and a socket lives at most WS_MAX_LIFETIME_SECONDS. A suspended tenant: test_ws_suspend.py."""

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from engine.runtime import Engine
from inference.consumers import CLOSE_AUTH_FAILED, CLOSE_LIFETIME, CompletionConsumer
from tenants import services as tenant_services

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 30  # seconds: generous, for a busy machine


@pytest.fixture
def served(
    settings, make_engine: Callable[..., Engine], installed: Callable[[Engine], Engine]
) -> Engine:
    # Every lookup reads the key version: a change is visible to the very next request
    # (in production within API_KEY_VERSION_POLL_SECONDS).
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


async def create(communicator: WebsocketCommunicator, request_id: str) -> None:
    frame = {"type": "completion.create", "id": request_id, "prompt": "Hi", "max_tokens": 4}
    await communicator.send_to(text_data=json.dumps(frame))


async def final_frame(communicator: WebsocketCommunicator) -> dict[str, Any]:
    """Frames until a done or error frame; that one."""
    while True:
        frame: dict[str, Any] = json.loads(await communicator.receive_from(timeout=WAIT))
        if frame["type"] in ("completion.done", "error"):
            return frame


async def refused_and_closed(communicator: WebsocketCommunicator) -> None:
    """The next frames: an invalid_api_key error, then close code 4401."""
    frame = await final_frame(communicator)
    assert frame["type"] == "error" and frame["error"]["code"] == "invalid_api_key", frame
    closed = await communicator.receive_output(timeout=WAIT)
    assert closed == {"type": "websocket.close", "code": CLOSE_AUTH_FAILED}
    await communicator.wait()


async def served_once(token: str) -> WebsocketCommunicator:
    """An open socket that has completed one request with the key as it was."""
    communicator = await open_socket(token)
    await create(communicator, "before")
    assert (await final_frame(communicator))["type"] == "completion.done"
    return communicator


async def test_a_key_revoked_while_its_socket_is_open_is_refused_on_it(served, issued) -> None:
    communicator = await served_once(issued.token)
    await sync_to_async(tenant_services.api_key_revoke)(api_key=issued.api_key, actor="test")
    await create(communicator, "after")
    await refused_and_closed(communicator)


async def test_an_idle_socket_is_closed_once_its_key_is_revoked(served, issued) -> None:
    communicator = await served_once(issued.token)
    await sync_to_async(tenant_services.api_key_revoke)(api_key=issued.api_key, actor="test")
    await refused_and_closed(communicator)  # without sending anything


async def test_a_key_that_expires_while_its_socket_is_open_is_refused_on_it(served, tenant) -> None:
    issued = await sync_to_async(tenant_services.api_key_issue)(
        tenant=tenant, name="short", expires_in=timedelta(seconds=3), actor="test"
    )
    communicator = await served_once(issued.token)
    await refused_and_closed(communicator)


async def test_a_quota_lowered_below_what_was_spent_applies_on_the_open_socket(
    served, issued
) -> None:
    set_limits = sync_to_async(tenant_services.tenant_set_limits)
    tenant = issued.api_key.tenant
    await set_limits(tenant=tenant, changes={"tokens_per_day": 10_000}, actor="test")
    communicator = await served_once(issued.token)  # spends a few tokens of today's quota
    await set_limits(tenant=tenant, changes={"tokens_per_day": 1}, actor="test")
    await create(communicator, "after")
    frame = await final_frame(communicator)
    assert frame["type"] == "error" and frame["error"]["code"] == "insufficient_quota", frame
    # A spent quota is not a bad key: the socket stays open and answers.
    await communicator.send_to(text_data=json.dumps({"type": "completion.cancel", "id": "x"}))
    assert (await final_frame(communicator))["error"]["param"] == "id"
    await communicator.disconnect()


async def test_a_socket_is_closed_when_it_reaches_its_lifetime(settings, served, issued) -> None:
    settings.WS_MAX_LIFETIME_SECONDS = 2
    communicator = await served_once(issued.token)
    frame = await final_frame(communicator)
    assert frame["type"] == "error" and frame["error"]["code"] == "connection_expired"
    closed = await communicator.receive_output(timeout=WAIT)
    assert closed == {"type": "websocket.close", "code": CLOSE_LIFETIME}
    await communicator.wait()
