"""Turning a started Run into an HTTP response: one JSON body, or a Server-Sent Event stream.

Both settle in a `finally`: the JSON path after the generation ends (or the client leaves),
the stream path when its generator ends — normally, on an engine error, or with
CancelledError when the client drops the connection (Django cancels the response task).
"""

import time
from collections.abc import AsyncIterator

from django.core.handlers.asgi import ASGIRequest
from django.http import JsonResponse, StreamingHttpResponse

from core.errors import ApiError, ModelUnavailable
from engine.runtime import EngineError, GenerationResult
from inference.delivery import Delivery, NotStreamed
from inference.engines import api_error
from inference.services import Run
from inference.sse import DONE, Shape
from ratelimit.errorcount import count_error, counts_as_error


def _common_headers(run: Run) -> dict[str, str]:
    return {**run.headers, **run.timing_headers()}


async def _generate(run: Run) -> list[GenerationResult]:
    try:
        async for _ in run.deltas(NotStreamed()):
            pass
    except EngineError as exc:
        # One choice failed: the others were cancelled, and nothing of it is billed.
        raise api_error(exc) from exc
    results = run.completed_results
    if results is None:
        raise ModelUnavailable("The node stopped this request while shutting down; retry it.")
    return results


async def json_response(request: ASGIRequest, run: Run, shape: Shape) -> JsonResponse:
    """Generate the whole completion, settle, answer with one JSON object. A client that left
    meanwhile cancels the view (console/handlers.py), so its generation stops and nothing is
    billed; one found gone once the answer is ready is not billed either."""
    started = time.monotonic()
    completed = False
    try:
        results = await _generate(run)
        # Settled before the answer is sent (a process killed after sending it must not lose
        # its usage), so the connection is asked first whether anyone is still there.
        completed = Delivery(request.scope).is_open()
    finally:
        await run.finish(completed=completed)
    response = JsonResponse(shape.response(results, run.group.logprobs, run.plan.prompt_tokens))
    for name, value in _common_headers(run).items():
        response[name] = value
    response["openai-processing-ms"] = str(int((time.monotonic() - started) * 1000))
    return response


def stream_response(request: ASGIRequest, run: Run, shape: Shape) -> StreamingHttpResponse:
    """An SSE response; the rate-limit headers go out before the first byte."""
    return event_stream(run, _events(run, shape, Delivery(request.scope)))


def event_stream(run: Run, events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    """A text/event-stream answer of `events` with the run's rate-limit headers (sent before
    the first byte) and no buffering on the way (also /v1/responses')."""
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    for name, value in run.headers.items():
        response[name] = value
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def _events(run: Run, shape: Shape, delivery: Delivery) -> AsyncIterator[bytes]:
    try:
        opening = shape.opening(len(run.plan.requests))
        if opening:
            yield opening
        async for index, delta in run.deltas(delivery):
            tokens = run.group.tokens_streamed
            yield shape.delta(delta.text, tokens, index=index, logprobs=delta.logprobs)
        results = run.completed_results
        if results is None:
            raise ModelUnavailable("The node stopped this request while shutting down.")
        # Every piece of text has reached the client: settle now, before the closing events.
        # A process that dies after this bills what the client has; one that died before
        # could not have sent the end of the stream (docs/api.md, billing).
        await run.finish(completed=run.all_delivered)
        for index, result in enumerate(results):
            yield shape.closing(result.finish_reason, index=index)
        if shape.include_usage:
            yield shape.usage_chunk(run.plan.prompt_tokens, run.completion_tokens)
        yield DONE
    except (ApiError, EngineError) as exc:
        # The 200 and its headers are out: the error travels as the stream's last event, and
        # is counted here since it never reaches console/api.py's error_response.
        error = exc if isinstance(exc, ApiError) else api_error(exc)
        if counts_as_error(error.status):
            await count_error(run.plan.record)
        yield shape.error(error.body())
        yield DONE
    finally:
        # Settled above when the stream ran to its end; otherwise bills what was delivered.
        await run.finish(completed=False)
