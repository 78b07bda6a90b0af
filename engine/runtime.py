"""The inference engine: one model per process, continuous batching, per-request streams.

No Django imports. `Engine(config).start()` loads the model on its own thread, warms it up and
then serves batches there; `await engine.submit(request)` returns a GenerationStream whose
`async for` yields text deltas. The event loop only ever queues jobs and receives events
(through loop.call_soon_threadsafe); it never runs model code. With `EngineConfig.scheduler`
"continuous" (the default) waiting jobs join the running batch between two decoder steps;
"static" keeps a batch closed until its last row ends.

With `EngineConfig.process` the model lives in a model process of its own (engine/remote.py,
engine/worker.py): the thread then only hands it batches and relays its events, and decoding
no longer competes with the event loop for the interpreter lock. A model process that dies is
started again; the requests it was decoding fail, as they would with the serving process.
"""

import asyncio
import functools
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from engine import metrics
from engine.batcher import Job, Scheduler, prefill_group_limit
from engine.config import EngineConfig
from engine.fairness import FairQueue
from engine.generation import (
    EngineError,
    GenerationFailed,
    GenerationRequest,
    GenerationResult,
    InvalidGeneration,
    ModelNotReady,
    PromptTooLong,
    QueueFull,
    QueueTimeout,
    RowFailed,
    UnknownAdapter,
)
from engine.messages import Delta, Done, Event, Failed, TokenLogprob
from engine.model import ServedModel
from engine.remote import ModelProcess, ModelProcessExited

if TYPE_CHECKING:
    # Model code (torch, transformers) is imported by the thread that loads in this process
    # (_main), never by a serving process whose model lives in a model process.
    from engine.loading import LoadedModel
    from engine.lora import AdapterHost

__all__ = [
    "Engine",
    "EngineError",
    "GenerationFailed",
    "GenerationGroup",
    "GenerationRequest",
    "GenerationResult",
    "GenerationStream",
    "InvalidGeneration",
    "ModelNotReady",
    "PromptTooLong",
    "QueueFull",
    "QueueTimeout",
    "RowFailed",
]

logger = logging.getLogger(__name__)

LOADING, READY, FAILED, STOPPED = "loading", "ready", "failed", "stopped"
SCHEDULERS = ("continuous", "static")


class GenerationStream:
    """`async for delta in stream` yields text; then `stream.result` is the GenerationResult."""

    def __init__(self, engine: "Engine", request: GenerationRequest, prompt_ids: list[int]) -> None:
        self._engine = engine
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self.result: GenerationResult | None = None
        # Completion tokens covered by the deltas yielded so far (what a cut stream is billed).
        self.tokens_streamed = 0
        loop = asyncio.get_running_loop()
        self._job = Job(request, prompt_ids, loop=loop, deliver=self._events.put_nowait)

    @property
    def prompt_tokens(self) -> int:
        return len(self._job.prompt_ids)

    def cancel(self) -> None:
        """Stop the request (idempotent); a queued one leaves the queue at once."""
        if self._job.cancelled or self._job.finished:
            return
        self._job.cancelled = True
        self._engine._withdraw(self._job)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        try:
            while self.result is None:
                match await self._events.get():
                    case Delta(text, tokens):
                        self.tokens_streamed = tokens
                        yield text
                    case Done(result):
                        self.result = result
                    case Failed(error):
                        raise error
        finally:
            # Reached on a break, an exception or the consuming task's cancellation (a client
            # that went away): the row must stop costing model time.
            if self.result is None:
                self.cancel()

    async def complete(self) -> GenerationResult:
        """Consume the whole stream and return the result (for non-streaming callers)."""
        async for _ in self:
            pass
        assert self.result is not None  # noqa: S101 - _iterate only ends with a result
        return self.result


