"""WebSockets do not lean on Redis's channel layer, and a key that cannot be checked gets a
clear close code instead of a crashed consumer."""

import json
import socket

import pytest
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.db import OperationalError

from inference.consumers import CLOSE_AUTH_FAILED, CLOSE_UNAVAILABLE, CompletionConsumer
from tenants import keycache

pytestmark = pytest.mark.django_db(transaction=True)


def dead_redis_url() -> str:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{probe.getsockname()[1]}/0"


async def test_a_socket_works_while_the_channel_layer_is_unreachable(settings, issued) -> None:
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [dead_redis_url()]},
        }
    }
    channel_layers.backends.clear()
    try:
        communicator = WebsocketCommunicator(CompletionConsumer.as_asgi(), "/ws/v1/completions")
        connected, _ = await communicator.connect()
        assert connected
        await communicator.send_to(text_data=json.dumps({"type": "auth", "api_key": "sk_x_y"}))
        frame = json.loads(await communicator.receive_from(timeout=30))
        assert frame["type"] == "error" and frame["error"]["code"] == "invalid_api_key"
        closed = await communicator.receive_output(timeout=30)
        assert closed["type"] == "websocket.close" and closed["code"] == CLOSE_AUTH_FAILED
        await communicator.wait()
    finally:
        channel_layers.backends.clear()


async def test_a_key_that_cannot_be_checked_closes_with_try_again_later(
    issued, monkeypatch
) -> None:
    async def unreachable(key_id: str) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(keycache, "_load_record", unreachable)
    communicator = WebsocketCommunicator(
        CompletionConsumer.as_asgi(),
        "/ws/v1/completions",
        headers=[(b"authorization", f"Bearer {issued.token}".encode())],
    )
    connected, _ = await communicator.connect()
    assert connected
    frame = json.loads(await communicator.receive_from(timeout=30))
    assert frame["type"] == "error" and frame["error"]["code"] == "service_unavailable"
    closed = await communicator.receive_output(timeout=30)
    assert closed["type"] == "websocket.close" and closed["code"] == CLOSE_UNAVAILABLE == 4503
    await communicator.wait()
