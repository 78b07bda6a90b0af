"""The 429 of a key in a flood, answered before URL resolution, django-ninja and the rest of the
request cycle that an answer from memory does not need.

A key whose requests-per-minute refusal is in this process's denial cache (ratelimit/denycache.py)
was already refused without a Redis round trip, but from inside ninja's authentication
(inference.api.CompletionsAuth): each refusal still paid for Django's request cycle (a body
spool file, a task listening for the client's disconnect, the request_started and
request_finished receivers), URL resolution, ninja's operation lookup and its async auth. Here,
before all that, `CachedRefusals` sees from the ASGI scope alone (no query, no await) that the
key is refused in process, and `RefusalHandler` answers it: the key from this process's key
cache (tenants.auth.authenticate_cached), the refusal from the denial cache.

The answer is the very one ninja's path gives (console/tests/test_fastpath.py pins it byte for
byte, with its metrics and audit): refuse_if_denied audits the refusal and counts its metrics,
the same exception handler builds the body (console.api), and the same API middleware
(settings.API_MIDDLEWARE) adds the request id and the other headers and counts the response.
Whenever memory cannot say (an uncached key, a wrong secret, the key cache due to poll its
version, a refusal that ran out meanwhile) the request goes on unchanged: ApiHandler, ninja,
Redis, as before.
"""

from collections.abc import Awaitable, Callable
from functools import cache
from io import BytesIO
from typing import Any

from django.core.handlers.asgi import get_script_prefix
from django.http import HttpRequest, HttpResponseBase
from django.urls import ResolverMatch, resolve, set_script_prefix

from console.api import api
from console.handlers import ApiHandler
from core.clientaddr import client_ip
from core.errors import ApiError
from ratelimit import denycache
from ratelimit.limiter import refuse_if_denied
from tenants import tokens
from tenants.auth import authenticate_cached, token_from_headers
from tenants.keycache import KeyRecord, key_cache, touch_last_used

# The POST paths whose operations authenticate with inference.api.CompletionsAuth, so that a
# cached refusal is their answer right after authentication, whatever the body says. Add an
# operation's path here only if it does.
DENIABLE_PATHS: tuple[str, ...] = ("/v1/completions", "/v1/chat/completions", "/v1/responses")
_TOKEN_HEADERS = frozenset({"authorization", "x-api-key"})

Receive = Callable[[], Awaitable[dict]]


def _scope_token(scope: dict) -> str | None:
    """The token as ApiKeyAuth will read it, from the raw headers: repeated headers joined
    with "," and "_" taken for "-", as Django builds request.headers."""
    found: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        # Folded as Django folds names into META: case, and "-" and "_" alike.
        name = raw_name.decode("latin-1").lower().replace("_", "-")
        if name in _TOKEN_HEADERS:
            value = raw_value.decode("latin-1")
            found[name] = f"{found[name]},{value}" if name in found else value
    return token_from_headers(found.get("authorization"), found.get("x-api-key"))


def may_be_refused(scope: dict) -> bool:
    """Whether this request's key is refused in process, judged from the scope alone (cheap:
    no hash, no I/O). RefusalHandler confirms it on the request Django builds."""
    if scope.get("method") != "POST" or scope.get("path") not in DENIABLE_PATHS:
        return False
    if scope.get("root_path"):  # mounted under a prefix: Django's path is not scope["path"]
        return False
    token = _scope_token(scope)
    parsed = tokens.parse_token(token) if token else None
    # A peek, with none of a lookup's effects (refreshes, metrics): refused_key() looks it up.
    record = key_cache.last_known(parsed[0]) if parsed else None
    return record is not None and denycache.holds(record)


def refused_key(request: HttpRequest) -> KeyRecord | None:
    """The request's key when it is valid, cached here and refused in process; else None."""
    token = token_from_headers(
        request.headers.get("Authorization"), request.headers.get("X-API-Key")
    )
    record = authenticate_cached(token)
    return record if record is not None and denycache.holds(record) else None


@cache
def _route(path: str) -> ResolverMatch:
    # What Django's dispatch sets as request.resolver_match: the HTTP metrics label each
    # response with its view's name. A handful of fixed paths, so resolved once each.
    return resolve(path)


async def _drain(receive: Receive) -> bytes | None:
    """The whole request body, as Django's handler reads it first; None if the client left."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return bytes(body)


def _replay(body: bytes, receive: Receive) -> Receive:
    """receive(), with the body already read handed out first."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> dict:
        return pending.pop() if pending else await receive()

    return replayed


class RefusalHandler(ApiHandler):
    """ApiHandler for a request whose key is refused in process: the same API middleware
    around the refusal, without the parts of the cycle that only a view needs."""

    async def refuse(self, scope: dict, body: bytes, send: Any) -> bool:
        """Answer the request with its key's 429; False, having sent nothing, when the key
        turns out not to be refused in process (a wrong secret, an odd header)."""
        request, _ = self.create_request(scope, BytesIO(body))
        record = refused_key(request) if request is not None else None
        if request is None or record is None:
            return False
        # What ApiKeyAuth does for a valid key, then ninja (no middleware reads either).
        await touch_last_used(record)
        request.auth = record  # type: ignore[attr-defined]
        set_script_prefix(get_script_prefix(scope))
        response = await self.get_response_async(request)
        await self.send_response(response, send)
        return True

    async def _get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        """The middleware chain's innermost step: CompletionsAuth's refusal, as ninja answers
        it, instead of URL resolution and the view."""
        request.resolver_match = _route(request.path_info)
        try:
            refuse_if_denied(request.auth, client_ip(request))  # type: ignore[attr-defined]
        except ApiError as exc:
            return api.on_exception(request, exc)
        # Ran out since refused_key() said it held: within the denial cache's margin, so Redis
        # refuses it too. Django's own dispatch (private, absent from its stubs), then ninja.
        return await super()._get_response_async(request)  # type: ignore[misc]


class CachedRefusals:
    """ASGI: requests whose key is refused in process to RefusalHandler, the rest to `app`."""

    def __init__(self, app: Any, handler: RefusalHandler | None = None) -> None:
        self.app = app
        self.handler = handler or RefusalHandler()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not may_be_refused(scope):
            await self.app(scope, receive, send)
            return
        body = await _drain(receive)
        if body is None:
            return  # gone before its body arrived: Django's handler answers nothing either
        if not await self.handler.refuse(scope, body, send):
            await self.app(scope, _replay(body, receive), send)
