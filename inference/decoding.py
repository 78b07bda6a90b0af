"""One batch on the model thread: encoder once, then decoder steps over the KV cache
(inference/t5_decoder.py).

Each row stops on its own (end of sequence, its max_tokens, its stop strings, cancellation);
finished rows leave the batch (their cache rows are dropped), so the remaining rows decode
at the smaller batch size, and the batch ends when no row is left.
"""

import secrets
import time
from collections.abc import Callable

import torch

from inference import metrics
from inference.batcher import Job
from inference.detokenize import IncrementalDetokenizer, StopStringFilter
from inference.generation import (
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationRequest,
    GenerationResult,
)
from inference.loading import LoadedModel
from inference.t5_decoder import T5DecoderStep

CACHE_START = 128


class Row:
    """One request's decoding state inside a batch."""

    def __init__(self, job: Job, model: LoadedModel, started_at: float) -> None:
        self.job = job
        self.request = job.request
        self.eos_id = model.eos_id
        self.started_at = started_at
        self.detokenizer = IncrementalDetokenizer(model.decode, model.byte_ids, model.special_ids)
        self.stops = StopStringFilter(job.request.stop)
        self.generator = _generator(job.request)
        self.first_token_at: float | None = None
        self.finish_reason: str | None = None

    @property
    def running(self) -> bool:
        return self.finish_reason is None

    def accept(self, token: int, now: float) -> None:
        """Take the row's next token: stream its text or finish the row."""
        if self.first_token_at is None:
            self.first_token_at = now
            if self.job.record:
                metrics.TIME_TO_FIRST_TOKEN.observe(now - self.job.submitted_at)
        if token == self.eos_id and not self.request.ignore_eos:
            self.detokenizer.ids.append(token)
            return self.finish(FINISH_STOP, now)
        piece = self.stops.feed(self.detokenizer.push(token))
        if self.stops.stopped:
            return self.finish(FINISH_STOP, now, piece)
        if len(self.detokenizer.ids) >= self.request.max_tokens:
            return self.finish(FINISH_LENGTH, now, piece)
        if piece:
            self.job.send("delta", (piece, len(self.detokenizer.ids)))

    def finish(self, reason: str, now: float, piece: str = "") -> None:
        """End the row: send the rest of its text, then its result."""
        self.finish_reason = reason
        piece += self.stops.feed(self.detokenizer.flush())
        piece += self.stops.finish()
        if piece:
            self.job.send("delta", (piece, len(self.detokenizer.ids)))
        result = self._result(reason, now)
        if self.job.record:  # before "done": whoever sees the result sees it counted
            record_result(result)
        self.job.finished = True
        self.job.send("done", result)

    def _result(self, reason: str, now: float) -> GenerationResult:
        submitted = self.job.submitted_at
        first = self.first_token_at
        return GenerationResult(
            text=self.stops.text,
            prompt_tokens=len(self.job.prompt_ids),
            completion_tokens=len(self.detokenizer.ids),
            finish_reason=reason,
            queue_seconds=self.started_at - submitted,
            first_token_seconds=None if first is None else first - submitted,
            generation_seconds=now - self.started_at,
            token_ids=list(self.detokenizer.ids),
        )


def record_batch(jobs: list[Job]) -> None:
    """A batch's size and prompt tokens, in the process that serves /metrics."""
    metrics.BATCH_SIZE.observe(len(jobs))
    metrics.PROMPT_TOKENS.inc(sum(len(job.prompt_ids) for job in jobs))


def record_result(result: GenerationResult, *, first_token: bool = False) -> None:
    """A finished row's figures (and its time to first token, when not observed as it came)."""
    if first_token and result.first_token_seconds is not None:
        metrics.TIME_TO_FIRST_TOKEN.observe(result.first_token_seconds)
    metrics.GENERATION_SECONDS.observe(result.generation_seconds)
    metrics.TOKENS_GENERATED.inc(result.completion_tokens)
    outcome = "cancelled" if result.finish_reason == FINISH_CANCELLED else "completed"
    metrics.REQUESTS.labels(result=outcome).inc()


