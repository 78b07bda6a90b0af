"""One batch on the model thread: encoder once, then decoder steps over the KV cache
(engine/t5_decoder.py).

Each row stops on its own (end of sequence, its max_tokens, its stop strings, cancellation);
finished rows leave the batch (their cache rows are dropped), so the remaining rows decode
at the smaller batch size. With continuous batching (an `admit` callback) newcomers join
between two steps: their encoder runs once, together, and their caches go beside the running
rows'. Either way the batch ends when no row is left (with continuous batching the next
one starts at once if jobs wait).

A fault in one row's own work (its generator, detokenizer, stop strings, sampling, events)
fails that row alone (InvalidGeneration for a bad parameter, RowFailed otherwise); only a
fault in the shared part (encoder, decoder step) fails the batch.
"""

import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Sequence

import torch

from engine import metrics
from engine.batcher import Admit, Job
from engine.detokenize import IncrementalDetokenizer, StopStringFilter
from engine.generation import (
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    SEED_MESSAGE,
    EngineError,
    GenerationRequest,
    GenerationResult,
    InvalidGeneration,
    RowFailed,
)
from engine.loading import LoadedModel
from engine.lora import AdapterHost, Tables, join_tables, keep_rows
from engine.messages import Delta, Done, Failed, TokenLogprob
from engine.prefill import Prefill, PrefillThread, split_passes, start_prefill_thread
from engine.t5_decoder import T5DecoderStep

logger = logging.getLogger(__name__)

CACHE_START = 128
# A decoder step of fewer rows runs on the model thread alone, whatever INFERENCE_THREADS says:
# on 2 CPU cores (flan-t5-base's shape, torch-int8) one thread took 0.75-0.87x the time of two
# below 16 rows, as long at 16 and 1.05x at 24 (docs/engine.md, "Threads"): a small step's
# ~130 parallel regions each cost a wake-up of the partner thread and saved less.
STEP_THREADS_FROM_ROWS = 16
# OpenAI's floor for a log-probability: a token the model rules out (-inf) stays valid JSON.
LOGPROB_FLOOR = -9999.0
FAILED = "failed"  # a row's end when its own work raised (never a client's finish_reason)


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
        self.name_of = model.piece
        # With request.logprobs: the tokens accepted since the last Delta (sent with it).
        self.logprobs: list[TokenLogprob] = []

    @property
    def running(self) -> bool:
        return self.finish_reason is None

    def accept(self, token: int, now: float, scored: TokenLogprob | None = None) -> None:
        """Take the row's next token: stream its text or finish the row. `scored`: its
        log-probability, when the request asked (its text is filled in here)."""
        if self.first_token_at is None:
            self.first_token_at = now
            if self.job.record:
                metrics.TIME_TO_FIRST_TOKEN.observe(now - self.job.submitted_at)
        if token == self.eos_id and not self.request.ignore_eos:
            # The end of sequence has no text: like OpenAI, no log-probability entry either.
            self.detokenizer.ids.append(token)
            return self.finish(FINISH_STOP, now)
        text = self.detokenizer.push(token)
        if scored is not None:
            self.logprobs.append(TokenLogprob(token, text, scored.logprob, scored.top))
        piece = self.stops.feed(text)
        if self.stops.stopped:
            return self.finish(FINISH_STOP, now, piece)
        if len(self.detokenizer.ids) >= self.request.max_tokens:
            return self.finish(FINISH_LENGTH, now, piece)
        if piece:
            self.send(piece)

    def send(self, piece: str) -> None:
        """A Delta with the piece and the log-probabilities not sent yet."""
        logprobs = tuple(self.logprobs)
        self.logprobs.clear()
        self.job.send(Delta(piece, len(self.detokenizer.ids), logprobs))

    def score(self, logits: torch.Tensor, token: int) -> TokenLogprob:
        """The token's log-probability under the model (log-softmax of its logits in float32,
        before temperature and top_p) and the request's most likely alternatives."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        chosen = max(float(logprobs[token]), LOGPROB_FLOOR)
        count = self.request.logprobs or 0
        if not count:
            return TokenLogprob(token, "", chosen)
        values, ids = logprobs.topk(count)
        top = tuple(
            TokenLogprob(index, self.name_of(index), max(value, LOGPROB_FLOOR))
            for value, index in zip(values.tolist(), ids.tolist(), strict=True)
        )
        return TokenLogprob(token, "", chosen, top)

    def advance(self, logits: torch.Tensor, greedy: int, now: float) -> int:
        """Choose the row's next token and take it; a fault here ends this row alone."""
        try:
            token = (
                greedy if self.generator is None else sample(logits, self.request, self.generator)
            )
            scored = None if self.request.logprobs is None else self.score(logits, token)
            self.accept(token, now, scored)
        except Exception as exc:
            self.fail(exc)
            return greedy  # never decoded: the row leaves the batch
        return token

    def cancel(self, now: float) -> None:
        """End the row as cancelled; a fault while flushing its text ends it alone."""
        try:
            self.finish(FINISH_CANCELLED, now)
        except Exception as exc:
            self.fail(exc)

    def fail(self, exc: Exception) -> None:
        """End the row with an error event (unless its result went out already)."""
        self.finish_reason = FAILED
        fail_job(self.job, exc)

    def finish(self, reason: str, now: float, piece: str = "") -> None:
        """End the row: send the rest of its text, then its result."""
        self.finish_reason = reason
        held = self.detokenizer.flush()
        if held and self.logprobs:
            # Bytes that never formed a character: the text of the last tokens (a byte run,
            # whose entries are still here: a run's tokens complete no text, so no Delta has
            # gone out since), so the tokens' texts still add up to the text.
            last = self.logprobs[-1]
            self.logprobs[-1] = dataclasses.replace(last, text=last.text + held)
        piece += self.stops.feed(held)
        piece += self.stops.finish()
        if piece or self.logprobs:
            self.send(piece)
        result = self._result(reason, now)
        if self.job.record:  # before Done: whoever sees the result sees it counted
            metrics.record_result(result)
        self.job.finished = True
        self.job.send(Done(result))

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


