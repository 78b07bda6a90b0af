"""Bad input never reaches a 500 or a 1011: lone surrogates and deep nesting included, on REST
(through the ASGI path daphne serves) and on an open WebSocket, whose other streams go on."""

import gc
import json
from collections.abc import Callable
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from console.tests.test_api_json_errors import call
from engine.runtime import Engine
from inference.consumers import CompletionConsumer
from inference.engines import served_model_id

pytestmark = pytest.mark.django_db(transaction=True)

SURROGATES = ["\ud800", "\udfff", "a\ud800b", "\ud83d"]
text = st.one_of(st.text(max_size=20), st.sampled_from(SURROGATES))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["prompt", "model", "stop", "user", "max_tokens", "seed", "messages", "id", "type"]
requests = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def bodies() -> st.SearchStrategy[str]:
    """Request bodies: JSON objects with odd values, surrogate escapes, or very deep nesting."""
    return st.one_of(
        requests.map(json.dumps),
        st.integers(min_value=1, max_value=40_000).map(deep),
        st.integers(min_value=1, max_value=40_000).map(lambda n: "[" * n),
        st.sampled_from(SURROGATES).map(lambda s: json.dumps({"prompt": s, "model": "m"})),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies(), path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
async def test_rest_answers_every_bad_body_with_a_4xx_in_the_openai_shape(
    issued, body: str, path: str
) -> None:
    status, headers, raw = await call(
        "POST", path, body.encode(), Authorization=f"Bearer {issued.token}"
    )
    assert 400 <= status < 500 or status == 503, (status, raw[:300])
    assert headers["content-type"].startswith("application/json")
    assert set(json.loads(raw)["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    "payload",
    [
        {"prompt": "a\ud800b"},
        {"messages": [{"role": "user", "content": "a\ud800b"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
        {"prompt": "fine", "stop": ["\ud800"]},
    ],
)
async def test_rest_refuses_a_lone_surrogate_with_a_400(issued, payload: dict[str, object]) -> None:
    path = "/v1/chat/completions" if "messages" in payload else "/v1/completions"
    body = json.dumps({"model": "m", **payload}).encode()
    status, _, raw = await call("POST", path, body, Authorization=f"Bearer {issued.token}")
    error = json.loads(raw)["error"]
    assert status == 400 and "surrogate" in error["message"], raw


async def test_rest_refuses_deep_nesting_with_a_400(issued) -> None:
    body = ('{"model": "m", "prompt": ' + deep(30_000) + "}").encode()
    status, _, raw = await call(
        "POST", "/v1/completions", body, Authorization=f"Bearer {issued.token}"
    )
    assert status == 400 and "nested" in json.loads(raw)["error"]["message"]


async def open_socket(token: str | None = None) -> WebsocketCommunicator:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    communicator = WebsocketCommunicator(
        CompletionConsumer.as_asgi(), "/ws/v1/completions", headers=headers
    )
    connected, _ = await communicator.connect(timeout=30)
    assert connected
    return communicator


async def next_frame(communicator: WebsocketCommunicator) -> dict[str, Any]:
    output = await communicator.receive_output(timeout=30)
    assert output["type"] == "websocket.send", output  # not a close (1011 or any other)
    frame: dict[str, Any] = json.loads(output["text"])
    return frame


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(frame=bodies())
async def test_an_unauthenticated_socket_answers_every_bad_frame_and_stays_open(
    frame: str,
) -> None:
    communicator = await open_socket()
    await communicator.send_to(text_data=frame)
    answer = await next_frame(communicator)
    assert answer["type"] == "error" and set(answer["error"]) >= {"message", "code"}
    await communicator.disconnect()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=requests)
async def test_an_authenticated_socket_answers_every_bad_create_and_stays_open(
    issued, request: dict[str, object]
) -> None:
    communicator = await open_socket(issued.token)
    frame = {**request, "type": "completion.create", "id": "x"}
    await communicator.send_to(text_data=json.dumps(frame))
    answer = await next_frame(communicator)
    assert answer["type"] == "error", answer
    await communicator.disconnect()


async def test_bad_frames_leave_the_sockets_other_streams_running(
    make_engine: Callable[..., Engine], installed: Callable[[Engine], Engine], issued
) -> None:
    installed(make_engine(max_batch=1))
    communicator = await open_socket(issued.token)
    create = {"type": "completion.create", "model": served_model_id(), "temperature": 0}
    long = {**create, "id": "long", "prompt": "Tell a long story.", "max_tokens": 200}
    await communicator.send_to(text_data=json.dumps({**long, "ignore_eos": True}))
    assert (await next_frame(communicator))["type"] == "error"  # ignore_eos is not an API field
    await communicator.send_to(text_data=json.dumps(long))
    assert (await next_frame(communicator))["type"] == "completion.started"
    bad_frames = [
        json.dumps({**create, "id": "s", "prompt": "a\ud800b"}),
        json.dumps({**create, "id": "c", "messages": [{"role": "user", "content": "\udfff"}]}),
        deep(30_000),
    ]
    for bad in bad_frames:
        await communicator.send_to(text_data=bad)
    errors, finished = 0, None
    while finished is None or errors < len(bad_frames):
        frame = await next_frame(communicator)
        if frame["type"] == "error":
            errors += 1
            assert frame["id"] in (None, "s", "c") and "Traceback" not in frame["error"]["message"]
        elif frame["type"] == "completion.done":
            finished = frame
    assert errors == len(bad_frames) and finished["id"] == "long"
    await communicator.disconnect()


async def test_bad_frames_log_no_traceback(caplog) -> None:
    # Earlier tests' garbage (asyncio logs an unclosed Redis Cluster client as an ERROR when it
    # is collected) must not be taken for this consumer's: collected, then forgotten, first.
    gc.collect()
    caplog.clear()
    communicator = await open_socket()
    for bad in (deep(30_000), "[" * 30_000, json.dumps({"type": "auth", "api_key": "\ud800"})):
        await communicator.send_to(text_data=bad)
        assert (await next_frame(communicator))["type"] == "error"
    await communicator.disconnect()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL") or r.exc_info]
