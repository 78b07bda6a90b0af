"""The real ASGI application plus one test-only route that reports what the app derives.

daphne serves this module in the end-to-end tests so that a test can see, through the real
Traefik, which client address core/clientaddr.py settles on and which process answered.
Every other request goes to console.asgi.application untouched.
"""

import asyncio
import json
import os
from typing import Any

from console.asgi import application as node_application
from core.clientaddr import client_address

PROBE_PATH = "/v1/__e2e__/client"
# A request carrying this header gets a slow Server-Sent Events stream on any path: how the
# tests see whether Traefik passes events on as they come (on /v1/completions) or holds them.
SSE_PROBE_HEADER = b"x-e2e-probe-sse"
SSE_EVENTS, SSE_GAP_SECONDS = 3, 0.5
# With this header value the stream lasts a minute, or until the client leaves: how a test
# keeps a request in flight on one replica for as long as it needs, however busy the machine.
SSE_HOLD = b"hold"
SSE_HOLD_EVENTS = 120
WS_ECHO_PATH = "/ws/__e2e__/echo"


async def client_gone(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def sse_stream(receive: Any, send: Any, events: int) -> None:
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    gone = asyncio.create_task(client_gone(receive))
    try:
        for n in range(events):
            if gone.done():
                return
            body = f"data: {n}\n\n".encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})
            await asyncio.sleep(SSE_GAP_SECONDS)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
    finally:
        gone.cancel()


async def websocket_echo(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": f"echo:{message.get('text')}"})
        else:
            return


async def application(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] == "websocket" and scope["path"] == WS_ECHO_PATH:
        return await websocket_echo(receive, send)
    probe = dict(scope["headers"]).get(SSE_PROBE_HEADER) if scope["type"] == "http" else None
    if probe is not None:
        return await sse_stream(receive, send, SSE_HOLD_EVENTS if probe == SSE_HOLD else SSE_EVENTS)
    if scope["type"] != "http" or scope["path"] != PROBE_PATH:
        return await node_application(scope, receive, send)
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    body = json.dumps(
        {
            "client_address": client_address(scope),
            "pid": os.getpid(),
            "x_forwarded_for": headers.get("x-forwarded-for"),
            "x_real_ip": headers.get("x-real-ip"),
            "header_names": sorted(headers),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