def fail_job(job: Job, exc: Exception) -> None:
    """Tell one job its own work failed (counted first, as a result is); its batch goes on."""
    if job.finished:
        logger.exception("inference: a row failed after its result was sent")
        return
    if isinstance(exc, EngineError):
        logger.warning("inference: a row was refused: %s", exc)
        error: EngineError = exc
    else:
        logger.exception("inference: a row failed; its batch goes on")
        error = RowFailed(f"The model failed on this request alone ({type(exc).__name__}).")
    job.finished = True
    if job.record:
        metrics.REQUESTS.labels(result="failed").inc()
    job.send(Failed(error))


def _generator(request: GenerationRequest) -> torch.Generator | None:
    if request.temperature == 0:
        return None  # greedy
    # One generator per row: a seeded request draws the same numbers whatever its batch-mates.
    seed = request.seed if request.seed is not None else secrets.randbits(63)
    try:
        return torch.Generator(device="cpu").manual_seed(seed)
    except (ValueError, TypeError, RuntimeError, OverflowError) as exc:
        # A seed torch refuses (validate() keeps them out; this is for callers that skip it).
        raise InvalidGeneration("seed", SEED_MESSAGE) from exc


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


class Batch:
    """The rows still decoding and their caches; rows that end are dropped from all of them,
    rows that join are added to all of them."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.device = model.device
        self.rows: list[Row] = []
        self.decoder: T5DecoderStep | None = None
        self.next_ids = torch.empty((0, 1), dtype=torch.long, device=model.device)
        # The rows' decoder tables (engine/lora.py): stacked as rows join, indexed as they leave.
        self.tables: Tables = {}

    def join(self, prefill: Prefill) -> None:
        """Add newcomers whose encoder pass has run (the rest of it runs here); those still
        running decode from the next step on."""
        rows, encoded, mask, cross = prefill.running()
        if not rows:
            return
        lora = self.model.lora
        tables: Tables | None = None
        if lora is not None:
            tables = lora.gather([row.job.adapter for row in rows], "decoder.")
        with contextlib.nullcontext() if lora is None else lora.using(tables):
            # Cross-attention's keys and values: with the newcomers' adapters, once.
            if self.decoder is None:
                # No row feeds more than max_tokens inputs to the decoder; start at most 128
                # positions (the buffers double when full), so a long max_tokens that ends
                # early costs nothing.
                capacity = min(CACHE_START, max(row.request.max_tokens for row in rows))
                self.decoder = T5DecoderStep(
                    self.model.model, encoded, mask, capacity, self.model.attention, cross
                )
            else:
                self.decoder.extend(encoded, mask, cross)
        if lora is not None and tables is not None:
            kept = {key: pair for key, pair in tables.items() if not lora.units[key].cross_kv}
            if self.rows:
                self.tables = join_tables(self.tables, len(self.rows), kept, len(rows), lora)
            else:
                self.tables = kept
        self.rows += rows
        start = torch.full((len(rows), 1), self.model.decoder_start_id, dtype=torch.long)
        self.next_ids = torch.cat([self.next_ids, start.to(self.device)])

    def step(self, beside: int = 0) -> list[int]:
        """One decoder step for every row (a fault here fails the batch); each row then
        chooses and takes its next token on its own. Returns each row's token. beside: the
        torch threads an encoder pass holds meanwhile (engine/prefill.py)."""
        assert self.decoder is not None  # noqa: S101 - only stepped with rows
        lora = self.model.lora
        with _step_threads(len(self.rows), beside):
            if lora is None:
                logits = self.decoder(self.next_ids)
            else:
                with lora.using(self.tables):
                    logits = self.decoder(self.next_ids)
        greedy = logits.argmax(dim=-1).tolist()
        now = time.perf_counter()
        return [
            row.advance(logits[index], greedy[index], now) for index, row in enumerate(self.rows)
        ]

    def keep_running(self, tokens: list[int] | None = None) -> None:
        """Drop ended rows from the batch; tokens become the next step's inputs."""
        keep = [index for index, row in enumerate(self.rows) if row.running]
        if tokens is not None:
            tokens = [tokens[index] for index in keep]
            self.next_ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
            self.next_ids = self.next_ids.view(len(tokens), 1)
        if len(keep) == len(self.rows):
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.rows = [self.rows[i] for i in keep]
        if tokens is None:
            self.next_ids = self.next_ids[index]
        if not self.rows:
            self.decoder = None  # the next rows start on fresh caches (and a fresh clock)
            self.tables = {}
        elif self.decoder is not None:
            self.decoder.keep(index)
            if self.tables:
                self.tables = keep_rows(self.tables, index)


