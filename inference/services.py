"""One completion from validated input to settled usage: plan → admit → engine → settle.

Shared by the REST views (plain and SSE) and the WebSocket consumer, so every path admits,
bills and releases the same way:

- `plan_completion()` checks everything that needs no token reservation (scope, parameters,
  model, max_tokens, prompt size, readiness) so a bad request reserves nothing; it spends one
  unit of the key's request rate, so a flood of bad requests is throttled like any other;
- `Run.start()` reserves prompt + max_tokens in one ADMIT, then queues the generation; a queue
  that is full releases the admission without counting usage;
- `Run.finish()` settles exactly once with the tokens that reached the client (all of them for
  a finished request, those in delivered pieces for a cut stream); a request none of whose
  answer reached the client is refunded and not counted as usage.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from django.conf import settings

from core.errors import ApiError, ContextLengthExceeded, InvalidRequest, NotFound
from engine.generation import FINISH_CANCELLED
from engine.runtime import GenerationRequest, GenerationResult, GenerationStream
from inference import metrics
from inference.delivery import Delivery
from inference.engines import (
    engine_check_request,
    engine_encode_prompt,
    engine_submit,
    served_model_id,
    served_model_names,
)
from inference.schemas import GenerationParams
from ratelimit.limiter import Admission, admit, charge_refusal, keep_alive, settle
from tenants.auth import require_scope
from tenants.keycache import KeyRecord


@dataclass(frozen=True)
class CompletionPlan:
    """A checked request, ready for admission."""

    record: KeyRecord
    request: GenerationRequest
    prompt_tokens: int
    model: str
    endpoint: str  # a bounded metrics label: completions | chat.completions | ws
    stream: bool
    received_at: float  # time.monotonic() when the request was taken in

    @property
    def reservation(self) -> int:
        return self.prompt_tokens + self.request.max_tokens


def _check_parameters(params: GenerationParams) -> None:
    unsupported = params.unsupported()
    if unsupported is not None:
        raise InvalidRequest(str(unsupported), param=unsupported.param, code=unsupported.code)
    if params.model is not None and params.model not in served_model_names():
        raise NotFound(
            f"The model '{params.model}' does not exist; GET /v1/models lists the served one.",
            param="model",
            code="model_not_found",
        )


async def plan_completion(
    record: KeyRecord,
    params: GenerationParams,
    prompt: str,
    max_tokens: int | None,
    *,
    endpoint: str,
    stream: bool,
    client_addr: str | None,
) -> CompletionPlan:
    """Validate a request before any token is reserved; raises ApiErrors (4xx, 503). A request
    refused for its own fault (4xx) spends one unit of the key's request rate."""
    received_at = time.monotonic()
    try:
        return await _plan(record, params, prompt, max_tokens, endpoint, stream, received_at)
    except ApiError as exc:
        if 400 <= exc.status < 500 and exc.status != 429:
            await charge_refusal(record, client_addr=client_addr)
        raise


async def _plan(
    record: KeyRecord,
    params: GenerationParams,
    prompt: str,
    max_tokens: int | None,
    endpoint: str,
    stream: bool,
    received_at: float,
) -> CompletionPlan:
    require_scope(record, "completions")
    _check_parameters(params)
    if len(prompt) > settings.API_MAX_PROMPT_CHARS:
        # Refused before tokenizing: the count is in characters, the only one known.
        raise ContextLengthExceeded(
            None,
            chars=len(prompt),
            char_limit=settings.API_MAX_PROMPT_CHARS,
            param=params.prompt_param,
        )
    request = GenerationRequest(
        prompt=prompt,
        max_tokens=max_tokens or settings.API_DEFAULT_MAX_TOKENS,
        temperature=1.0 if params.temperature is None else params.temperature,
        top_p=1.0 if params.top_p is None else params.top_p,
        stop=tuple(params.stop or ()),
        seed=params.seed,
        # Waiting requests are admitted fairly between tenants, by weight (engine/fairness.py).
        tenant=record.tenant_slug,
        weight=record.scheduling_weight,
    )
    engine_check_request(request)
    # Encoded once here (a prompt too long for the model is refused before admission), and
    # the ids travel with the request: the engine does not encode it again.
    try:
        prompt_ids = await engine_encode_prompt(prompt)
    except ContextLengthExceeded as exc:
        raise exc.about(params.prompt_param) from exc
    request = replace(request, prompt_ids=tuple(prompt_ids))
    model = params.model or served_model_id()
    return CompletionPlan(record, request, len(prompt_ids), model, endpoint, stream, received_at)


