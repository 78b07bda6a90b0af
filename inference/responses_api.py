"""POST /v1/responses: OpenAI's Responses API over the same plan → Run → settle path as
/v1/chat/completions (inference/api.py's _respond), so keys, scopes, limits, headers, usage and
cancellation on disconnect are the same. Nothing is stored.

A whole response is one JSON object; a streamed one is OpenAI's typed event sequence, each
event named in its `event:` line and numbered by `sequence_number` (no `[DONE]`, as OpenAI
sends none on this endpoint):

  response.created · response.in_progress · response.output_item.added ·
  response.content_part.added · response.output_text.delta (each piece) ·
  response.output_text.done · response.content_part.done · response.output_item.done ·
  response.completed (or response.incomplete when max_output_tokens cut the answer)

and, on a failure after the 200 went out, an `error` event and response.failed.
"""

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from django.core.handlers.asgi import ASGIRequest
from django.http import JsonResponse, StreamingHttpResponse

from core.clientaddr import client_ip
from core.errors import ApiError, ModelUnavailable
from engine.generation import FINISH_CANCELLED, FINISH_LENGTH
from engine.runtime import EngineError, GenerationResult
from inference.delivery import Delivery, NotStreamed
from inference.engines import api_error
from inference.prompting import render_chat
from inference.responses import event_stream
from inference.responses_schemas import (
    IncompleteDetails,
    ItemStatus,
    OutputMessageOut,
    OutputTextOut,
    ResponseCreateIn,
    ResponseErrorOut,
    ResponseOut,
    ResponseStatus,
    ResponseUsageOut,
)
from inference.services import Run, plan_completion
from ratelimit.errorcount import count_error, counts_as_error
from tenants.keycache import KeyRecord

ENDPOINT = "responses"
# The generic parameter names plan_completion() reports, as this endpoint spells them.
PARAM_NAMES = {"prompt": "input", "max_tokens": "max_output_tokens", "messages": "input"}


async def create_response(
    request: ASGIRequest, record: KeyRecord, body: ResponseCreateIn
) -> JsonResponse | StreamingHttpResponse:
    """Plan, admit and run one response; ApiErrors (4xx, 429, 503) raise before any byte."""
    client_addr = client_ip(request)
    try:
        plan = await plan_completion(
            record,
            body.generation_params(),
            render_chat(body.messages),
            body.max_output_tokens,
            endpoint=ENDPOINT,
            stream=bool(body.stream),
            client_addr=client_addr,
        )
    except ApiError as exc:
        _rename_param(exc)
        raise
    run = await Run.start(plan, client_addr=client_addr)
    shape = ResponseShape(body, model=plan.model)
    if body.stream:
        return _stream_response(request, run, shape)
    return await _json_response(request, run, shape)


def _rename_param(error: ApiError) -> None:
    """Name this endpoint's field, in `param` and in the message ("max_tokens must be...")."""
    name = PARAM_NAMES.get(error.param or "")
    if name is not None and error.param is not None:
        error.message = error.message.replace(f"{error.param} must", f"{name} must")
        error.param = name


