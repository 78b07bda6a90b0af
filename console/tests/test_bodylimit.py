"""BodyLimitMiddleware: 413 in the OpenAI shape, whether the size is declared or not."""

import json

from console.bodylimit import BodyLimitMiddleware


async def echo_app(scope: dict, receive, send) -> None:
    """Reads the whole body first, as Django's ASGI handler does, then answers its size."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


async def run(chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> list[dict]:
    incoming = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return incoming.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": headers}
    await BodyLimitMiddleware(echo_app, limit=10)(scope, receive, send)
    return sent


async def test_a_body_within_the_limit_reaches_the_app() -> None:
    sent = await run([b"12345", b"67890"], [])
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"10"


async def test_a_declared_oversize_body_is_refused_before_it_is_read() -> None:
    sent = await run([b"x" * 11], [(b"content-length", b"11")])
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"


async def test_a_chunked_body_is_refused_once_it_passes_the_limit() -> None:
    sent = await run([b"123456", b"789012", b"never read"], [])
    assert [message.get("status") for message in sent[:1]] == [413]
    assert len(sent) == 2
