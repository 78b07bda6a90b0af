"""The one NinjaAPI, mounted at /v1, and the one place errors become OpenAI-shaped bodies."""

import logging
import sys
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from console.openapi import complete_schema
from core.errors import (
    ApiError,
    AuthenticationFailed,
    InternalError,
    InvalidRequest,
    PayloadTooLarge,
    error_body,
)
from core.jsonbody import NodeParser
from inference.api import router as inference_router
from inference.engines import served_model_id
from inference.metrics import API_REJECTIONS, endpoint_of
from ratelimit.errorcount import count_error_soon, counts_as_error
from tenants.keycache import KeyRecord

logger = logging.getLogger(__name__)


class NodeAPI(NinjaAPI):
    """The NinjaAPI whose schema also says what ninja cannot derive (console/openapi.py):
    event streams, error answers and their headers, both key headers, the served model."""

    def get_openapi_schema(self, **kwargs: Any) -> Any:
        return complete_schema(super().get_openapi_schema(**kwargs), served_model_id())


def complete_reason_phrases() -> None:
    """Daphne writes the status line with Twisted's reason phrases, whose table lacks 429 (and
    422, 431...): "429 Unknown Status". ASGI carries no phrase, so the table gets Python's."""
    # Only where daphne runs: it imported Twisted's http module before the application.
    http = sys.modules.get("twisted.web.http")
    if http is None:
        return
    for status in HTTPStatus:
        http.RESPONSES.setdefault(status.value, status.phrase.encode("ascii"))


# At import: every answer with such a status (429s above all) is made by this module.
complete_reason_phrases()


api = NodeAPI(
    title="Inference node API",
    version="1",
    description="OpenAI-compatible completions served by the node's own model, per-tenant keys "
    "and rate limits. Authenticate with `Authorization: Bearer <token>` or `X-API-Key`.",
    urls_namespace="v1",
    parser=NodeParser(),
    docs_url="/docs",
    openapi_url="/openapi.json",
)
api.add_router("", inference_router)


def _count_error(request: HttpRequest, status: int) -> None:
    # request.auth is set only once a key authenticated (ninja checks auth before the body).
    record = getattr(request, "auth", None)
    if isinstance(record, KeyRecord) and counts_as_error(status):
        count_error_soon(record)


def error_response(request: HttpRequest, exc: ApiError) -> HttpResponse:
    API_REJECTIONS.labels(endpoint_of(request.path), exc.code or "error").inc()
    _count_error(request, exc.status)
    response = api.create_response(request, exc.body(), status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return response


@api.exception_handler(ApiError)
def on_api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    return error_response(request, exc)


@api.exception_handler(AuthenticationError)
def on_authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(request, AuthenticationFailed())


# Errors about the body as a whole (empty, not JSON, null, a list): no parameter to name.
BODY_NOT_AN_OBJECT = frozenset(
    {"missing", "json_invalid", "model_attributes_type", "dict_type", "model_type"}
)


def _describe_validation(errors: list[dict]) -> tuple[str, str | None]:
    first = errors[0] if errors else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "payload")]
    param = ".".join(location) or None
    if first.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if not param and first.get("type") in BODY_NOT_AN_OBJECT:
        return "The request body must be a JSON object.", None
    if first.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    message = first.get("msg", "Invalid request.")
    return (f"Invalid value for '{param}': {message}" if param else message), param


@api.exception_handler(ValidationError)
def on_validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    message, param = _describe_validation(list(exc.errors))
    return error_response(request, InvalidRequest(message, param=param))


@api.exception_handler(RequestDataTooBig)
def on_body_too_large(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    message = f"The request body is larger than this node accepts ({limit} bytes)."
    return error_response(request, PayloadTooLarge(message))


@api.exception_handler(HttpError)
def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    # ninja wraps what its parser raised (core/jsonbody.py) as 400 "Cannot parse request body".
    if isinstance(exc.__cause__, ApiError):
        return error_response(request, exc.__cause__)
    _count_error(request, exc.status_code)
    return api.create_response(request, error_body(str(exc), code=None), status=exc.status_code)


@api.exception_handler(Exception)
def on_unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    # The client gets no internals; the log gets the traceback (never request headers).
    logger.exception("unhandled error in %s %s", request.method, request.path)
    _count_error(request, 500)
    return api.create_response(request, InternalError().body(), status=500)
