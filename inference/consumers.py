"""The WebSocket API at /ws/v1/completions.

Protocol (every frame JSON, every answer carrying the client's `id`):
- auth: `Authorization: Bearer` / `X-API-Key` on the upgrade request, or a first message
  `{"type": "auth", "api_key": ...}`; a bad key gets an `error` frame and close code 4401;
- `{"type": "completion.create", "id", "prompt", "max_tokens", "temperature", "top_p", "stop",
  "seed", "model"?}` → `completion.started` (with the rate-limit state), `completion.delta`
  (`text`, `completion_tokens` so far), `completion.done` (`usage`, `finish_reason`), or
  `error` (the API's error object);
- `{"type": "chat.completion.create", "id", "messages", ...}`: a chat request, its messages
  rendered into one prompt as on /v1/chat/completions, with that route's parameters; it is
  answered by `chat.completion.started`, `chat.completion.delta` (`delta: {"content"}`,
  `completion_tokens`) and `chat.completion.done`, or `error`;
- `{"type": "completion.cancel", "id"}` (or `chat.completion.cancel`) stops one request of
  either kind (its done frame says `cancelled` and bills what was sent);
- several requests run at once (at most WS_MAX_CONCURRENT); a bad message gets an `error`
  frame and the socket stays open; every running request is settled when the socket drops;
- every request uses the key as it is now (new limits and quotas included), and the key is
  checked again every KEY_RECHECK_SECONDS: once it is revoked, expired or its tenant suspended,
  running requests stop, the socket gets an `error` frame (`invalid_api_key`, or
  `tenant_suspended`) and close code 4401, within about a second of the change;
- a socket lives at most WS_MAX_LIFETIME_SECONDS (then an `error` frame, code
  `connection_expired`, and close code 4000: open a new one).
"""

import asyncio
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.utils import timezone
from pydantic import ValidationError

from core import jsonbody
from core.clientaddr import client_ip
from core.errors import (
    ApiError,
    AuthenticationFailed,
    ConnectionExpired,
    InternalError,
    InvalidRequest,
    RateLimited,
    TenantSuspended,
)
from engine.runtime import EngineError
from inference import metrics
from inference.delivery import Delivery
from inference.engines import api_error
from inference.prompting import render_chat
from inference.schemas import (
    GenerationParams,
    WsAuth,
    WsCancel,
    WsChatCompletionCreate,
    WsCompletionCreate,
)
from inference.services import Run, plan_completion
from inference.sse import usage_of
from ratelimit.errorcount import count_error, counts_as_error
from tenants.auth import authenticate_token, token_from_headers
from tenants.keycache import KeyRecord, key_cache

logger = logging.getLogger(__name__)

CLOSE_AUTH_FAILED = 4401
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_LIFETIME = 4000  # WS_MAX_LIFETIME_SECONDS reached: open a new socket
# Keys cannot be checked right now: 4000 + the HTTP status, as 4401 (Postgres away: 4503; the
# address's failed authentications spent: 4429). Not RFC 6455's 1013 "try again later": daphne
# (autobahn) lets an application close only with 1000 or 3000-4999, and raises on anything
# else, so the client got a dropped socket instead of the close.
CLOSE_UNAVAILABLE = 4503
CLOSE_TOO_MANY_FAILURES = 4429
# How often a socket re-checks its key while it is open. Most checks cost nothing (the cached
# record is the one already checked: no hash, no await); with the key cache's 0.5-s version
# poll, a suspension or revocation reaches an open socket within about 0.75 s.
KEY_RECHECK_SECONDS = 0.25
KEY_NOT_ACCEPTED = "This API key is no longer accepted."


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


@dataclass(frozen=True)
class Frames:
    """How one kind of request names its answers: `completion.*` frames carry `text`, the
    `chat.completion.*` frames a chunk-like `delta` (OpenAI's chat stream spells it so)."""

    kind: str  # "completion" | "chat.completion"

    def started(self, request_id: str, ratelimit: dict[str, str]) -> dict[str, Any]:
        return {"type": f"{self.kind}.started", "id": request_id, "ratelimit": ratelimit}

    def delta(self, request_id: str, text: str, completion_tokens: int) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": f"{self.kind}.delta", "id": request_id}
        if self.kind == "chat.completion":
            frame["delta"] = {"content": text}
        else:
            frame["text"] = text
        frame["completion_tokens"] = completion_tokens
        return frame

    def done(self, request_id: str, finish_reason: str, usage: dict[str, int]) -> dict[str, Any]:
        return {
            "type": f"{self.kind}.done",
            "id": request_id,
            "finish_reason": finish_reason,
            "usage": usage,
        }


COMPLETION_FRAMES = Frames("completion")
CHAT_FRAMES = Frames("chat.completion")
CREATE_TYPES = ("completion.create", "chat.completion.create")
CANCEL_TYPES = ("completion.cancel", "chat.completion.cancel")


@dataclass(frozen=True)
class WsRequest:
    """A validated create frame: its parameters, the prompt the model reads, its frames."""

    id: str
    params: GenerationParams
    prompt: str
    max_tokens: int | None
    frames: Frames


