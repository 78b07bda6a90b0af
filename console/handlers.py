# Copies private Django code (ASGIHandler.__call__/handle, BaseHandler.load_middleware/
# get_response_async): tests/test_upstream_mirrors.py fails when the installed release changes it.
"""Two Django ASGI handlers: a lean one for the API paths, the stock one for everything else.

Django's stock ASGI handler runs every request in its own ThreadSensitiveContext, so each
request that touches sync code (the request_started/finished signal receivers, every
MiddlewareMixin middleware) starts and joins a thread of its own: measured here at ~200
requests/s for /healthz where daphne alone does ~4,000. The API paths need none of that: their
views, auth and middleware are async, and their few database reads (a key-cache miss) may share
asgiref's one thread for sync code. So /v1/, /healthz and /readyz (when it reaches Django at all:
console/readiness.py answers it before) go through `ApiHandler`: the
async middleware of API_MIDDLEWARE only, and no per-request thread context. The console and the
admin keep the stock handler and the full middleware stack (sessions, CSRF, auth, messages).

The stock handler also hops to a thread twice per request for the request_started and
request_finished receivers (reset_queries, close_old_connections, close_caches,
reset_urlconf), and a third time to log every 4xx. Those receivers only touch what the calling
thread opened, and the event loop's thread never opens a database connection, so ApiHandler
runs them in the loop (microseconds, no hop), and logs 5xx only: a flood of 429s must not
flood the log. Under a swarm on a small box each hop was a wake-up to wait for.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponseBase
from django.urls import set_script_prefix, set_urlconf
from django.utils.log import log_response
from django.utils.module_loading import import_string

API_PREFIXES = ("/v1/", "/healthz", "/readyz")
AsyncGetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


class ApiHandler(ASGIHandler):
    """Django for the API: settings.API_MIDDLEWARE (async only), no per-request thread pool."""

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list = []
        self._template_response_middleware: list = []
        self._exception_middleware: list = []
        # Private in Django (pinned by tests/test_upstream_mirrors.py), so absent from its stubs.
        handler = convert_exception_to_response(self._get_response_async)  # type: ignore[attr-defined]
        for path in reversed(settings.API_MIDDLEWARE):
            middleware = import_string(path)
            # Async-only middleware (checked): nothing here may hop to a thread per request.
            if not getattr(middleware, "async_capable", False):
                raise ValueError(f"API_MIDDLEWARE entries must be async-capable: {path}")
            handler = convert_exception_to_response(middleware(handler))
        # convert_exception_to_response wraps a coroutine function in one (all of these are),
        # which its stub's sync-or-async return type cannot say.
        self._middleware_chain: AsyncGetResponse = handler  # type: ignore[assignment]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        # No ThreadSensitiveContext: sync work shares asgiref's single thread instead of
        # starting one per request (see the module docstring).
        await self.handle(scope, receive, send)

    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        """Django's ASGIHandler.handle, with the signal receivers run in the loop."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            # create_request returns an error response exactly when it returns no request.
            assert error_response is not None
            body_file.close()
            await self.send_response(error_response, send)
            error_response.close()
            return
        response = await self._respond_unless_disconnected(request, receive, send)
        if response is None:
            signals.request_finished.send(sender=self.__class__)
        else:
            response.close()  # resource closers, then request_finished
        body_file.close()

    async def _respond_unless_disconnected(
        self, request: HttpRequest, receive: Any, send: Any
    ) -> HttpResponseBase | None:
        """Answer, while listening for the client's disconnect (which cancels the view)."""

        async def respond() -> HttpResponseBase:
            response = await self.run_get_response(request)
            with contextlib.suppress(asyncio.CancelledError):  # the client left mid-send
                await self.send_response(response, send)
            return response

        tasks = (
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(respond()),
        )
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                with contextlib.suppress(RequestAborted):  # the disconnect we listened for
                    task.result()
            else:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            return tasks[1].result()
        except asyncio.CancelledError:
            return None

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        set_urlconf(settings.ROOT_URLCONF)
        response = await self._middleware_chain(request)
        # Private (pinned by tests/test_upstream_mirrors.py), so absent from Django's stubs.
        response._resource_closers.append(request.close)  # type: ignore[attr-defined]
        if response.status_code >= 500:
            log_response(
                "%s: %s",
                response.reason_phrase,
                request.path,
                # Django logs any response (streaming ones too); its stub asks for HttpResponse.
                response=response,  # type: ignore[arg-type]
                request=request,
            )
        return response


class PathDispatcher:
    """ASGI: API paths to the lean handler, the rest to the stock one."""

    def __init__(self, api: Any, rest: Any) -> None:
        self.api, self.rest = api, rest

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        target = self.api if path == "/v1" or path.startswith(API_PREFIXES) else self.rest
        await target(scope, receive, send)
