"""Two Django ASGI handlers: a lean one for the API paths, the stock one for everything else.

Django's stock ASGI handler runs every request in its own ThreadSensitiveContext, so each
request that touches sync code (the request_started/finished signal receivers, every
MiddlewareMixin middleware) starts and joins a thread of its own: measured here at ~200
requests/s for /healthz where daphne alone does ~4,000. The API paths need none of that: their
views, auth and middleware are async, and their few database reads (a key-cache miss) may share
asgiref's one thread for sync code. So /v1/, /healthz and /readyz go through `ApiHandler`: the
async middleware of API_MIDDLEWARE only, and no per-request thread context. The console and the
admin keep the stock handler and the full middleware stack (sessions, CSRF, auth, messages).
"""

from typing import Any

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response
from django.utils.module_loading import import_string

API_PREFIXES = ("/v1/", "/healthz", "/readyz")


class ApiHandler(ASGIHandler):
    """Django for the API: settings.API_MIDDLEWARE (async only), no per-request thread pool."""

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list = []
        self._template_response_middleware: list = []
        self._exception_middleware: list = []
        handler = convert_exception_to_response(self._get_response_async)
        for path in reversed(settings.API_MIDDLEWARE):
            middleware = import_string(path)
            # Async-only middleware (checked): nothing here may hop to a thread per request.
            if not getattr(middleware, "async_capable", False):
                raise ValueError(f"API_MIDDLEWARE entries must be async-capable: {path}")
            handler = convert_exception_to_response(middleware(handler))
        self._middleware_chain = handler

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        # No ThreadSensitiveContext: sync work shares asgiref's single thread instead of
        # starting one per request (see the module docstring).
        await self.handle(scope, receive, send)


class PathDispatcher:
    """ASGI: API paths to the lean handler, the rest to the stock one."""

    def __init__(self, api: Any, rest: Any) -> None:
        self.api, self.rest = api, rest

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        target = self.api if path.startswith(API_PREFIXES) else self.rest
        await target(scope, receive, send)