def _step_threads(rows: int, beside: int = 0) -> contextlib.AbstractContextManager[None]:
    """One torch thread for a step of fewer than STEP_THREADS_FROM_ROWS rows; a larger one
    leaves `beside` threads to an encoder pass running meanwhile. Then back."""
    threads = torch.get_num_threads()
    return _torch_threads(1 if rows < STEP_THREADS_FROM_ROWS else max(1, threads - beside))


@contextlib.contextmanager
def _torch_threads(wanted: int) -> Iterator[None]:
    """The calling thread's torch threads set to `wanted` for the block, then back."""
    threads = torch.get_num_threads()
    if wanted == threads:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_batch(
    model: LoadedModel,
    jobs: list[Job],
    should_abort: Callable[[], bool],
    *,
    admit: Admit | None = None,
    stepped: Callable[[float], None] | None = None,
    prefill_step_tokens: int = 0,
    prefill_threads: int = 0,
    adapters: AdapterHost | None = None,
    first_pass_admits: bool = False,
) -> None:
    """Decode jobs together until every row has ended (or been cancelled). With `admit`,
    newcomers join between steps (and are appended to `jobs`, so a caller that fails the
    batch fails them too): their encoder pass runs beside the steps on a thread of
    `prefill_threads` torch threads, or with 0 `prefill_step_tokens` encoder tokens' worth
    of layers per pause (0: all at once), while the running rows go on decoding; `stepped`
    gets each iteration's seconds (encoder work and step). With `adapters`, a row whose
    adapter is not held yet is parked while it loads (the others decode), and joins once it
    is; the batch takes no newcomers once the host has the other base ready (it then ends).
    With `first_pass_admits` and a prefill thread, the batch's first pass (no row decodes
    yet) runs a layer at a time on this thread, asking `should_abort` between two layers, and
    newcomers are admitted there too: their passes begin beside it instead of after it."""
    record = jobs[0].record
    if record:
        metrics.record_batch(jobs)
    host = adapters
    held: list[Row] = []  # rows holding an adapter: released when they end

    def rows_of(new: list[Job]) -> list[Row]:
        if host is not None:
            new = host.admit(new)
        rows = start_rows(model, new)
        if host is not None:
            held.extend(row for row in rows if row.job.adapter_key is not None)
            for job in new:
                if job.finished:  # its setup failed (start_rows)
                    host.release(job)
        return rows

    def joined(new: list[Job]) -> list[Row]:
        return rows_of(_joined(jobs, new, record))

    beside = start_prefill_thread(prefill_threads) if prefill_threads > 0 else None
    passes: list[Prefill] = []  # the newcomers' encoder passes under way, in order

    def first_pass(lead: Prefill, beside: PrefillThread, admit: Admit) -> None:
        """The batch's first pass on this thread a layer at a time, nobody decoding yet.
        Between two layers: cancels and aborts are read, and newcomers admitted as in the
        loop below (once every pass under way has begun), their passes on the PrefillThread,
        to which the first pass leaves its threads while one runs there. So a request that
        comes during a long first pass starts its own pass at the next layer, not after."""
        while True:
            running_beside = any(not prefill.ended.is_set() for prefill in passes)
            threads = torch.get_num_threads() - (beside.threads if running_beside else 0)
            with _torch_threads(max(1, threads)):
                if lead.run(1):
                    return
            abort = should_abort()
            _cancel_rows(lead.rows, abort=abort)
            for prefill in passes:
                _cancel_rows(prefill.rows, abort=abort)
            if abort or not lead.waiting:
                return  # the loop below gives up the passes whose rows all left
            if (host is not None and host.swap_ready) or not _admitting(passes, True):
                continue
            holding = [row.job for prefill in [lead, *passes] for row in prefill.rows]
            urgent = joined(admit(holding, True))  # the headroom's: no faster path here
            start_passes(admit, holding + [row.job for row in urgent], urgent)

    def start_passes(admit: Admit, holding: list[Job], rows: Sequence[Row] = ()) -> None:
        """The newcomers the queue lets join beside `holding` (after `rows`, admitted
        already) into passes under way: on the PrefillThread, or run in the pauses."""
        for group in _passes([*rows, *joined(admit(holding, False))], beside is not None):
            passes.append(Prefill(model, group))
            if beside is not None:
                beside.submit(passes[-1])

    try:
        with torch.inference_mode():
            batch = Batch(model)
            if first := rows_of(jobs):
                lead = Prefill(model, first)
                if first_pass_admits and beside is not None and admit is not None:
                    first_pass(lead, beside, admit)
                if lead.waiting:
                    batch.join(lead)
            while True:
                started = time.perf_counter()
                abort = should_abort()
                _cancel_rows(batch.rows, abort=abort)
                batch.keep_running()
                for prefill in passes:
                    _cancel_rows(prefill.rows, abort=abort)
                    if not prefill.waiting:
                        prefill.given_up = True  # every newcomer was cancelled meanwhile
                passes = [prefill for prefill in passes if not prefill.given_up]
                if host is not None:
                    _settle(model, host, batch, held, abort)
                # After the leaves: a row that ended or was cancelled frees its place at once.
                # A batch whose rows all ended ends (the next one starts at once if jobs
                # wait). Newcomers wait while passes are under way (their rows count in),
                # except the headroom's, encoded whole here and decoding from this step on.
                parked = [] if host is None else host.parked
                swapping = host is not None and host.swap_ready
                if admit is not None and not abort and not swapping and (batch.rows or parked):
                    holding = [row.job for row in batch.rows] + parked
                    holding += [row.job for prefill in passes for row in prefill.rows]
                    if rows := joined(admit(holding, True)):
                        now = Prefill(model, rows)
                        now.run(0)
                        batch.join(now)
                        holding += [row.job for row in now.rows]
                    if _admitting(passes, beside is not None):
                        start_passes(admit, holding)
                # Passes join as they end: on the PrefillThread whichever have (a shorter one
                # may end first), in pauses the first one's layers a pause, in order.
                if beside is not None:
                    for prefill in _ended(beside, passes, wait=not batch.rows):
                        passes.remove(prefill)
                        batch.join(prefill)
                elif passes and _prefilled(passes[0], prefill_step_tokens, bool(batch.rows)):
                    batch.join(passes.pop(0))
                if not batch.rows:
                    if host is not None and host.parked and not swapping and not abort:
                        host.wait(0.05)  # rows wait for their adapter: nothing else runs
                        continue
                    return
                held_beside = 0 if beside is None or not passes else beside.threads
                batch.keep_running(batch.step(held_beside))
                if stepped is not None:
                    stepped(time.perf_counter() - started)
                elif record:
                    metrics.STEP_SECONDS.observe(time.perf_counter() - started)
    finally:
        for prefill in passes:
            prefill.given_up = True  # a pass beside the steps stops at its next layer
        if host is not None:
            for row in held:
                host.release(row.job)


