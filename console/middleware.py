"""Request ids: every response carries x-request-id (the client's, if well-formed, or a new one)."""

import re
import uuid
from collections.abc import Awaitable, Callable

from asgiref.sync import markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id_for(request: HttpRequest) -> str:
    supplied = request.headers.get("X-Request-Id", "")
    return supplied if _VALID.match(supplied) else f"req_{uuid.uuid4().hex}"


class RequestIdMiddleware:
    """Async middleware: sets request.request_id and the x-request-id response header."""

    async_capable = True
    sync_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]]):
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        request.request_id = request_id_for(request)  # type: ignore[attr-defined]
        response = await self.get_response(request)
        # Set before the response starts, so streams carry it ahead of their first byte too.
        response["x-request-id"] = request.request_id  # type: ignore[attr-defined]
        return response


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


class ApiHttpMetricsMiddleware:
    """django-prometheus's HTTP metrics for the API paths (totals, by status, by view), without
    its sync middleware, which would cost a thread hop per request. Labels stay bounded: view
    names from the URL conf, methods from a fixed list."""

    async_capable = True
    sync_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]]):
        from django_prometheus.middleware import Metrics

        self.get_response = get_response
        self.metrics = Metrics.get_instance()
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        self.metrics.requests_total.inc()
        # ALLOWED_HOSTS, as CommonMiddleware would check it (DisallowedHost becomes a 400).
        request.get_host()
        response = await self.get_response(request)
        self._count(request, response)
        # What SecurityMiddleware and CommonMiddleware would add to a JSON API response.
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if not response.streaming and "Content-Length" not in response:
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
