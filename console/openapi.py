"""What the OpenAPI document must say that django-ninja cannot derive from the views.

ninja describes each operation by its one response schema; the node also answers the completion
routes with Server-Sent Events, answers errors in one OpenAI shape with headers that matter to
clients (Retry-After, x-ratelimit-*, x-should-retry), and accepts a key in two headers. This
module adds those to the generated document, once, in `complete_schema()` (console/api.py).
"""

from typing import Any

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "OpenAI's error shape; every error answer under /v1 has it.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "examples": ["invalid_request_error"]},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"], "examples": ["rate_limit_exceeded"]},
            },
        }
    },
}


def _header(description: str, example: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}, "example": example}


RATE_LIMIT_HEADERS = {
    f"x-ratelimit-{kind}-{unit}": _header(f"{what} ({unit} of the binding limit)", example)
    for unit in ("requests", "tokens")
    for kind, what, example in (
        ("limit", "The limit", "600"),
        ("remaining", "What is left of it", "599"),
        ("reset", "When it is whole again, as a duration", "100ms"),
    )
}
HEADERS: dict[str, Any] = {
    **RATE_LIMIT_HEADERS,
    "Retry-After": _header("Seconds to wait before sending the request again.", "1"),
    "retry-after-ms": _header("The same wait in milliseconds (the openai SDKs read it).", "850"),
    "x-should-retry": _header(
        "`false` when sending the same request again cannot succeed (a spent quota, a model "
        "that failed to load): the openai SDKs then do not retry.",
        "false",
    ),
    "x-request-id": _header("The request's id (the client's own, if well-formed).", "req_1"),
}


def _ref_headers(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _error(description: str, *headers: str) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    response = {"description": description, "content": content}
    response["headers"] = _ref_headers("x-request-id", *headers)
    return response


ERRORS: dict[str, dict[str, Any]] = {
    "400": _error("Invalid request: bad JSON, values, or what this model does not support."),
    "401": _error("Invalid or missing API key (`invalid_api_key`)."),
    "403": _error(
        "The key lacks the scope (`insufficient_scope`), or its tenant is suspended "
        "(`tenant_suspended`)."
    ),
    "404": _error("A model this node does not serve (`model_not_found`)."),
    "413": _error("A body over the size cap, or a prompt too long for this node."),
    "429": _error(
        "A rate limit (`rate_limit_exceeded`) or a spent quota (`insufficient_quota`, with "
        "`x-should-retry: false`).",
        "Retry-After",
        "retry-after-ms",
        "x-should-retry",
        *RATE_LIMIT_HEADERS,
    ),
    "500": _error("A fault of the node's own, or of the model on this request alone."),
    "503": _error(
        "Overloaded or the model still loading (retry after `Retry-After`), or the model "
        "failed to load (`x-should-retry: false`).",
        "Retry-After",
        "x-should-retry",
    ),
}
# Every keyed route can be refused for its key (503 when keys cannot be checked), and a flood
# of failures meets 429.
KEYED_ERRORS = ("401", "403", "429", "500", "503")
# What a completion request adds: its body and its model.
BODY_ERRORS = ("400", "404", "413")

SECURITY_SCHEMES = {
    "BearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <token>`, the node key as the openai SDKs send it.",
    },
    "ApiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "`X-API-Key: <token>`: the same key in its own header.",
    },
}
# Either header is enough: a list of alternatives, each an object of schemes all required.
SECURITY: list[dict[str, list[str]]] = [{"BearerAuth": []}, {"ApiKeyHeader": []}]

EVENT_STREAM = {
    "schema": {
        "type": "string",
        "description": "With `stream: true`: Server-Sent Events, each `data: <JSON chunk>` "
        "followed by a blank line, in OpenAI's chunk shapes (`text_completion` or "
        "`chat.completion.chunk`; each content chunk also carries `x_completion_tokens`); a "
        "last `usage` chunk when `stream_options.include_usage` is set; an error after the "
        'stream began arrives as `data: {"error": ...}`; the stream ends with `data: [DONE]`.',
        "examples": [
            'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m",'
            '"choices":[{"index":0,"text":"Hi","logprobs":null,"finish_reason":null}],'
            '"x_completion_tokens":1}\n\ndata: [DONE]\n\n'
        ],
    }
}

MODEL_DESCRIPTION = (
    "The served model's id, as GET /v1/models lists it; any other is refused with 404 "
    "`model_not_found`."
)


def complete_schema(schema: dict[str, Any], served_model: str) -> dict[str, Any]:
    """The generated document with security schemes, errors, headers and streams added."""
    components = schema.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    components["headers"] = HEADERS
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    for component in schemas.values():
        _describe_model(component, served_model)
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            _complete_operation(operation, schemas)
    return schema


def _describe_model(component: dict[str, Any], served_model: str) -> None:
    # An example, not an enum: the schema must not refuse what the server accepts (the model's
    # other names, adapters), nor promise a refusal the server does not make.
    model = component.get("properties", {}).get("model")
    if model is not None:
        model.pop("enum", None)
        model["description"] = MODEL_DESCRIPTION
        model["examples"] = [served_model]


def _complete_operation(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    if "security" not in operation:
        return
    operation["security"] = SECURITY
    # ninja keys responses by int status; JSON has only strings, so they become one kind here.
    responses = {str(code): value for code, value in operation.get("responses", {}).items()}
    operation["responses"] = responses
    codes = KEYED_ERRORS + (BODY_ERRORS if "requestBody" in operation else ())
    if any(parameter.get("in") == "path" for parameter in operation.get("parameters", [])):
        codes += ("404",)  # GET /v1/models/{model}: another model
    for code in sorted(set(codes)):
        responses.setdefault(code, ERRORS[code])
    ok = responses.get("200")
    if ok is None:
        return
    ok["headers"] = _ref_headers("x-request-id")
    if "requestBody" in operation:
        ok["headers"] = _ref_headers("x-request-id", *RATE_LIMIT_HEADERS)
        if _streams(operation, schemas):
            ok.setdefault("content", {})["text/event-stream"] = EVENT_STREAM


def _streams(operation: dict[str, Any], schemas: dict[str, Any]) -> bool:
    """Whether the operation's JSON body has a `stream` flag (the completion routes)."""
    body = operation["requestBody"].get("content", {}).get("application/json", {})
    ref = body.get("schema", {}).get("$ref", "")
    component = schemas.get(ref.rsplit("/", 1)[-1], {})
    return "stream" in component.get("properties", {})