def parse_create(message: dict[str, Any]) -> WsRequest:
    """A create frame of either kind, validated (raises pydantic's ValidationError)."""
    if message.get("type") == "chat.completion.create":
        chat = WsChatCompletionCreate.model_validate(message)
        # The same rendering and token budget as /v1/chat/completions (inference/api.py).
        prompt = render_chat(chat.messages)
        return WsRequest(chat.id, chat, prompt, chat.max_new_tokens, CHAT_FRAMES)
    create = WsCompletionCreate.model_validate(message)
    return WsRequest(create.id, create, create.prompt, create.max_tokens, COMPLETION_FRAMES)


def _validation_error(exc: ValidationError) -> InvalidRequest:
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first.get("loc", ())) or None
    if first.get("type") == "extra_forbidden":
        return InvalidRequest(f"Unrecognized argument supplied: {param}", param=param)
    return InvalidRequest(f"Invalid value for '{param}': {first.get('msg')}", param=param)


class CompletionConsumer(AsyncWebsocketConsumer):
    """One socket: authenticate, then run several completions at once."""

    # No channel layer: nothing is ever sent to a socket from outside it, and joining the
    # configured (Redis) layer would give each socket a Redis receive loop that dies with Redis.
    channel_layer_alias = "none"

    async def connect(self) -> None:
        self.record: KeyRecord | None = None
        self.token: str | None = None  # kept to check the key again as it is now
        self.ending = False
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.runs: dict[str, Run] = {}
        self.delivery = Delivery(self.scope)
        self.client_addr = client_ip(self.scope)
        self.timers: list[asyncio.TimerHandle | asyncio.Task[None]] = []
        await self.accept()
        loop = asyncio.get_running_loop()
        self.timers.append(loop.call_later(settings.WS_MAX_LIFETIME_SECONDS, self._expire))
        headers = self.scope.get("headers", [])
        token = token_from_headers(
            _header(headers, b"authorization"), _header(headers, b"x-api-key")
        )
        if token is not None:
            await self._authenticate(token)
        else:
            self.timers.append(
                loop.call_later(settings.WS_AUTH_TIMEOUT_SECONDS, self._auth_timeout)
            )

    def _auth_timeout(self) -> None:
        if self.record is None:
            asyncio.ensure_future(self.close(code=CLOSE_AUTH_TIMEOUT))

    def _expire(self) -> None:
        seconds = settings.WS_MAX_LIFETIME_SECONDS
        error = ConnectionExpired(
            f"This connection reached its maximum lifetime ({seconds:g} s); open a new one."
        )
        asyncio.ensure_future(self._end(error, CLOSE_LIFETIME))

    async def _authenticate(self, token: str) -> None:
        try:
            record = await authenticate_token(token, client_addr=self.client_addr)
        except TenantSuspended as exc:
            await self._end(exc, CLOSE_AUTH_FAILED)
            return
        except ApiError as exc:  # 503: keys cannot be checked now; 429: too many failures
            code = CLOSE_TOO_MANY_FAILURES if exc.status == 429 else CLOSE_UNAVAILABLE
            await self._end(exc, code)
            return
        if record is None:
            await self._end(AuthenticationFailed(), CLOSE_AUTH_FAILED)
            return
        self.record, self.token = record, token
        self.timers.append(asyncio.create_task(self._watch_key()))

    async def _current_record(self) -> KeyRecord | None:
        """The key as it is now (revoked, expired: None; new limits; a suspended tenant:
        TenantSuspended); from the process's key cache, which sees every change within about
        half a second."""
        record = await authenticate_token(self.token, client_addr=self.client_addr)
        if record is not None:
            self.record = record
        return record

    def _unchanged(self) -> bool:
        """The key cache still holds the very record this socket checked last and it has not
        expired since: nothing can have changed (a version change drops the cached record)."""
        record = self.record
        if record is None or key_cache.cached_now(record.key_id) is not record:
            return False
        return record.usable_at(timezone.now())

    async def _watch_key(self) -> None:
        # Running streams stop, and an idle socket closes, soon after its key stops being
        # usable, not only at its next request.
        while not self.ending:
            await asyncio.sleep(KEY_RECHECK_SECONDS)
            if self._unchanged():
                continue
            try:
                record = await self._current_record()
            except TenantSuspended as exc:
                await self._end(exc, CLOSE_AUTH_FAILED)
                return
            except ApiError:  # Postgres away and the record not cached: try again later
                continue
            if record is None:
                await self._end(AuthenticationFailed(KEY_NOT_ACCEPTED), CLOSE_AUTH_FAILED)
                return

    async def _end(self, error: ApiError, code: int) -> None:
        """Serve nothing more: stop every running request (each bills what it delivered),
        send the error frame, close with `code`."""
        if self.ending:
            return
        self.ending = True
        for task in list(self.tasks.values()):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self._send_error(None, error)
        await self.close(code=code)

    async def disconnect(self, code: int) -> None:
        self.ending = True
        for timer in getattr(self, "timers", []):
            timer.cancel()
        # Each task settles in its own finally (shielded), so cancelling cannot lose usage.
        for task in list(getattr(self, "tasks", {}).values()):
            task.cancel()
        if getattr(self, "tasks", None):
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.ending:
            return
        raw = text_data if text_data is not None else (bytes_data or b"").decode("utf-8", "replace")
        try:
            if len(raw.encode("utf-8", "surrogatepass")) > settings.WS_MAX_MESSAGE_BYTES:
                raise InvalidRequest("The message is too large.", code="message_too_large")
            message = jsonbody.loads(raw)
            if not isinstance(message, dict):
                raise InvalidRequest("Each message must be a JSON object.")
        except ApiError as exc:
            await self._send_error(None, exc)
            return
        await self._dispatch(message)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind, request_id = message.get("type"), message.get("id")
        request_id = request_id if isinstance(request_id, str) else None
        try:
            if kind == "auth":
                await self._on_auth(message)
            elif self.record is None:
                raise AuthenticationFailed('Authenticate first: send {"type": "auth", ...}.')
            elif kind in CREATE_TYPES:
                await self._on_create(message)
            elif kind in CANCEL_TYPES:
                self._on_cancel(message)
            else:
                raise InvalidRequest(f"Unknown message type {kind!r}.", param="type")
        except ValidationError as exc:
            await self._send_error(request_id, _validation_error(exc))
        except ApiError as exc:
            await self._send_error(request_id, exc)
        except Exception:
            # A fault of ours: this request fails, the socket and its other streams go on.
            logger.exception("websocket: unexpected error handling a message")
            await self._send_error(request_id, InternalError())

    async def _on_auth(self, message: dict[str, Any]) -> None:
        if self.record is not None:
            raise InvalidRequest("This socket is already authenticated.")
        await self._authenticate(WsAuth.model_validate(message).api_key)

    async def _on_create(self, message: dict[str, Any]) -> None:
        create = parse_create(message)
        if create.id in self.tasks:
            raise InvalidRequest(f"A request with id {create.id!r} is already running.", param="id")
        if len(self.tasks) >= settings.WS_MAX_CONCURRENT:
            raise RateLimited(
                f"At most {settings.WS_MAX_CONCURRENT} requests may run at once on one socket.",
                code="too_many_concurrent_requests",
            )
        try:
            record = await self._current_record()
        except TenantSuspended as exc:
            await self._end(exc, CLOSE_AUTH_FAILED)
            return
        if record is None:
            await self._end(AuthenticationFailed(KEY_NOT_ACCEPTED), CLOSE_AUTH_FAILED)
            return
        plan = await plan_completion(
            record,
            create.params,
            create.prompt,
            create.max_tokens,
            # One bounded label for the socket, whichever kind of request (inference/metrics.py).
            endpoint="ws",
            stream=True,
            client_addr=self.client_addr,
        )
        run = await Run.start(plan, client_addr=self.client_addr)
        self.runs[create.id] = run
        self.tasks[create.id] = asyncio.create_task(self._stream(create.id, run, create.frames))

    def _on_cancel(self, message: dict[str, Any]) -> None:
        cancel = WsCancel.model_validate(message)
        run = self.runs.get(cancel.id)
        if run is None:
            raise InvalidRequest(f"No running request with id {cancel.id!r}.", param="id")
        run.stream.cancel()

    async def _stream(self, request_id: str, run: Run, frames: Frames) -> None:
        completed = False
        try:
            await self._send(frames.started(request_id, run.headers))
            async for text in run.pieces(self.delivery):
                await self._send(frames.delta(request_id, text, run.stream.tokens_streamed))
            completed = await self._done(request_id, run, frames)
        except EngineError as exc:
            await self._send_error(request_id, api_error(exc))
        finally:
            await run.finish(completed=completed)
            self.tasks.pop(request_id, None)
            self.runs.pop(request_id, None)

    async def _done(self, request_id: str, run: Run, frames: Frames) -> bool:
        result = run.result
        if result is None or result.finish_reason == "cancelled":
            tokens, finish_reason = run.billed_tokens, "cancelled"
        else:
            tokens, finish_reason = result.completion_tokens, result.finish_reason
        # Every delta has reached the client: settle before the done frame, so a client that
        # holds a done frame holds a settled request, whatever happens to this process next.
        await run.finish(completed=run.all_delivered)
        usage = usage_of(run.plan.prompt_tokens, tokens)
        await self._send(frames.done(request_id, finish_reason, usage))
        # A cancelled request bills the deltas that were sent, a finished one all its tokens.
        return run.all_delivered

    async def _send(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(frame, separators=(",", ":")))

    async def _send_error(self, request_id: str | None, error: ApiError) -> None:
        metrics.API_REJECTIONS.labels("ws", error.code or "error").inc()
        frame = {"type": "error", "id": request_id, **error.body()}
        if error.headers:
            frame["headers"] = error.headers
        try:
            await self._send(frame)
        finally:
            # Counted once the client has its answer (or has gone); self.record is None until
            # the socket authenticates, so auth failures are not counted against any key.
            if self.record is not None and counts_as_error(error.status):
                await count_error(self.record)