@dataclass
class Run:
    """An admitted, queued generation; `finish()` settles it exactly once."""

    plan: CompletionPlan
    admission: Admission
    stream: GenerationStream
    started_at: float = field(default_factory=time.monotonic)
    billed_tokens: int = 0  # completion tokens that reached the client so far
    settled: bool = False

    @classmethod
    async def start(cls, plan: CompletionPlan, *, client_addr: str | None) -> "Run":
        """ADMIT (429s raise here), then queue; a refused queue releases the admission."""
        admission = await admit(plan.record, tokens=plan.reservation, client_addr=client_addr)
        try:
            stream = await engine_submit(plan.request)
        except BaseException:
            # Never ran: refund everything, count nothing (the request slot stays spent).
            await settle(admission, prompt_tokens=0, completion_tokens=0, count_usage=False)
            raise
        return cls(plan, admission, stream)

    @property
    def headers(self) -> dict[str, str]:
        return self.admission.headers

    async def pieces(self, delivery: Delivery) -> AsyncIterator[str]:
        """The text deltas; after the caller has sent one on, `delivery` says whether it
        reached the client, and only then are its tokens billed."""
        async with keep_alive(self.admission):
            async for text in self.stream:
                yield text
                try:
                    sent = await delivery.sent()
                except asyncio.CancelledError:
                    # The client left while we waited: the bytes may still have made it out.
                    if delivery.sent_so_far():
                        self.billed_tokens = self.stream.tokens_streamed
                    raise
                if sent:
                    if not self.billed_tokens:
                        self._observe(metrics.API_TIME_TO_FIRST_BYTE.labels(self.plan.endpoint))
                    self.billed_tokens = self.stream.tokens_streamed

    @property
    def result(self) -> GenerationResult | None:
        return self.stream.result

    @property
    def all_delivered(self) -> bool:
        """The generation finished and every text piece it produced reached the client."""
        result = self.stream.result
        return (
            result is not None
            and result.finish_reason != FINISH_CANCELLED
            and self.billed_tokens == self.stream.tokens_streamed
        )

    async def finish(self, *, completed: bool) -> None:
        """Settle once: the whole completion if the client got it all, else what it got
        (nothing at all when no piece of the answer reached it)."""
        if self.settled:
            return
        self.settled = True
        self.stream.cancel()
        result = self.stream.result
        if completed and result is not None:
            self.billed_tokens = result.completion_tokens
            stream = "true" if self.plan.stream else "false"
            self._observe(metrics.API_COMPLETION_SECONDS.labels(self.plan.endpoint, stream))
            if not self.plan.stream:  # a whole response: its first byte is its last
                self._observe(metrics.API_TIME_TO_FIRST_BYTE.labels(self.plan.endpoint))
        # Billed only when some of the answer reached the client: a request that failed, timed
        # out in the queue, or whose client left before its first piece is refunded whole and
        # not counted (its request slot stays spent).
        delivered = completed or self.billed_tokens > 0
        # Shielded: a client that goes away must not cancel its own settlement.
        await asyncio.shield(
            settle(
                self.admission,
                prompt_tokens=self.plan.prompt_tokens if delivered else 0,
                completion_tokens=self.billed_tokens,
                count_usage=delivered,
            )
        )

    def _observe(self, histogram: Any) -> None:
        histogram.observe(time.monotonic() - self.plan.received_at)

    def timing_headers(self) -> dict[str, str]:
        result = self.stream.result
        if result is None:
            return {}
        return {
            "x-queue-time-ms": f"{result.queue_seconds * 1000:.1f}",
            "x-inference-time-ms": f"{result.generation_seconds * 1000:.1f}",
        }