def _passes(rows: list[Row], beside: bool) -> list[list[Row]]:
    """The newcomers' encoder passes: by prompt length on the PrefillThread (split_passes);
    in pauses one pass, padded, as each pause runs one pass's layers within its token budget
    (several smaller passes would leave part of each pause's budget unused and take more
    pauses in all)."""
    if beside:
        return split_passes(rows)
    return [rows] if rows else []


def _admitting(passes: list[Prefill], beside: bool) -> bool:
    """Whether the next newcomers are admitted now: when no pass is under way, or on the
    PrefillThread once every pass under way has begun (theirs then waits on the thread, which
    starts it the moment the one running ends, not a step later, or between two of its layers
    when it is less work than what is left of it). So at most one admission waits for the
    thread, and the queue, not the thread, orders the rest."""
    return not passes or (beside and all(prefill.begun.is_set() for prefill in passes))


def _prefilled(prefill: Prefill, step_tokens: int, decoding: bool) -> bool:
    """Whether the newcomers' pass, run in this pause (the layers step_tokens buy), is done,
    so they join now. With no row decoding nobody waits on a step: the pass runs to its end."""
    return prefill.run(step_tokens if decoding else 0)


def _ended(beside: PrefillThread, passes: list[Prefill], wait: bool) -> list[Prefill]:
    """The passes that have ended on the PrefillThread beside the steps (a fault in one fails
    the batch here); with `wait` (no row decoding: nobody waits on a step) at least one, once
    it has."""
    if wait and passes:
        beside.wait_any(passes)
    ended = [prefill for prefill in passes if prefill.ended.is_set()]
    for prefill in ended:
        if prefill.error is not None:
            raise prefill.error
    return ended


