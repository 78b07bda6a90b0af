"""ASGI middleware: 413 for a request body over MAX_BODY_BYTES, before Django reads it all.

Traefik's buffering middleware caps bodies on most public routes, but not on the streaming
completion paths (it would buffer their Server-Sent Events), and daphne has no cap of its own:
Django would spool any size to disk before looking. This counts bytes as they arrive instead.
"""

import json
from typing import Any

from core.errors import PayloadTooLarge

Scope = dict[str, Any]


class _TooLarge(Exception):
    pass


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reject(send: Any, limit: int) -> None:
    error = PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Answers 413 (OpenAI error shape) once an HTTP request body passes `limit` bytes."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _declared_length(scope)
        if declared is not None and declared > self.limit:
            return await _reject(send, self.limit)
        received, started = 0, False

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            # Django reads the whole body before it answers, so nothing has been sent yet; a
            # streaming view that reads late would already have started: then just stop.
            if not started:
                await _reject(send, self.limit)
