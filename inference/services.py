"""One completion from validated input to settled usage: plan → admit → engine → settle.

Shared by the REST views (plain and SSE) and the WebSocket consumer, so every path admits,
bills and releases the same way:

- `plan_completion()` checks everything that needs no token reservation (scope, parameters,
  model, max_tokens, prompt size, readiness) so a bad request reserves nothing; it spends one
  unit of the key's request rate, so a flood of bad requests is throttled like any other;
- `Run.start()` reserves prompt + max_tokens in one ADMIT, then queues the generation; a queue
  that is full releases the admission without counting usage. A request of several prompts
  or n choices is one plan and one run: one ADMIT reserving every prompt's tokens plus
  max_tokens per choice, its rows queued together (a GenerationGroup), one settlement;
- `Run.finish()` settles exactly once with the tokens that reached the client (all of them for
  a finished request, those in delivered pieces for a cut stream); a request none of whose
  answer reached the client is refunded and not counted as usage.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from django.conf import settings

from core.errors import ApiError, ContextLengthExceeded, InvalidRequest
from engine.generation import FINISH_CANCELLED, SEED_MAX
from engine.messages import Delta
from engine.runtime import GenerationGroup, GenerationRequest, GenerationResult
from inference import metrics
from inference.delivery import Delivery
from inference.engines import (
    engine_check_request,
    engine_encode_prompt,
    engine_submit_group,
    engine_sync_adapters,
    engine_token_prompt,
    served_model_id,
    served_model_names,
    unknown_model,
)
from inference.schemas import MAX_CHOICES, GenerationParams
from ratelimit.limiter import Admission, admit, charge_refusal, keep_alive, settle
from tenants.auth import require_scope
from tenants.keycache import KeyRecord

# One prompt: a text, or token ids (completions only).
Prompt = str | Sequence[int]


@dataclass(frozen=True)
class CompletionPlan:
    """A checked request, ready for admission: one engine request per choice, in OpenAI's
    order of choices (prompt by prompt, then each prompt's n choices)."""

    record: KeyRecord
    requests: tuple[GenerationRequest, ...]
    prompt_tokens: int  # every prompt's, each counted once (not once per choice)
    model: str
    endpoint: str  # a bounded metrics label: completions | chat.completions | ws
    stream: bool
    received_at: float  # time.monotonic() when the request was taken in

    @property
    def request(self) -> GenerationRequest:
        """The first choice's request (the only one of a one-choice request)."""
        return self.requests[0]

    @property
    def reservation(self) -> int:
        return self.prompt_tokens + sum(request.max_tokens for request in self.requests)


def _check_parameters(record: KeyRecord, params: GenerationParams) -> str:
    """Refuse what this node cannot honour; returns the adapter the request names ("" for the
    served base model)."""
    unsupported = params.unsupported()
    if unsupported is not None:
        raise InvalidRequest(str(unsupported), param=unsupported.param, code=unsupported.code)
    if params.model is None or params.model in served_model_names():
        return ""
    # An adapter not granted to this key's tenant is refused exactly as a model that does not
    # exist: whether another tenant has one of that name is not this key's business.
    if params.model in record.adapters:
        return params.model
    raise unknown_model(params.model)


async def plan_completion(
    record: KeyRecord,
    params: GenerationParams,
    prompt: str | Sequence[Prompt],
    max_tokens: int | None,
    *,
    endpoint: str,
    stream: bool,
    client_addr: str | None,
) -> CompletionPlan:
    """Validate a request before any token is reserved; raises ApiErrors (4xx, 503). A request
    refused for its own fault (4xx) spends one unit of the key's request rate. `prompt`: one
    text, or a list of prompts (texts or token-id lists); params.n choices each."""
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
    prompt: str | Sequence[Prompt],
    max_tokens: int | None,
    endpoint: str,
    stream: bool,
    received_at: float,
) -> CompletionPlan:
    require_scope(record, "completions")
    # The engine's registry as the Adapter table has it (a look at most every poll interval),
    # whatever this request asks: a removed adapter unloads once the next request comes.
    await engine_sync_adapters()
    adapter = _check_parameters(record, params)
    prompts = _prompts(prompt)
    n = params.n or 1
    _check_choices(len(prompts), n)
    request = GenerationRequest(
        prompt="",
        max_tokens=max_tokens or settings.API_DEFAULT_MAX_TOKENS,
        temperature=1.0 if params.temperature is None else params.temperature,
        top_p=1.0 if params.top_p is None else params.top_p,
        stop=tuple(params.stop or ()),
        seed=params.seed,
        # Waiting requests are admitted fairly between tenants, by weight (engine/fairness.py).
        tenant=record.tenant_slug,
        weight=record.scheduling_weight,
        logprobs=params.requested_logprobs(),
        adapter=adapter,
    )
    engine_check_request(request)
    # Encoded once here (a prompt too long for the model is refused before admission), and
    # the ids travel with the request: the engine does not encode it again.
    encoded = [await _prompt_ids(one, params.prompt_param) for one in prompts]
    requests = tuple(
        replace(
            request,
            prompt=one if isinstance(one, str) else "",
            prompt_ids=tuple(ids),
            seed=_choice_seed(request.seed, choice),
        )
        for one, ids in zip(prompts, encoded, strict=True)
        for choice in range(n)
    )
    model = params.model or served_model_id()
    prompt_tokens = sum(len(ids) for ids in encoded)
    return CompletionPlan(record, requests, prompt_tokens, model, endpoint, stream, received_at)


def _prompts(prompt: str | Sequence[Prompt]) -> list[Prompt]:
    return [prompt] if isinstance(prompt, str) else list(prompt)