class ResponseShape:
    """One response's ids and echoed settings, and the objects and events that spell it."""

    def __init__(self, body: ResponseCreateIn, *, model: str) -> None:
        self.id = f"resp_{uuid.uuid4().hex}"
        self.message_id = f"msg_{uuid.uuid4().hex}"
        self.created_at = int(time.time())
        self.sequence_number = 0
        self.echo: dict[str, Any] = {
            "model": model,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "temperature": 1.0 if body.temperature is None else body.temperature,
            "top_p": 1.0 if body.top_p is None else body.top_p,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "tool_choice": body.tool_choice or "auto",
            "user": body.user,
            "metadata": body.metadata or {},
        }

    def response(
        self,
        status: ResponseStatus,
        *,
        message: OutputMessageOut | None = None,
        usage: ResponseUsageOut | None = None,
        error: ResponseErrorOut | None = None,
    ) -> dict[str, Any]:
        done = status in ("completed", "incomplete")
        body = ResponseOut(
            id=self.id,
            created_at=self.created_at,
            status=status,
            completed_at=int(time.time()) if done else None,
            error=error,
            incomplete_details=(
                IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None
            ),
            output=[message] if message is not None else [],
            usage=usage,
            **self.echo,
        )
        return body.model_dump()

    def message(self, text: str | None, status: ItemStatus) -> OutputMessageOut:
        content = [] if text is None else [OutputTextOut(text=text)]
        return OutputMessageOut(id=self.message_id, status=status, content=content)

    def whole(self, result: GenerationResult, text: str, prompt_tokens: int) -> dict[str, Any]:
        """The finished response: completed, or incomplete when max_output_tokens cut it."""
        status: ItemStatus = "incomplete" if result.finish_reason == FINISH_LENGTH else "completed"
        usage = ResponseUsageOut(
            input_tokens=prompt_tokens,
            output_tokens=result.completion_tokens,
            total_tokens=prompt_tokens + result.completion_tokens,
        )
        return self.response(status, message=self.message(text, status), usage=usage)

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        data = json.dumps(payload, separators=(",", ":"))
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def _part(self, kind: str, text: str) -> bytes:
        part = OutputTextOut(text=text).model_dump()
        return self.event(kind, item_id=self.message_id, output_index=0, content_index=0, part=part)

    def opening(self) -> bytes:
        in_progress = self.response("in_progress")
        item = self.message(None, "in_progress").model_dump()
        return b"".join(
            [
                self.event("response.created", response=in_progress),
                self.event("response.in_progress", response=in_progress),
                self.event("response.output_item.added", output_index=0, item=item),
                self._part("response.content_part.added", ""),
            ]
        )

    def delta(self, text: str) -> bytes:
        return self.event(
            "response.output_text.delta",
            item_id=self.message_id,
            output_index=0,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def closing(self, result: GenerationResult, text: str, prompt_tokens: int) -> bytes:
        whole = self.whole(result, text, prompt_tokens)
        done = "response.incomplete" if whole["status"] == "incomplete" else "response.completed"
        return b"".join(
            [
                self.event(
                    "response.output_text.done",
                    item_id=self.message_id,
                    output_index=0,
                    content_index=0,
                    text=text,
                    logprobs=[],
                ),
                self._part("response.content_part.done", text),
                self.event("response.output_item.done", output_index=0, item=whole["output"][0]),
                self.event(done, response=whole),
            ]
        )

    def failed(self, error: ApiError) -> bytes:
        """The error event (OpenAI's shape: code, message, param), then response.failed."""
        # The Response object's error codes are OpenAI's own list: server_error covers ours.
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"
        failed = self.response("failed", error=ResponseErrorOut(code=code, message=error.message))
        return b"".join(
            [
                self.event("error", code=error.code, message=error.message, param=error.param),
                self.event("response.failed", response=failed),
            ]
        )


async def _generate(run: Run) -> tuple[GenerationResult, str]:
    pieces: list[str] = []
    try:
        async for text in run.pieces(NotStreamed()):
            pieces.append(text)
    except EngineError as exc:
        raise api_error(exc) from exc
    result = run.result
    if result is None or result.finish_reason == FINISH_CANCELLED:
        raise ModelUnavailable("The node stopped this request while shutting down; retry it.")
    return result, "".join(pieces)


async def _json_response(request: ASGIRequest, run: Run, shape: ResponseShape) -> JsonResponse:
    """As inference/responses.py's json_response: settled before the answer is sent, billed
    only if the client is still there; a client that left cancels the view and its work."""
    started = time.monotonic()
    completed = False
    try:
        result, text = await _generate(run)
        completed = Delivery(request.scope).is_open()
    finally:
        await run.finish(completed=completed)
    response = JsonResponse(shape.whole(result, text, run.plan.prompt_tokens))
    for name, value in {**run.headers, **run.timing_headers()}.items():
        response[name] = value
    response["openai-processing-ms"] = str(int((time.monotonic() - started) * 1000))
    return response


def _stream_response(request: ASGIRequest, run: Run, shape: ResponseShape) -> StreamingHttpResponse:
    return event_stream(run, _events(run, shape, Delivery(request.scope)))


async def _events(run: Run, shape: ResponseShape, delivery: Delivery) -> AsyncIterator[bytes]:
    """As inference/responses.py's _events: each piece billed once it reached the client,
    settled before the closing events, a client that leaves cancels the generator."""
    pieces: list[str] = []
    try:
        yield shape.opening()
        async for text in run.pieces(delivery):
            pieces.append(text)
            yield shape.delta(text)
        result = run.result
        if result is None or result.finish_reason == FINISH_CANCELLED:
            raise ModelUnavailable("The node stopped this request while shutting down.")
        # Every piece has reached the client: settle now, before the closing events.
        await run.finish(completed=run.all_delivered)
        yield shape.closing(result, "".join(pieces), run.plan.prompt_tokens)
    except (ApiError, EngineError) as exc:
        # The 200 is out: the error travels as the stream's last events, counted here since it
        # never reaches console/api.py's error_response.
        error = exc if isinstance(exc, ApiError) else api_error(exc)
        if counts_as_error(error.status):
            await count_error(run.plan.record)
        yield shape.failed(error)
    finally:
        await run.finish(completed=False)
