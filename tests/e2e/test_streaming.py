"""Streams through the real Traefik: SSE passed on as it comes, WebSockets upgraded.

The probe streams here are test-only responses (tests/e2e/probe_asgi.py) on the real routes;
the completions API's own SSE and WebSocket tests join them after the API merge.
"""

import asyncio
import http.client
import json
import time
from urllib.parse import urlsplit

import pytest
import websockets

from tests.e2e.conftest import Stack
from tests.e2e.probe_asgi import SSE_EVENTS, SSE_GAP_SECONDS, WS_ECHO_PATH

# django_db: makes pytest-django create the test database the replicas use.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db]


def event_arrival_times(base: str, path: str) -> list[tuple[float, str]]:
    """Each `data:` line of a probe SSE stream with the second it arrived."""
    url = urlsplit(base)
    assert url.hostname, base
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        # No body (Content-Length: 0): the probe answers at once, and a POST body would race in
        # Traefik (Go's HTTP/1 server closes the client's body when the response starts, and
        # the transport's last read of it, if still to come, then tears down the connection to
        # the replica: golang/go#40747). That cut streams here after one event on busy cores;
        # the race concerns how a body is forwarded, not how a stream is passed on.
        conn.request("POST", path, headers={"X-E2E-Probe-Sse": "1"})
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/event-stream"
        start, events = time.monotonic(), []
        while line := response.readline():
            if line.startswith(b"data:"):
                events.append((time.monotonic() - start, line.decode().strip()))
        return events
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/responses"])
def test_completion_streams_pass_through_traefik_event_by_event(stack: Stack, path: str) -> None:
    events = event_arrival_times(stack.public, path)
    assert [text for _, text in events][-1] == "data: [DONE]", events
    assert len(events) == SSE_EVENTS + 1, events
    # The first event arrives long before the stream ends (it takes SSE_EVENTS gaps): nothing
    # held it back. Half the stream's length leaves room for a loaded machine.
    assert events[-1][0] - events[0][0] >= SSE_EVENTS * SSE_GAP_SECONDS / 2, events


def test_the_buffered_routes_would_hold_a_stream_which_is_why_completions_skip_them(
    stack: Stack,
) -> None:
    # Evidence for the route split in deploy/traefik/dynamic/app.yml: through the buffering
    # middleware every event arrives at once, at the end. If a Traefik upgrade changes this,
    # the split can go (see docs/deploy.md).
    events = event_arrival_times(stack.public, "/v1/models")
    assert len(events) == SSE_EVENTS + 1
    assert events[-1][0] - events[0][0] < SSE_GAP_SECONDS / 2, events


def test_websockets_are_upgraded_and_relayed_through_traefik(stack: Stack) -> None:
    async def talk() -> list[str | bytes]:
        url = stack.public.replace("http://", "ws://") + WS_ECHO_PATH
        async with websockets.connect(url, open_timeout=60) as socket:
            replies = []
            for text in ("one", "two"):
                await socket.send(text)
                replies.append(await asyncio.wait_for(socket.recv(), timeout=60))
            return replies

    assert asyncio.run(talk()) == ["echo:one", "echo:two"]


def test_a_real_completion_streams_through_traefik(stack: Stack, api_token: str) -> None:
    url = urlsplit(stack.public)
    assert url.hostname, stack.public
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    body = json.dumps(
        {
            "model": "tiny-t5",
            "prompt": "Tell a story.",
            "max_tokens": 16,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    try:
        conn.request(
            "POST",
            "/v1/completions",
            body=body,
            headers={"Authorization": f"Bearer {api_token}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("x-ratelimit-limit-requests") == "6000"
        lines = [line.decode().strip() for line in iter(response.readline, b"")]
    finally:
        conn.close()
    events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert any(chunk["choices"] and chunk["choices"][0]["finish_reason"] for chunk in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] >= 1


def test_a_websocket_completion_runs_through_traefik(stack: Stack, api_token: str) -> None:
    async def talk() -> list[dict]:
        url = stack.public.replace("http://", "ws://") + "/ws/v1/completions"
        async with websockets.connect(url, open_timeout=60) as socket:
            await socket.send(json.dumps({"type": "auth", "api_key": api_token}))
            await socket.send(
                json.dumps(
                    {"type": "completion.create", "id": "t", "prompt": "Hello", "max_tokens": 8}
                )
            )
            frames: list[dict] = []
            while not frames or frames[-1]["type"] not in ("completion.done", "error"):
                frames.append(json.loads(await asyncio.wait_for(socket.recv(), timeout=60)))
            return frames

    frames = asyncio.run(talk())
    assert frames[0]["type"] == "completion.started"
    assert frames[-1]["type"] == "completion.done" and frames[-1]["usage"]["total_tokens"] > 0