def _settle(
    model: LoadedModel, host: AdapterHost, batch: Batch, held: list[Row], abort: bool
) -> None:
    """Between two steps: release the adapters of rows that ended; parked rows whose adapter
    is now held join (their pass runs whole here), those whose load failed fail."""
    if held and any(not row.running for row in held):
        for row in [row for row in held if not row.running]:
            host.release(row.job)
            held.remove(row)
    if abort:
        cancel_jobs(model, host.take_parked())
    ready, failed = host.tick()
    for job, exc in failed:
        fail_job(job, exc)
    if ready:
        rows = start_rows(model, ready)
        held.extend(row for row in rows if row.job.adapter_key is not None)
        if rows:
            now = Prefill(model, rows)
            now.run(0)
            batch.join(now)


def _joined(jobs: list[Job], joiners: list[Job], record: bool) -> list[Job]:
    """Newcomers counted in the batch's jobs (a failed batch fails them too)."""
    jobs += joiners
    if joiners and record:
        metrics.record_join(joiners)
    return joiners


def start_rows(model: LoadedModel, jobs: list[Job]) -> list[Row]:
    """A Row per job; a job whose own setup raises (a seed torch refuses, say) fails alone."""
    started = time.perf_counter()
    rows = []
    for job in jobs:
        try:
            rows.append(Row(job, model, started))
        except Exception as exc:
            fail_job(job, exc)
    return rows


def cancel_jobs(model: LoadedModel, jobs: list[Job]) -> None:
    """End jobs that never ran as cancelled (newcomers left over by an abort)."""
    now = time.perf_counter()
    for row in start_rows(model, jobs):
        row.cancel(now)


def _cancel_rows(rows: list[Row], *, abort: bool) -> None:
    now = time.perf_counter()
    for row in rows:
        if row.running and (abort or row.job.cancelled):
            row.cancel(now)
