"""The OpenAPI document at /v1/openapi.json says what clients meet: event streams, error
answers with their headers, both key headers, and no model enum the server does not enforce."""

import json
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import AsyncClient
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from console.api import complete_reason_phrases

COMPLETION_ROUTES = ("/v1/completions", "/v1/chat/completions")


@pytest.fixture
async def document() -> dict[str, Any]:
    response = await AsyncClient().get("/v1/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    return json.loads(response.content)


def test_it_is_a_valid_openapi_document(document) -> None:
    assert document["openapi"].startswith("3.1")
    errors = [str(error) for error in OPENAPI_31_VALIDATOR.iter_errors(document)]
    assert errors == []


def test_the_completion_routes_describe_their_event_streams(document) -> None:
    for route in COMPLETION_ROUTES:
        content = document["paths"][route]["post"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/event-stream"}, route
        assert "[DONE]" in content["text/event-stream"]["schema"]["description"]
    usage = document["paths"]["/v1/usage"]["get"]["responses"]["200"]["content"]
    assert "text/event-stream" not in usage


def test_a_429_lists_its_retry_and_rate_limit_headers(document) -> None:
    headers = document["components"]["headers"]
    for route in COMPLETION_ROUTES:
        responses = document["paths"][route]["post"]["responses"]
        refused = responses["429"]
        assert refused["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
        listed = set(refused["headers"])
        assert {"Retry-After", "retry-after-ms", "x-should-retry"} <= listed
        for unit in ("requests", "tokens"):
            for kind in ("limit", "remaining", "reset"):
                assert f"x-ratelimit-{kind}-{unit}" in listed
        assert all(ref["$ref"].split("/")[-1] in headers for ref in refused["headers"].values())
        assert {"Retry-After", "x-should-retry"} <= set(responses["503"]["headers"])
        assert "x-ratelimit-remaining-tokens" in responses["200"]["headers"]
        assert {"400", "401", "403", "404", "413", "500"} <= set(responses)
    error = document["components"]["schemas"]["Error"]["properties"]["error"]
    assert error["required"] == ["message", "type", "param", "code"]


def test_both_key_headers_are_security_schemes(document) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["BearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["BearerAuth"]["description"],
    }
    assert schemes["ApiKeyHeader"]["type"] == "apiKey"
    assert schemes["ApiKeyHeader"]["in"] == "header"
    assert schemes["ApiKeyHeader"]["name"] == "X-API-Key"
    operations = [op for item in document["paths"].values() for op in item.values()]
    assert operations
    for operation in operations:
        # Alternatives: either header alone is enough.
        assert operation["security"] == [{"BearerAuth": []}, {"ApiKeyHeader": []}]


def test_the_model_is_not_pinned_to_an_enum(document) -> None:
    models = [
        component["properties"]["model"]
        for component in document["components"]["schemas"].values()
        if "model" in component.get("properties", {})
    ]
    assert models
    for model in models:
        assert "enum" not in model and "const" not in model
        assert model["examples"]


def test_twisted_gets_the_reason_phrases_it_lacks(monkeypatch) -> None:
    table = {200: b"OK"}
    monkeypatch.setitem(sys.modules, "twisted.web.http", SimpleNamespace(RESPONSES=table))
    complete_reason_phrases()
    assert table[429] == b"Too Many Requests"
    assert table[200] == b"OK"  # what Twisted had is kept
