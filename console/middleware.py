"""The API paths' async middleware (settings.API_MIDDLEWARE): JSON errors, HTTP metrics and
request ids (every response carries x-request-id: the client's, if well-formed, or a new one)."""

import re
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from asgiref.sync import markcoroutinefunction
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse

from core.errors import InternalError, error_body

GetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id_for(request: HttpRequest) -> str:
    supplied = request.headers.get("X-Request-Id", "")
    return supplied if _VALID.match(supplied) else f"req_{uuid.uuid4().hex}"


class AsyncMiddleware:
    """Async-only middleware (ApiHandler refuses any other: no thread hop per request)."""

    async_capable = True
    sync_capable = False

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        raise NotImplementedError


class RequestIdMiddleware(AsyncMiddleware):
    """Sets request.request_id and the x-request-id response header."""

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        request.request_id = request_id_for(request)  # type: ignore[attr-defined]
        response = await self.get_response(request)
        # Set before the response starts, so streams carry it ahead of their first byte too.
        response["x-request-id"] = request.request_id  # type: ignore[attr-defined]
        return response


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


class ApiHttpMetricsMiddleware(AsyncMiddleware):
    """django-prometheus's HTTP metrics for the API paths (totals, by status, by view), without
    its sync middleware, which would cost a thread hop per request. Labels stay bounded: view
    names from the URL conf, methods from a fixed list."""

    def __init__(self, get_response: GetResponse) -> None:
        from django_prometheus.middleware import Metrics

        super().__init__(get_response)
        self.metrics = Metrics.get_instance()

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        self.metrics.requests_total.inc()
        # ALLOWED_HOSTS, as CommonMiddleware would check it.
        try:
            request.get_host()
        except DisallowedHost:
            message = "The Host header names a host this node does not serve."
            body = error_body(message, code="invalid_host")
            response: HttpResponseBase = JsonResponse(body, status=400)
        else:
            response = await self.get_response(request)
        self._count(request, response)
        # What SecurityMiddleware and CommonMiddleware would add to a JSON API response.
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        # Not streaming: only an HttpResponse holds its whole body.
        if isinstance(response, HttpResponse) and "Content-Length" not in response:
            response["Content-Length"] = str(len(response.content))
        return response

    def _count(self, request: HttpRequest, response: HttpResponseBase) -> None:
        match = getattr(request, "resolver_match", None)
        view = match.view_name if match is not None else "<unnamed view>"
        method = request.method if request.method in KNOWN_METHODS else "<invalid method>"
        transport = "https" if request.is_secure() else "http"
        self.metrics.requests_by_view_transport_method.labels(view, transport, method).inc()
        self.metrics.responses_total.inc()
        self.metrics.responses_by_status.labels(str(response.status_code)).inc()


def _error_for(request: HttpRequest, response: HttpResponseBase) -> dict:
    """The OpenAI error object standing in for a non-JSON error answer."""
    status, method, path = response.status_code, request.method, request.path
    if status == 404:
        # OpenAI's words for a path it does not serve (a trailing slash included).
        return error_body(f"Invalid URL ({method} {path})", code="unknown_url")
    if status == 405:
        allowed = response.get("Allow", "")
        return error_body(
            f"Invalid method for URL ({method} {path}); allowed: {allowed}.",
            code="method_not_allowed",
        )
    if status >= 500:
        return InternalError().body()
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:  # a status Python does not name
        phrase = "Error"
    return error_body(f"{phrase}.", code=phrase.lower().replace(" ", "_"))


class ApiJsonErrorsMiddleware(AsyncMiddleware):
    """Outermost on the API paths: every error answer is JSON in the OpenAI shape, whatever
    DEBUG says (Django's technical 404/500 pages, ninja's text/html 405, a disallowed Host)."""

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = await self.get_response(request)
        if response.status_code < 400 or response.get("Content-Type", "").startswith(
            "application/json"
        ):
            return response
        replaced = JsonResponse(_error_for(request, response), status=response.status_code)
        for name, value in response.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                replaced.headers.setdefault(name, value)
        # Outermost, so after ApiHttpMetricsMiddleware set the replaced body's length.
        replaced["Content-Length"] = str(len(replaced.content))
        return replaced