def _generator(request: GenerationRequest) -> torch.Generator | None:
    if request.temperature == 0:
        return None  # greedy
    # One generator per row: a seeded request draws the same numbers whatever its batch-mates.
    seed = request.seed if request.seed is not None else secrets.randbits(63)
    return torch.Generator(device="cpu").manual_seed(seed)


def choose_tokens(logits: torch.Tensor, rows: list[Row]) -> list[int]:
    """Greedy rows take the argmax; sampling rows draw with their own temperature, top_p, seed."""
    chosen = logits.argmax(dim=-1).tolist()
    for index, row in enumerate(rows):
        if row.generator is not None:
            chosen[index] = sample(logits[index], row.request, row.generator)
    return chosen


def sample(logits: torch.Tensor, request: GenerationRequest, generator: torch.Generator) -> int:
    """Temperature, then nucleus (top_p) sampling of one row, on the CPU for reproducibility."""
    probs = torch.softmax(logits.float().cpu() / request.temperature, dim=-1)
    if not torch.isfinite(probs).all():
        # A temperature so small that logits/temperature overflows: that is greedy decoding.
        return int(logits.argmax())
    if request.top_p >= 1.0:
        return int(torch.multinomial(probs, 1, generator=generator))
    sorted_probs, order = probs.sort(descending=True)
    # Keep the smallest head whose mass reaches top_p; the most likely token always stays,
    # however small top_p is (in float32 a tiny top_p is 0, which would drop every token).
    drop = (sorted_probs.cumsum(0) - sorted_probs) >= request.top_p
    drop[0] = False
    sorted_probs[drop] = 0.0
    return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])


def _pad(
    prompts: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for index, prompt in enumerate(prompts):
        ids[index, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        mask[index, : len(prompt)] = 1
    return ids.to(device), mask.to(device)


class Batch:
    """The rows still decoding and their caches; rows that end are dropped from all of them."""

    def __init__(self, model: LoadedModel, jobs: list[Job]) -> None:
        self.device = model.device
        started = time.perf_counter()
        self.rows = [Row(job, model, started) for job in jobs]
        ids, mask = _pad([job.prompt_ids for job in jobs], model.pad_id, model.device)
        encoded = model.model.get_encoder()(input_ids=ids, attention_mask=mask)[0]
        # No row feeds more than max_tokens inputs to the decoder; start at most 128 positions
        # (the buffers double when full), so a long max_tokens that ends early costs nothing.
        capacity = min(CACHE_START, max(job.request.max_tokens for job in jobs))
        self.decoder = T5DecoderStep(model.model, encoded, mask, capacity)
        self.next_ids = torch.full(
            (len(jobs), 1), model.decoder_start_id, dtype=torch.long, device=model.device
        )

    def step(self) -> list[int]:
        """One decoder step for every row; returns each row's next token."""
        return choose_tokens(self.decoder(self.next_ids), self.rows)

    def keep_running(self, tokens: list[int] | None = None) -> None:
        """Drop ended rows from the batch; tokens become the next step's inputs."""
        keep = [index for index, row in enumerate(self.rows) if row.running]
        if tokens is not None:
            tokens = [tokens[index] for index in keep]
            self.next_ids = torch.tensor(tokens, device=self.device).unsqueeze(1)
        if len(keep) == len(self.rows):
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.rows = [self.rows[i] for i in keep]
        if tokens is None:
            self.next_ids = self.next_ids[index]
        self.decoder.keep(index)


def run_batch(model: LoadedModel, jobs: list[Job], should_abort: Callable[[], bool]) -> None:
    """Decode jobs together until every row has ended (or been cancelled)."""
    if jobs[0].record:
        record_batch(jobs)
    with torch.inference_mode():
        batch = Batch(model, jobs)
        while True:
            _cancel_rows(batch.rows, abort=should_abort())
            batch.keep_running()
            if not batch.rows:
                return
            tokens = batch.step()
            now = time.perf_counter()
            for row, token in zip(batch.rows, tokens, strict=True):
                row.accept(token, now)
            batch.keep_running(tokens)
            if not batch.rows:
                return


def _cancel_rows(rows: list[Row], *, abort: bool) -> None:
    now = time.perf_counter()
    for row in rows:
        if row.running and (abort or row.job.cancelled):
            row.finish(FINISH_CANCELLED, now)