class GenerationGroup:
    """Rows queued together (a request's prompts times its n choices) whose events come
    through one queue: `async for index, delta in group` yields each row's Delta as it comes,
    then `results[index]` holds each row's result. The first row that fails fails the group:
    its error is raised and the other rows are cancelled (a request is answered whole or not
    at all)."""

    def __init__(
        self, engine: "Engine", rows: Sequence[tuple[GenerationRequest, list[int]]]
    ) -> None:
        self._engine = engine
        self._events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.jobs = [
            Job(request, ids, loop=loop, deliver=functools.partial(self._put, index))
            for index, (request, ids) in enumerate(rows)
        ]
        self.results: list[GenerationResult | None] = [None] * len(rows)
        # Per row: completion tokens covered by the deltas yielded so far, and (when asked)
        # the log-probabilities of its tokens.
        self.tokens = [0] * len(rows)
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in rows]
        self._running = len(rows)

    def _put(self, index: int, event: Event) -> None:
        self._events.put_nowait((index, event))

    @property
    def tokens_streamed(self) -> int:
        """Completion tokens covered by the deltas yielded so far, of every row."""
        return sum(self.tokens)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(job.prompt_ids) for job in self.jobs)

    def cancel(self) -> None:
        """Stop every row still running (idempotent); queued ones leave the queue at once."""
        for job in self.jobs:
            if not (job.cancelled or job.finished):
                job.cancelled = True
                self._engine._withdraw(job)

    def __aiter__(self) -> AsyncGenerator[tuple[int, Delta]]:
        return self._iterate()

    async def _iterate(self) -> AsyncGenerator[tuple[int, Delta]]:
        try:
            while self._running:
                index, event = await self._events.get()
                match event:
                    case Delta():
                        self.tokens[index] = event.tokens
                        self.logprobs[index] += event.logprobs
                        yield index, event
                    case Done(result):
                        self.results[index] = result
                        self._running -= 1
                    case Failed(error):
                        raise error
        finally:
            # A break, a failed row, or the consuming task's cancellation (a client that went
            # away): no row may go on costing model time.
            if self._running:
                self.cancel()


