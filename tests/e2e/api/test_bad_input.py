"""Bad input of every kind gets a 4xx in the OpenAI error shape, never a 500; and a
property-based run over the published OpenAPI schema (schemathesis) finds no server error."""

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.api.conftest import Customer, model_name

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def post(server, path: str, body: bytes, token: str | None, **headers: str):
    headers = {"Content-Type": "application/json", **headers}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{server.url}{path}", data=body, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def cases(model: str) -> list[tuple[str, object, int, str | None]]:
    """(path, body, expected status, expected param) for one kind of bad input each."""
    prompt = {"model": model, "prompt": "hi"}
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    c, cc = "/v1/completions", "/v1/chat/completions"
    return [
        (c, b"{not json", 400, None),
        (c, b"[1, 2, 3]", 400, None),
        (c, {"prompt": "hi"}, 400, "model"),
        (c, {"model": model}, 400, "prompt"),
        (c, {**prompt, "max_tokens": 0}, 400, "max_tokens"),
        (c, {**prompt, "max_tokens": 10**9}, 400, "max_tokens"),
        (c, {**prompt, "max_tokens": "many"}, 400, "max_tokens"),
        (c, {**prompt, "temperature": 3}, 400, "temperature"),
        (c, {**prompt, "top_p": 0}, 400, "top_p"),
        (c, {**prompt, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        (c, {**prompt, "n": 21}, 400, "n"),
        (c, {**prompt, "best_of": 3}, 400, "best_of"),
        (c, {**prompt, "echo": True}, 400, "echo"),
        (c, {**prompt, "logprobs": 6}, 400, "logprobs"),
        (c, {**prompt, "presence_penalty": 1}, 400, "presence_penalty"),
        (c, {**prompt, "logit_bias": {"50256": -100}}, 400, "logit_bias"),
        (c, {**prompt, "stream_options": {"include_usage": True}}, 400, "stream_options"),
        (c, {**prompt, "prompt": ["one"] * 21}, 400, "prompt"),
        (c, {**prompt, "prompt": [1, 10**6]}, 400, "prompt"),
        (c, {**prompt, "colour": "blue"}, 400, "colour"),
        (c, {**prompt, "model": "gpt-4"}, 404, "model"),
        (c, {**prompt, "prompt": "word " * 5000}, 400, "prompt"),
        (c, {**prompt, "prompt": "x" * 20000}, 400, "prompt"),
        (cc, {"model": model, "messages": []}, 400, "messages"),
        (cc, {**chat, "messages": [{"role": "wizard", "content": "hi"}]}, 400, None),
        (cc, {**chat, "messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages"),
        (cc, {**chat, "tools": [{"type": "function"}]}, 400, "tools"),
        (cc, {**chat, "response_format": {"type": "json_object"}}, 400, "response_format"),
        (cc, {**chat, "max_tokens": 5, "max_completion_tokens": 5}, 400, None),
        # A lone surrogate escape decodes to a str nothing downstream accepts; deep nesting
        # raises RecursionError in the parser: both were 500s.
        (c, {**prompt, "prompt": "a\ud800b"}, 400, None),
        (cc, {**chat, "messages": [{"role": "user", "content": "a\udfffb"}]}, 400, None),
        (c, b'{"prompt": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", 400, None),
        (c, {**prompt, "max_tokens": True}, 400, "max_tokens"),
        (c, b"", 400, None),
    ]


def test_every_kind_of_bad_input_gets_a_clear_4xx(api_server, customer: Customer) -> None:
    for path, body, status, param in cases(model_name(api_server)):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        got, answer = post(api_server, path, raw, customer.token)
        assert got == status, (path, body, answer)
        error = answer["error"]
        assert set(error) == {"message", "type", "param", "code"}, answer
        assert error["message"] and "Traceback" not in error["message"]
        if param is not None:
            assert error["param"] == param, (body, error)


def test_a_body_over_the_limit_gets_413(api_server, customer: Customer) -> None:
    body = json.dumps({"model": "x", "prompt": "y" * (2 * 1024 * 1024)}).encode()
    status, answer = post(api_server, "/v1/completions", body, customer.token)
    assert status == 413 and answer["error"]["code"] == "request_too_large"


def test_unknown_api_paths_get_a_json_404(api_server, customer: Customer) -> None:
    status, answer = post(api_server, "/v1/embeddings", b"{}", customer.token)
    assert status == 404 and answer["error"]["code"] == "unknown_url"


def test_schemathesis_finds_no_server_error(api_server, customer: Customer) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis (st) is part of the test extra"
    result = subprocess.run(  # noqa: S603 - our own test tool
        [
            st,
            "run",
            f"{api_server.url}/v1/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--generation-deterministic",
            "--request-timeout",
            "60",
            "--header",
            f"Authorization: Bearer {customer.token}",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
