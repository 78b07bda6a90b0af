"""The real ASGI application plus one test-only route that reports what the app derives.

daphne serves this module in the end-to-end tests so that a test can see, through the real
Traefik, which client address console/clientaddr.py settles on and which process answered.
Every other request goes to console.asgi.application untouched.
"""

import json
import os
from typing import Any

from console.asgi import application as node_application
from console.clientaddr import client_address

PROBE_PATH = "/v1/__e2e__/client"


async def application(scope: dict, receive: Any, send: Any) -> None:
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
