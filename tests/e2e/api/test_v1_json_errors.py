"""Live: every answer under /v1 is JSON in the OpenAI error shape, with DEBUG on (the default of
`make run`) as with DEBUG off: unknown paths, trailing slashes, wrong methods (405 with Allow),
and GET /v1/models/{model} answering for ids with slashes."""

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from conftest import database_url_for_current_test_db
from tests.e2e.api.conftest import Customer
from tests.e2e.live_daphne import LiveDaphne, start_daphne

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SERVED = "google/flan-t5-base"  # the debug server's model id (not loaded: none is needed here)


@pytest.fixture(scope="module")
def debug_server(api_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaphne]:
    """A daphne as `make run` starts it (DEBUG on), on the test database and Redis."""
    from django.conf import settings

    env = {
        "DEBUG": "true",
        # The keys the tests issue are hashed under the session's pepper (api_server sets it).
        "API_KEY_PEPPER": settings.API_KEY_PEPPER,
        "SECRET_KEY": secrets.token_urlsafe(48),
        "DATABASE_URL": database_url_for_current_test_db(),
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "PYTHONUNBUFFERED": "1",
        "INFERENCE_MODEL": SERVED,
        "INFERENCE_MODEL_NAME": "",
        "INFERENCE_AUTOLOAD": "false",
        "RATELIMIT_FLUSH_SECONDS": "0",
    }
    server = start_daphne(env, tmp_path_factory.mktemp("debug-server") / "daphne.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["debug", "production"])
def server(request: pytest.FixtureRequest) -> LiveDaphne:
    name = "debug_server" if request.param == "debug" else "api_server"
    return request.getfixturevalue(name)


def call(
    server: LiveDaphne, method: str, path: str, token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = b"{}" if method in ("POST", "PUT", "PATCH") else None
    request = urllib.request.Request(  # noqa: S310 - the test's own server
        f"{server.url}{path}", data=body, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def openai_error(headers: dict[str, str], body: bytes) -> dict:
    assert headers["content-type"].startswith("application/json"), (headers, body[:300])
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert "<" not in error["message"] and "Traceback" not in error["message"]
    return error


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/foo"),
        ("GET", "/v1/nope"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/completions/"),
        ("POST", "/v1/chat/completions/"),
        ("GET", "/v1/models/"),
        ("GET", "/v1/usage/"),
        ("GET", "/v1"),
        ("GET", "/v1/"),
    ],
)
def test_an_unknown_path_is_a_json_404_like_openais(
    server: LiveDaphne, customer: Customer, method: str, path: str
) -> None:
    status, headers, body = call(server, method, path, customer.token)
    error = openai_error(headers, body)
    assert status == 404 and error["code"] == "unknown_url", error
    assert error["message"] == f"Invalid URL ({method} {path})"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/completions", "POST"),
        ("PUT", "/v1/chat/completions", "POST"),
        ("DELETE", "/v1/models", "GET"),
        ("POST", "/v1/usage", "GET"),
        ("POST", f"/v1/models/{SERVED}", "GET"),
    ],
)
def test_a_wrong_method_is_a_json_405_with_allow(
    server: LiveDaphne, customer: Customer, method: str, path: str, allowed: str
) -> None:
    status, headers, body = call(server, method, path, customer.token)
    error = openai_error(headers, body)
    assert status == 405 and headers["allow"] == allowed, (status, headers)
    assert error["code"] == "method_not_allowed" and allowed in error["message"]


def test_models_retrieve_takes_an_id_with_a_slash(
    debug_server: LiveDaphne, customer: Customer
) -> None:
    # As the SDK sends it (percent-encoded) and as written.
    for path in (f"/v1/models/{SERVED}", "/v1/models/google%2Fflan-t5-base"):
        status, headers, body = call(debug_server, "GET", path, customer.token)
        assert status == 200, body
        assert json.loads(body) == {
            "id": SERVED,
            "object": "model",
            "created": 0,
            "owned_by": "inference-node",
        }
    status, headers, body = call(debug_server, "GET", "/v1/models/google/nope", customer.token)
    error = openai_error(headers, body)
    assert status == 404 and error["code"] == "model_not_found" and error["param"] == "model"