class Engine:
    """Loads one model and serves batches on one model thread; see the module docstring."""

    def __init__(self, config: EngineConfig) -> None:
        if config.scheduler not in SCHEDULERS:
            raise ValueError(
                f"EngineConfig.scheduler is one of {SCHEDULERS}, not {config.scheduler!r}"
            )
        self.config = config
        self._scheduler = Scheduler(
            max_batch=config.max_batch,
            max_wait_ms=config.max_wait_ms,
            max_queue=config.max_queue,
            max_queue_wait=config.max_queue_wait,
            token_budget=config.token_budget,
            max_prefill_tokens=config.max_prefill_tokens,
            tenant_headroom=config.tenant_headroom,
            # Newcomers join fairly between tenants, by weight (engine/fairness.py).
            queue=FairQueue[Job](),
        )
        # Between two decoder steps: newcomers for the running batch (continuous batching).
        self._admit = self._scheduler.take_joiners if config.scheduler == "continuous" else None
        self._model: ServedModel | None = None
        self._state, self._detail = STOPPED, "not started"
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._finished = threading.Event()
        self._abort = False  # set by stop() past its deadline; read by the model thread
        self._remote: ModelProcess | None = None  # the model process, when config.process
        self._starting: ModelProcess | None = None  # the model process being started
        self._load_ended = False  # stop() came while loading: the load was ended, not awaited
        # Registered adapters, name -> peft folder (set_adapters); replaced whole, never mutated.
        self._adapters: dict[str, str] = {}
        self._host: AdapterHost | None = None  # on the model thread (not config.process)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Load the model on a new thread, warm up, then serve there (returns at once)."""
        if self._thread is not None:
            return
        self._set_state(LOADING, f"loading {self.config.model}")
        self._thread = threading.Thread(target=self._main, name="inference-model", daemon=True)
        self._thread.start()

    @property
    def is_ready(self) -> bool:
        """Loaded, warmed up and serving (a cheap check for every request)."""
        return self._state == READY

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the model is ready (True) or loading ended otherwise/timed out."""
        self._ready.wait(timeout)
        return self._state == READY

    def stop(self, timeout: float = 30.0) -> bool:
        """Refuse new work, finish queued and running rows; past timeout cancel them. While
        the model loads there is nothing to drain: the load is ended, not awaited."""
        self._scheduler.close()
        if self._state == LOADING or self._load_ended:
            self._end_load()
            return True
        if self._state == READY:
            self._set_state(STOPPED, "shutting down")
        if self._thread is None:
            return True
        self._finished.wait(timeout)
        if not self._finished.is_set():
            logger.warning("inference drain exceeded %.1fs; cancelling the rest", timeout)
            self._abort = True
            if self._remote is not None:
                self._remote.abort()
            self._fail_jobs(self._scheduler.drop_all(), ModelNotReady("The engine stopped."))
            self._finished.wait(10.0)
        return self._finished.is_set()

    def _end_load(self) -> None:
        # Nothing is queued while loading (submit needs READY; a restart drops the queue), and
        # a load on a busy box outlasts any stop's grace period: a stop must not wait for it.
        self._load_ended = True
        self._set_state(STOPPED, "shutting down")
        self._ready.set()
        starting = self._starting
        if starting is not None:
            # Its start() then fails and _main_remote ends, even when the process is still being
            # spawned (a thread's load cannot be cut short: that daemon thread ends with the
            # interpreter).
            starting.cancel_start()

    def status(self) -> dict[str, Any]:
        """ok, state (loading|ready|failed|stopped), detail, plus model facts once loaded."""
        status: dict[str, Any] = {
            "ok": self._state == READY,
            "state": self._state,
            "detail": self._detail,
            "model": self.config.model,
            "queue_depth": len(self._scheduler),
        }
        if self._remote is not None:
            status["model_process"] = self._remote.pid
        if self._model is not None:
            status["device"] = self._model.device_type
            status["quantization"] = self._model.quantization
            status["load_seconds"] = round(self._model.load_seconds, 3)
            status["model_bytes"] = self._model.model_bytes
            status["cache_token_bytes"] = self._model.cache_token_bytes
        return status

    def _set_state(self, state: str, detail: str) -> None:
        self._state, self._detail = state, detail
        metrics.MODEL_READY.set(1 if state == READY else 0)

    # --- requests ----------------------------------------------------------------------------
    @property
    def max_input_tokens(self) -> int:
        return self._loaded().max_input_tokens

    @property
    def max_output_tokens(self) -> int:
        return self.config.max_output_tokens

    def count_tokens(self, text: str) -> int:
        """Prompt tokens incl. end-of-sequence; PromptTooLong for a prompt that cannot fit."""
        model = self._loaded()
        if len(text) > model.max_prompt_chars:
            raise PromptTooLong(model.max_input_tokens, char_limit=model.max_prompt_chars)
        return len(model.encode(text))

    def encode_prompt(self, text: str) -> list[int]:
        """The prompt's ids (end-of-sequence included), for GenerationRequest.prompt_ids;
        PromptTooLong for a prompt that cannot fit."""
        return self._prompt_ids(self._loaded(), text)

    # --- adapters ------------------------------------------------------------------------------
    def set_adapters(self, adapters: Mapping[str, str]) -> None:
        """The whole registry of adapters a request may name, name -> peft folder (checked by
        the caller: core/adapters.py). Returns at once; safe from any thread. Queued requests
        naming an adapter no longer registered fail with UnknownAdapter; running ones finish
        (the adapter unloads after them)."""
        self._adapters = registry = dict(adapters)
        for job in self._scheduler.drop_where(
            lambda job: bool(job.request.adapter) and job.request.adapter not in registry
        ):
            self._fail_jobs([job], UnknownAdapter(job.request.adapter))
        if (host := self._host) is not None:
            host.set_registry(registry)
        if (remote := self._remote) is not None:
            remote.set_adapters(registry)

    @property
    def adapters(self) -> dict[str, str]:
        """The registry as last set."""
        return self._adapters

    def _check_adapter(self, request: GenerationRequest) -> None:
        if request.adapter and request.adapter not in self._adapters:
            raise UnknownAdapter(request.adapter)

    async def submit(self, request: GenerationRequest) -> GenerationStream:
        """Queue a request; raises QueueFull, ModelNotReady, PromptTooLong, InvalidGeneration.
        The stream raises QueueTimeout when it waits longer than max_queue_wait to start,
        GenerationFailed (RowFailed: this row alone) or InvalidGeneration once it runs."""
        try:
            model = self._loaded()
            request.validate(self.config.max_output_tokens)
            self._check_adapter(request)
            prompt_ids = self._prompt_ids(model, request.prompt, request.prompt_ids)
            stream = GenerationStream(self, request, prompt_ids)
            self._scheduler.put(stream._job)
        except EngineError:
            metrics.REQUESTS.labels(result="rejected").inc()
            raise
        return stream

    async def submit_group(self, requests: Sequence[GenerationRequest]) -> GenerationGroup:
        """Queue requests together, all or none (the same errors as submit()); their rows can
        share a batch, and equal prompts one encoder pass (engine/decoding.py)."""
        try:
            model = self._loaded()
            rows = []
            for request in requests:
                request.validate(self.config.max_output_tokens)
                self._check_adapter(request)
                rows.append((request, self._prompt_ids(model, request.prompt, request.prompt_ids)))
            group = GenerationGroup(self, rows)
            self._scheduler.put_many(group.jobs)
        except EngineError:
            metrics.REQUESTS.labels(result="rejected").inc(len(requests))
            raise
        return group

    def token_prompt(self, ids: Sequence[int]) -> list[int]:
        """A prompt given as token ids, as the model takes it: every id must be in the
        vocabulary (InvalidGeneration otherwise), the end-of-sequence token is added unless
        it is last already (as encoding a text adds it), PromptTooLong if it cannot fit."""
        model = self._loaded()
        if not ids:
            raise InvalidGeneration("prompt", "A token-id prompt must hold at least one id.")
        prompt = list(ids) if ids[-1] == model.eos_id else [*ids, model.eos_id]
        if len(prompt) > model.max_input_tokens:  # before looking at each id
            raise PromptTooLong(model.max_input_tokens, tokens=len(prompt))
        size = model.vocab_size
        for token in prompt:
            if not 0 <= token < size:
                raise InvalidGeneration(
                    "prompt", f"Token id {token} is not in the vocabulary (0 to {size - 1})."
                )
        return prompt

    def _prompt_ids(
        self, model: ServedModel, prompt: str, known: tuple[int, ...] | None = None
    ) -> list[int]:
        """The prompt's ids (encoded now unless `known`); PromptTooLong if they cannot fit."""
        if known is not None:
            ids = list(known)
        elif len(prompt) > model.max_prompt_chars:
            raise PromptTooLong(model.max_input_tokens, char_limit=model.max_prompt_chars)
        elif (at_least := model.min_tokens(prompt)) > model.max_input_tokens:
            # Certainly too long: refused without the tokenizer's time (a flood of these costs
            # a regular-expression scan each).
            raise PromptTooLong(model.max_input_tokens, at_least=at_least)
        else:
            ids = model.encode(prompt)
        if len(ids) > model.max_input_tokens:
            raise PromptTooLong(model.max_input_tokens, tokens=len(ids))
        return ids

    def _loaded(self) -> ServedModel:
        if self._state != READY or self._model is None:
            raise ModelNotReady(self._reason())
        return self._model

    def _reason(self) -> str:
        if self._state == LOADING:
            return "The model is still loading."
        if self._state == FAILED:
            return f"The model could not be loaded: {self._detail}"
        return f"The engine is not running ({self._detail})."

    def _withdraw(self, job: Job) -> None:
        # Called on the event loop by cancel(): a job still queued leaves the queue now (its
        # capacity is free at once); one in a batch is dropped by the model thread next step.
        if self._scheduler.remove(job):
            job.finished = True
            job.send(Done(_cancelled_result(job)))
            metrics.REQUESTS.labels(result="cancelled").inc()
        elif self._remote is not None:
            self._remote.cancel(job)

    # --- the model thread --------------------------------------------------------------------
    def _main(self) -> None:
        if self.config.process:
            self._main_remote()
            return
        from engine.worker import prepare

        try:
            prepare(self.config)
            model = self._model = self._load()
        except Exception as exc:
            self._load_failed(exc)
            return
        self._now_ready()
        self._serve(model)
        self._set_state(STOPPED, "stopped")
        self._finished.set()

    def _load(self) -> "LoadedModel":
        from engine.worker import adapter_host

        host = adapter_host(self.config, self._adapters)
        self._host = host
        host.set_registry(self._adapters)  # as it is now (set_adapters may have come meanwhile)
        self._loaded_in(host.model.load_seconds)
        return host.model

    def _loaded_in(self, seconds: float) -> None:
        metrics.MODEL_LOAD_SECONDS.set(seconds)
        logger.info("inference model ready in %.1fs: %s", seconds, self.config.model)

    def _load_failed(self, exc: Exception) -> None:
        logger.error("inference model failed to load: %s", exc)
        self._set_state(FAILED, str(exc))
        self._scheduler.close()
        self._ready.set()
        self._finished.set()

    def _now_ready(self) -> None:
        assert self._model is not None  # noqa: S101 - called once a model is loaded
        if self._state == LOADING:  # not when stop() came during the load
            self._set_state(READY, f"{self.config.model} ({self._model.quantization})")
        self._ready.set()

    def _serve(self, model: "LoadedModel") -> None:
        from engine.decoding import run_batch
        from engine.prefill import beside_threads
        from engine.worker import cuda_memory

        # Once the model's depth is known; a plain int the queue reads under its lock.
        config = self.config
        self._scheduler.max_prefill_tokens = prefill_group_limit(
            config.max_prefill_tokens, config.prefill_step_tokens, model.model.config.num_layers
        )
        host = self._host
        assert host is not None  # noqa: S101 - _load made it
        # On the model thread (this one): half its torch threads, or 0 (engine/prefill.py).
        prefill_threads = beside_threads(config.prefill_thread, model)
        while True:
            # Rows parked for the other base start the next batch, on it (engine/lora.py).
            jobs = host.take_parked() or self._scheduler.take_batch()
            if not jobs:
                break
            model = self._model = host.swap()
            try:
                # Rows that join are appended to jobs: a failed batch fails them too.
                run_batch(
                    model,
                    jobs,
                    lambda: self._abort,
                    admit=self._admit,
                    prefill_step_tokens=self.config.prefill_step_tokens,
                    prefill_threads=prefill_threads,
                    adapters=host,
                    first_pass_admits=True,
                )
            except Exception as exc:
                logger.exception("inference batch of %d failed", len(jobs))
                failure = GenerationFailed(f"The model failed on this batch: {type(exc).__name__}")
                self._fail_jobs([job for job in jobs if not job.finished], failure)
            self._scheduler.track([])
            if (used := cuda_memory(model)) is not None:
                metrics.CUDA_MEMORY_BYTES.set(used)

    # --- the model process (config.process) ---------------------------------------------------
    def _main_remote(self) -> None:
        while True:
            remote = self._starting = ModelProcess(self.config, self._adapters)
            if self._load_ended:
                # stop() set the flag before reading _starting: it may have seen the last one.
                remote.cancel_start()
            try:
                self._model = remote.start()
            except Exception as exc:
                if self._load_ended:  # stop() ended the load: not a failure
                    break
                self._load_failed(exc)
                return
            self._remote = remote
            remote.set_adapters(self._adapters)  # as it is now (it may have changed meanwhile)
            if self._admit is not None:
                self._scheduler.on_put = remote.wake
            self._loaded_in(self._model.load_seconds)
            self._now_ready()
            try:
                self._serve_remote(remote)
            except ModelProcessExited as exc:
                if self._state == STOPPED:  # stop() came: no new process
                    break
                logger.error("inference: %s Starting it again.", exc)
                continue
            remote.stop()
            break
        self._set_state(STOPPED, "stopped")
        self._finished.set()

    def _serve_remote(self, remote: ModelProcess) -> None:
        # A group of newcomers sent together is one encoder pass in the model process.
        config = self.config
        self._scheduler.max_prefill_tokens = prefill_group_limit(
            config.max_prefill_tokens, config.prefill_step_tokens, remote.encoder_layers
        )
        # Wakes every second when idle to see that the process is still there: one that died
        # between batches is started again at once, not when the next request finds it gone.
        while (jobs := self._scheduler.take_batch(idle=1.0)) != []:
            if jobs is not None:
                try:
                    # Rows that join are appended to jobs: a lost process fails them too.
                    remote.run(jobs, admit=self._admit)
                except ModelProcessExited as exc:
                    self._restarting(exc, jobs)
                    raise
                finally:
                    self._scheduler.track([])
            elif (code := remote.exit_code()) is not None:
                exited = ModelProcessExited(f"The model process exited (exit code {code}).")
                self._restarting(exited, [])
                raise exited

    def _restarting(self, exc: ModelProcessExited, batch: list[Job]) -> None:
        """The model process is gone: not ready until a new one is (waiters wait for it); its
        batch fails, the queue is refused (the new process needs as long as the first)."""
        if self._state == READY:
            self._ready.clear()
            self._set_state(LOADING, f"restarting the model process ({exc})")
        self._remote = None
        self._scheduler.on_put = None
        failure = GenerationFailed("The model process exited during this batch.")
        self._fail_jobs([job for job in batch if not job.finished], failure)
        self._fail_jobs(self._scheduler.drop_all(), ModelNotReady(self._reason()))

    def _fail_jobs(self, jobs: list[Job], error: EngineError) -> None:
        for job in jobs:
            job.finished = True
            metrics.REQUESTS.labels(result="failed").inc()  # counted before anyone hears of it
            job.send(Failed(error))


def _cancelled_result(job: Job) -> GenerationResult:
    waited = time.perf_counter() - job.submitted_at
    return GenerationResult(
        text="",
        prompt_tokens=len(job.prompt_ids),
        completion_tokens=0,
        finish_reason="cancelled",
        queue_seconds=waited,
        first_token_seconds=None,
        generation_seconds=0.0,
    )
