"""Every answer under /v1 is JSON in the OpenAI error shape, whatever DEBUG says, through the
same ASGI path daphne serves (console.handlers.PathDispatcher and ApiHandler)."""

import json

import pytest
from asgiref.testing import ApplicationCommunicator
from django.core.handlers.asgi import ASGIHandler
from django.test import override_settings

from console.handlers import ApiHandler, PathDispatcher

pytestmark = pytest.mark.django_db(transaction=True)


async def call(
    method: str, path: str, body: bytes = b"", host: str = "testserver", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    app = PathDispatcher(ApiHandler(), ASGIHandler())
    raw_headers = [(b"host", host.encode()), (b"content-type", b"application/json")]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": raw_headers,
        "client": ("127.0.0.1", 5555),
        "server": ("testserver", 80),
    }
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "http.request", "body": body, "more_body": False})
    start = await communicator.receive_output(30)
    chunks = []
    while True:
        message = await communicator.receive_output(30)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    names = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], names, b"".join(chunks)


def openai_error(headers: dict[str, str], body: bytes) -> dict:
    assert headers["content-type"].startswith("application/json"), (headers, body[:200])
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"] and "<" not in error["message"]
    return error


@pytest.mark.parametrize("debug", [True, False])
@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/completions", 405, "method_not_allowed"),
        ("PUT", "/v1/chat/completions", 405, "method_not_allowed"),
        ("POST", "/v1/models", 405, "method_not_allowed"),
        ("GET", "/v1/nope", 404, "unknown_url"),
        ("GET", "/v1/models/", 404, "unknown_url"),
        ("GET", "/v1", 404, "unknown_url"),
    ],
)
async def test_every_v1_error_is_openai_json_whatever_debug_says(
    debug: bool, method: str, path: str, status: int, code: str
) -> None:
    with override_settings(DEBUG=debug):
        got, headers, body = await call(method, path)
    assert got == status
    error = openai_error(headers, body)
    assert error["code"] == code
    if status == 405:
        assert headers["allow"] and headers["allow"] in error["message"]


@pytest.mark.parametrize("debug", [True, False])
async def test_a_host_this_node_does_not_serve_gets_a_json_400(debug: bool) -> None:
    with override_settings(DEBUG=debug):
        got, headers, body = await call("GET", "/v1/models", host="evil.example")
    assert got == 400 and openai_error(headers, body)["code"] == "invalid_host"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "The request body must be a JSON object."),
        (b"null", "The request body must be a JSON object."),
        (b"[]", "The request body must be a JSON object."),
        (b"{not json", "The request body is not valid JSON."),
    ],
)
async def test_a_body_that_is_not_a_json_object_is_named_so(
    issued, body: bytes, message: str
) -> None:
    got, headers, raw = await call(
        "POST", "/v1/completions", body, Authorization=f"Bearer {issued.token}"
    )
    error = openai_error(headers, raw)
    assert got == 400 and error["message"] == message and error["param"] is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", True),
        ("max_tokens", "5"),
        ("temperature", True),
        ("stream", "true"),
        ("seed", False),
        ("n", 1.0),
    ],
)
async def test_parameters_are_not_coerced_from_another_type(issued, field: str, value) -> None:
    payload = {"model": "x", "prompt": "Hello", field: value}
    got, headers, raw = await call(
        "POST",
        "/v1/completions",
        json.dumps(payload).encode(),
        Authorization=f"Bearer {issued.token}",
    )
    error = openai_error(headers, raw)
    assert got == 400 and error["param"] == field
