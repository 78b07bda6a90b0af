"""Clients that cut streams the way a real client goes away, while still seeing every byte the
node had already sent: they half-close (TCP FIN) after the k-th content piece and read on until
the node closes. The node notices the FIN as a disconnect; what it wrote before that reaches
the client, what it would write after is dropped, and only the former may be billed."""

import asyncio
import json
import socket
from dataclasses import dataclass

from websockets.asyncio.client import connect


@dataclass
class Received:
    """What one client got: the last cumulative token count it saw, and whether it finished."""

    completion_tokens: int = 0
    pieces: int = 0
    finished: bool = False


def _dechunk(raw: bytes) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, body = out + rest[:size], rest[size + 2 :]
    return out


def _events(body: bytes) -> list[dict]:
    events = []
    for block in body.split(b"\n\n"):
        if block.startswith(b"data: {"):
            events.append(json.loads(block[6:]))
    return events


def sse_cut(base_url: str, token: str, payload: dict, cut_after: int) -> Received:
    """POST a streamed completion, half-close after `cut_after` content chunks, read to EOF."""
    host, port = base_url.removeprefix("http://").split(":")
    body = json.dumps(payload).encode()
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    raw = b""
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(request)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            raw += data
            pieces = [e for e in _events(_dechunk(raw)) if "x_completion_tokens" in e]
            if len(pieces) >= cut_after:
                sock.shutdown(socket.SHUT_WR)
                cut_after = 10**9  # read the rest without cutting again
    return _tally(_events(_dechunk(raw)))


def _tally(events: list[dict]) -> Received:
    got = Received()
    for event in events:
        if "x_completion_tokens" in event:
            got.completion_tokens = event["x_completion_tokens"]
            got.pieces += 1
        if event.get("choices") and event["choices"][0].get("finish_reason"):
            got.finished = True
    return got


async def ws_cut(ws_url: str, token: str, payload: dict, cut_after: int) -> Received:
    """Stream one completion over WebSocket, half-close after `cut_after` deltas, read on."""
    got = Received()
    async with connect(ws_url, additional_headers={"X-API-Key": token}) as ws:
        await ws.send(json.dumps({"type": "completion.create", "id": "cut", **payload}))
        try:
            async with asyncio.timeout(60):
                async for message in ws:
                    frame = json.loads(message)
                    if frame["type"] == "completion.delta":
                        got.completion_tokens = frame["completion_tokens"]
                        got.pieces += 1
                        if got.pieces == cut_after:
                            ws.transport.write_eof()
                    elif frame["type"] == "completion.done":
                        got.finished = True
                        got.completion_tokens = frame["usage"]["completion_tokens"]
        except Exception:  # noqa: S110 - the node closing a half-closed socket ends the read
            pass
    return got
