"""What the official openai SDK's retry logic meets on the live node: a 429 says when to retry
(and is retried), a 503 no retry can fix says so (and is not), the status line names 429 as
HTTP does; and only served model ids are models, never a server path."""

import json
import re
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from conftest import database_url_for_current_test_db
from tests.e2e.api.conftest import Customer, model_name
from tests.e2e.live_daphne import LiveDaphne, start_daphne
from tests.e2e.servers import http_get, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

REFUSED_FOR_THE_MODEL = re.compile(
    r'^api_rejections_total\{endpoint="completions",reason="model_unavailable"\} (\S+)$', re.M
)


def sdk(server: LiveDaphne, token: str, max_retries: int) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=token, max_retries=max_retries, timeout=60
    )


@pytest.fixture
def throttled_token(transactional_db, api_server) -> str:
    """A key of a tenant allowed 60 requests a minute (one a second, the least burst)."""
    from tenants.services import api_key_issue, tenant_create

    tenant = tenant_create(
        slug="slowpoke", limits={"rpm": 60, "tpm": 1_000_000, "burst_percent": 1}, actor="test"
    )
    return api_key_issue(tenant=tenant, name="e2e", actor="test").token


def raw_post(url: str, path: str, token: str, payload: dict) -> tuple[bytes, bytes]:
    """One request over a plain socket: the status line exactly as the server wrote it, and
    the rest of the answer."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(payload).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    raw = b""
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(request)
        while data := sock.recv(65536):
            raw += data
    status_line, _, rest = raw.partition(b"\r\n")
    return status_line, rest


def test_a_429_status_line_reads_too_many_requests(api_server, throttled_token: str) -> None:
    payload = {"model": model_name(api_server), "prompt": "Hi", "max_tokens": 1}
    lines = []
    for _ in range(10):  # the burst lets the first one or two through
        status_line, rest = raw_post(api_server.url, "/v1/completions", throttled_token, payload)
        lines.append(status_line)
        if status_line.startswith(b"HTTP/1.1 429"):
            assert b"\r\nretry-after-ms: " in rest.lower()
            break
    assert lines[-1] == b"HTTP/1.1 429 Too Many Requests", lines


def test_a_429_with_retry_after_ms_is_retried_by_the_sdk(api_server, throttled_token) -> None:
    model = model_name(api_server)
    once = sdk(api_server, throttled_token, max_retries=0)
    refused = None
    for _ in range(10):  # spend the burst until the limit refuses
        try:
            once.completions.create(model=model, prompt="Hi", max_tokens=1)
        except openai.RateLimitError as exc:
            refused = exc
            break
    assert refused is not None
    assert 0 < int(refused.response.headers["retry-after-ms"]) <= 60_000
    assert "x-should-retry" not in refused.response.headers
    # Still refused right now: the SDK waits retry-after-ms and its retry goes through.
    raw = sdk(api_server, throttled_token, max_retries=2).completions.with_raw_response.create(
        model=model, prompt="Hi", max_tokens=1
    )
    assert raw.retries_taken >= 1
    assert raw.parse().choices[0].finish_reason in ("stop", "length")


@pytest.fixture
def unloadable_server(
    api_server: LiveDaphne, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveDaphne]:
    """A second daphne on the same database whose model cannot load (its folder is missing);
    api_server has set the key pepper this process issues keys under."""
    from django.conf import settings

    env = {
        "SECRET_KEY": secrets.token_urlsafe(48),
        "API_KEY_PEPPER": settings.API_KEY_PEPPER,
        "DATABASE_URL": database_url_for_current_test_db(),
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "DEBUG": "false",
        "INFERENCE_MODEL": "/nonexistent/unloadable-model",
        "INFERENCE_ALLOW_DOWNLOAD": "false",
        "INFERENCE_QUANTIZATION": "none",
        "INFERENCE_THREADS": "1",
        "RATELIMIT_FLUSH_SECONDS": "0",
        "RATELIMIT_REDIS_TIMEOUT_MS": "1000",
    }
    server = start_daphne(env, tmp_path_factory.mktemp("unloadable") / "daphne.log")
    try:

        def failed() -> bool:
            status, body = http_get(f"{server.url}/readyz")
            return status == 503 and json.loads(body)["checks"]["model"]["state"] == "failed"

        wait_until(failed, "the model's load to fail", timeout=120)
        yield server
    finally:
        server.stop()


def refusals_for_the_model(server: LiveDaphne) -> float:
    """How many completion requests the server has refused as model_unavailable."""
    status, body = http_get(f"{server.url}/metrics")
    assert status == 200
    found = REFUSED_FOR_THE_MODEL.search(body.decode())
    return float(found.group(1)) if found else 0.0


def test_a_503_for_a_model_that_failed_to_load_is_not_retried(
    unloadable_server: LiveDaphne, customer: Customer
) -> None:
    client = sdk(unloadable_server, customer.token, max_retries=2)
    assert [m.id for m in client.models.list().data] == ["unloadable-model"]
    before = refusals_for_the_model(unloadable_server)
    with pytest.raises(openai.InternalServerError) as caught:
        client.completions.create(model="unloadable-model", prompt="Hi", max_tokens=1)
    assert caught.value.status_code == 503
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.code == "model_unavailable"
    # One request reached the server: max_retries=2 sent no second one.
    assert refusals_for_the_model(unloadable_server) - before == 1


def test_a_model_path_is_refused_and_never_echoed(
    api_server: LiveDaphne, customer: Customer, tiny_model_dir: Path
) -> None:
    client = sdk(api_server, customer.token, max_retries=0)
    served = model_name(api_server)
    for path in (str(tiny_model_dir), f"{tiny_model_dir}/", "../" + tiny_model_dir.name):
        with pytest.raises(openai.NotFoundError) as caught:
            client.completions.create(model=path, prompt="Hi", max_tokens=1)
        assert caught.value.code == "model_not_found", path
        assert caught.value.body["param"] == "model"  # type: ignore[index]
    answer = client.completions.create(model=served, prompt="Hi", max_tokens=1)
    assert answer.model == served
    chat = client.chat.completions.create(
        model=served, messages=[{"role": "user", "content": "Hi"}], max_tokens=1
    )
    assert chat.model == served