def _check_choices(prompts: int, n: int) -> None:
    if prompts * n > MAX_CHOICES:
        raise InvalidRequest(
            f"This request asks for {prompts * n} choices ({prompts} prompts, n={n}); this "
            f"node generates at most {MAX_CHOICES} per request.",
            param="n",
        )
    if prompts * n > settings.INFERENCE_MAX_QUEUE:
        raise InvalidRequest(
            f"This request asks for {prompts * n} choices; this node queues at most "
            f"{settings.INFERENCE_MAX_QUEUE} (INFERENCE_MAX_QUEUE).",
            param="n",
        )


async def _prompt_ids(prompt: Prompt, param: str) -> list[int]:
    """A prompt's ids; one longer than the model takes is refused naming `param`."""
    if isinstance(prompt, str) and len(prompt) > settings.API_MAX_PROMPT_CHARS:
        # Refused before tokenizing: the count is in characters, the only one known.
        raise ContextLengthExceeded(
            None, chars=len(prompt), char_limit=settings.API_MAX_PROMPT_CHARS, param=param
        )
    try:
        if not isinstance(prompt, str):
            return engine_token_prompt(prompt)
        return await engine_encode_prompt(prompt)
    except ContextLengthExceeded as exc:
        raise exc.about(param) from exc


def _choice_seed(seed: int | None, choice: int) -> int | None:
    """Each choice of a seeded request draws its own numbers (seed, seed + 1, ...), all
    reproducible; without a seed every row draws a random one."""
    if seed is None or choice == 0:
        return seed
    seed += choice
    return seed - 2**64 if seed > SEED_MAX else seed


@dataclass
class Run:
    """An admitted, queued generation (every choice of the request); `finish()` settles it
    exactly once."""

    plan: CompletionPlan
    admission: Admission
    group: GenerationGroup
    started_at: float = field(default_factory=time.monotonic)
    billed_tokens: int = 0  # completion tokens that reached the client so far (every choice)
    settled: bool = False

    @classmethod
    async def start(cls, plan: CompletionPlan, *, client_addr: str | None) -> "Run":
        """ADMIT (429s raise here), then queue; a refused queue releases the admission."""
        admission = await admit(plan.record, tokens=plan.reservation, client_addr=client_addr)
        try:
            group = await engine_submit_group(plan.requests)
        except BaseException:
            # Never ran: refund everything, count nothing (the request slot stays spent).
            await settle(admission, prompt_tokens=0, completion_tokens=0, count_usage=False)
            raise
        return cls(plan, admission, group)

    @property
    def stream(self) -> GenerationGroup:
        """The rows' group (one row for the WebSocket): cancel(), tokens_streamed."""
        return self.group

    @property
    def headers(self) -> dict[str, str]:
        return self.admission.headers

    async def deltas(self, delivery: Delivery) -> AsyncIterator[tuple[int, Delta]]:
        """Each choice's deltas as they come, with the choice's index; after the caller has
        sent one on, `delivery` says whether it reached the client, and only then are its
        tokens billed. The first choice that fails raises (the others are cancelled)."""
        async with keep_alive(self.admission):
            async for index, delta in self.group:
                yield index, delta
                try:
                    sent = await delivery.sent()
                except asyncio.CancelledError:
                    # The client left while we waited: the bytes may still have made it out.
                    if delivery.sent_so_far():
                        self.billed_tokens = self.group.tokens_streamed
                    raise
                if sent:
                    if not self.billed_tokens:
                        self._observe(metrics.API_TIME_TO_FIRST_BYTE.labels(self.plan.endpoint))
                    self.billed_tokens = self.group.tokens_streamed

    async def pieces(self, delivery: Delivery) -> AsyncIterator[str]:
        """The text deltas of a one-choice request (the WebSocket); see deltas()."""
        async for _, delta in self.deltas(delivery):
            yield delta.text

    @property
    def results(self) -> list[GenerationResult | None]:
        return self.group.results

    @property
    def result(self) -> GenerationResult | None:
        """The first choice's result (the only one of a one-choice request)."""
        return self.group.results[0]

    @property
    def completed_results(self) -> list[GenerationResult] | None:
        """Every choice's result when all of them finished (none cancelled), else None."""
        results = [r for r in self.group.results if r and r.finish_reason != FINISH_CANCELLED]
        return results if len(results) == len(self.group.results) else None

    @property
    def completion_tokens(self) -> int:
        """The finished choices' completion tokens, in all."""
        return sum(result.completion_tokens for result in self.group.results if result)

    @property
    def all_delivered(self) -> bool:
        """Every choice finished and every text piece it produced reached the client."""
        return (
            self.completed_results is not None and self.billed_tokens == self.group.tokens_streamed
        )

    async def finish(self, *, completed: bool) -> None:
        """Settle once: the whole completion if the client got it all, else what it got
        (nothing at all when no piece of the answer reached it)."""
        if self.settled:
            return
        self.settled = True
        self.group.cancel()
        if completed and self.completed_results is not None:
            self.billed_tokens = self.completion_tokens
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
                # Every row of a request names the same adapter ("" for the base model).
                adapter=self.plan.request.adapter,
            )
        )

    def _observe(self, histogram: Any) -> None:
        histogram.observe(time.monotonic() - self.plan.received_at)

    def timing_headers(self) -> dict[str, str]:
        """Queue time of the first choice to start, inference time of the last to end."""
        results = [result for result in self.group.results if result is not None]
        if not results:
            return {}
        queued = min(result.queue_seconds for result in results)
        generating = max(result.generation_seconds for result in results)
        return {
            "x-queue-time-ms": f"{queued * 1000:.1f}",
            "x-inference-time-ms": f"{generating * 1000:.1f}",
        }
