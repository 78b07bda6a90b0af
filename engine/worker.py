"""The model's side of the engine: load, warm up and decode batches, on the engine's model thread
or in a model process of its own (EngineConfig.process; engine/remote.py is the other end).

No Django imports, and no import of engine.runtime: this module is what a spawned model process
imports first. What it receives and answers is in engine/messages.py.

Why a process: the event loop and the decoding loop both run Python, and in one process they
share one interpreter lock. A request path busy with a flood of refusals then slows every
decoder step (each torch call gives the lock up and must win it back), and a decoder step holding
the lock delays the answers to that flood. `python loadtest/bench_gil.py` measures both.
"""

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection

from engine.batcher import Job, prefill_fits, prefill_group_limit
from engine.config import EngineConfig
from engine.decoding import cancel_jobs, run_batch
from engine.generation import GenerationFailed, GenerationRequest
from engine.loading import LoadedModel, configure_threads, load_model
from engine.lora import AdapterHost
from engine.messages import (
    Abort,
    Batch,
    BatchDone,
    BatchRow,
    Cancel,
    Configure,
    Event,
    Events,
    Failed,
    Join,
    LoadFailed,
    ModelFacts,
    Ready,
    SetAdapters,
    Stop,
    ToModel,
)
from engine.model import settle_heap
from engine.prefill import beside_threads

logger = logging.getLogger("engine.worker")

WARMUP = GenerationRequest(prompt="Warm up.", max_tokens=2, temperature=0.0)


def lower_thread_priority(increment: int) -> int:
    """Raise the calling thread's nice value by `increment` (Linux: nice is per thread, and
    threads it creates inherit it); its new value, or the old one where that is not possible."""
    tid = threading.get_native_id()
    current = os.getpriority(os.PRIO_PROCESS, tid)
    if increment <= 0:
        return current
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + increment))
    except OSError as exc:
        logger.warning("inference: cannot lower the model thread's priority (%s)", exc)
        return current
    return os.getpriority(os.PRIO_PROCESS, tid)


def pin_thread(cpus: tuple[int, ...]) -> set[int]:
    """Keep the calling thread (and the threads it starts) on these CPUs; its CPUs after."""
    if cpus:
        try:
            os.sched_setaffinity(0, cpus)  # 0: the calling thread (Linux)
        except OSError as exc:
            logger.warning("inference: cannot pin the model thread to CPUs %s (%s)", cpus, exc)
    return os.sched_getaffinity(0)


def prepare(config: EngineConfig) -> None:
    """Priority, CPUs and torch threads of the thread that will decode (before it loads)."""
    lower_thread_priority(config.nice)
    pin_thread(config.cpus)
    configure_threads(config.threads)


def load_warm(config: EngineConfig, per_row: bool = False) -> LoadedModel:
    """Load the model and run one tiny generation through the real path: first-call
    allocations and kernel selection happen here, not in the first client's latency.
    per_row: the base without the adapter merged, with the per-row side path (engine/lora.py)."""
    started = time.perf_counter()
    model = load_model(
        config.model,
        adapter=config.adapter,
        quantization=config.quantization,
        device=config.device,
        max_input_tokens=config.max_input_tokens,
        allow_download=config.allow_download,
        per_row=per_row,
    )
    if config.warmup:
        warmup = WarmupJob(model.encode(WARMUP.prompt))
        run_batch(model, [warmup], lambda: False)
        if warmup.error is not None:  # a row's fault fails it alone: here, it fails the load
            raise warmup.error
    model.load_seconds = time.perf_counter() - started
    return model


def adapter_host(config: EngineConfig, adapters: Mapping[str, str]) -> AdapterHost:
    """Load the base the registry asks for (merged when empty) and its host (engine/lora.py);
    the other base is loaded on a thread of the host's when the registry turns."""

    def loader(per_row: bool) -> LoadedModel:
        # On the host's loader thread: torch's threads as the model thread's.
        configure_threads(config.threads)
        return load_warm(config, per_row)

    return AdapterHost(config, load_warm(config, bool(adapters)), loader, adapters)


class WarmupJob(Job):
    """The warm-up pass: nobody listens to its text, but an error it gets is kept."""

    def __init__(self, prompt_ids: list[int]) -> None:
        super().__init__(WARMUP, prompt_ids, record=False)
        self.error: BaseException | None = None

    def send(self, event: Event) -> None:
        if isinstance(event, Failed):
            self.error = event.error


def cuda_memory(model: LoadedModel) -> int | None:
    """Bytes the model's tensors hold on its GPU; None on the CPU."""
    if model.device.type != "cuda":
        return None
    import torch

    with contextlib.suppress(RuntimeError):
        return int(torch.cuda.memory_allocated(model.device))
    return None


# --- the model process (its messages: engine/messages.py) ------------------------------------


class RemoteJob(Job):
    """A job in the model process: its events go to an outbox the worker sends once per step."""

    def __init__(self, row: BatchRow, outbox: list[tuple[int, Event]]) -> None:
        super().__init__(row.request, row.prompt_ids, record=False)  # the parent records them
        self.id = row.job_id
        self.cancelled = row.cancelled
        # When the serving process queued it (perf_counter is the system's monotonic clock
        # on Linux, one for every process): queue time and time to first token include the
        # wait in its queue.
        self.submitted_at = row.submitted_at
        self._outbox = outbox

    def send(self, event: Event) -> None:
        self._outbox.append((self.id, event))


class Worker:
    """Serves batches from the parent until told to stop or the parent goes away."""

    def __init__(
        self,
        conn: Connection,
        host: AdapterHost,
        max_prefill_tokens: int = 0,
        prefill_step_tokens: int = 0,
        prefill_thread: str = "off",
    ) -> None:
        self.conn, self.host, self.model = conn, host, host.model
        model = host.model
        layers = int(model.model.config.num_layers)
        self.max_prefill_tokens = prefill_group_limit(
            max_prefill_tokens, prefill_step_tokens, layers
        )
        self.prefill_step_tokens = prefill_step_tokens
        # Made on the model thread (this one): half its torch threads, or 0 (engine/prefill.py).
        self.prefill_threads = beside_threads(prefill_thread, model)
        self.jobs: dict[int, RemoteJob] = {}
        self.waiting: deque[RemoteJob] = deque()  # sent by Join, not yet in the batch
        self.urgent: deque[RemoteJob] = deque()  # the same, sent by an urgent Join
        self.outbox: list[tuple[int, Event]] = []
        self.steps: list[float] = []  # seconds of the steps since the last Events
        self.started: list[int] = []  # Join's rows whose pass began since the last Events
        self.aborted = self.stopping = False

    def serve(self) -> None:
        while not self.stopping:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                return  # the parent is gone
            match message:
                # A Join that crossed the BatchDone of the batch it meant starts one.
                case Batch(rows) | Join(rows):
                    self.run(rows)
                case _:
                    self.handle(message)

    def handle(self, message: ToModel) -> None:
        match message:
            case Join(rows, urgent):
                for row in rows:
                    job = self.jobs[row.job_id] = RemoteJob(row, self.outbox)
                    (self.urgent if urgent else self.waiting).append(job)
            case Cancel(job_id) if job_id in self.jobs:
                self.jobs[job_id].cancelled = True
            case Abort():
                self.aborted = True
            case SetAdapters(adapters):
                self.host.set_registry(dict(adapters))
            case Stop():
                self.stopping = True

    def poll(self) -> bool:
        """Between two decoder steps: send the last step's events, read cancels; abort?"""
        self.flush()
        while self.conn.poll():
            self.handle(self.conn.recv())
        return self.aborted

    def admit(self, running: Sequence[Job], urgent: bool = False) -> list[Job]:
        """Between two steps: the rows sent by Join (urgent: by an urgent Join) that start
        now. The server bounded them by rows and tokens; several Joins may come during one
        step, so the encoder budget between two steps is kept here."""
        limit = self.max_prefill_tokens
        waiting = self.urgent if urgent else self.waiting
        taken: list[Job] = []
        widest = 0
        while waiting:
            width = max(widest, len(waiting[0].prompt_ids))
            if taken and not prefill_fits(len(taken) + 1, width, limit):
                break
            job = waiting.popleft()
            self.started.append(job.id)  # told with the next Events: the server sends more
            taken.append(job)
            widest = width
        return taken

    def flush(self) -> None:
        if self.outbox or self.steps or self.started:
            events = Events(tuple(self.outbox), tuple(self.steps), tuple(self.started))
            self.outbox.clear()
            self.steps.clear()
            self.started.clear()
            self.conn.send(events)

    def run(self, rows: tuple[BatchRow, ...]) -> None:
        self.aborted = False
        self.jobs = {row.job_id: RemoteJob(row, self.outbox) for row in rows}
        jobs: list[Job] = list(self.jobs.values())
        while jobs:
            model = self.host.swap()
            if model is not self.model:  # the other base: the old one's objects can go
                self.model = model
                settle_heap(release=True)
            self._decode(jobs)
            # Rows sent by Join as the batch's last row ended start a batch of their own (an
            # abort ends them cancelled), and so do rows parked for the other base.
            jobs = [*self.host.take_parked(), *self.urgent, *self.waiting]
            self.waiting.clear()
            self.urgent.clear()
            if self.aborted:
                cancel_jobs(self.model, jobs)
                jobs = []
        self.flush()
        self.jobs = {}
        self.conn.send(BatchDone(cuda_memory(self.model)))

    def _decode(self, jobs: list[Job]) -> None:
        try:
            run_batch(
                self.model,
                jobs,
                self.poll,
                admit=self.admit,
                stepped=self.steps.append,
                prefill_step_tokens=self.prefill_step_tokens,
                prefill_threads=self.prefill_threads,
                adapters=self.host,
                first_pass_admits=True,
            )
        except (EOFError, OSError):
            raise  # the parent is gone: nothing to tell it
        except Exception as exc:
            logger.exception("inference batch of %d failed", len(self.jobs))
            failure = GenerationFailed(f"The model failed on this batch: {type(exc).__name__}")
            for job in self.jobs.values():
                if not job.finished:
                    job.finished = True
                    job.send(Failed(failure))
            self.waiting.clear()  # failed with the rest


def facts(model: LoadedModel, heap_frozen: int = 0) -> ModelFacts:
    """What the parent needs to encode prompts and report the model (the tokenizer as JSON)."""
    return ModelFacts(
        tokenizer=model.tokenizer.backend_tokenizer.to_str(),
        device=str(model.device),
        quantization=model.quantization,
        decoder_start_id=model.decoder_start_id,
        eos_id=model.eos_id,
        pad_id=model.pad_id,
        max_input_tokens=model.max_input_tokens,
        load_seconds=model.load_seconds,
        encoder_layers=int(model.model.config.num_layers),
        heap_frozen=heap_frozen,
        model_bytes=model.model_bytes,
        cache_token_bytes=model.cache_token_bytes,
    )


PARENT_CHECK_SECONDS = 0.5


def exit_with_parent(parent: int, interval: float = PARENT_CHECK_SECONDS) -> threading.Thread:
    """End this process as soon as the server process `parent` that started it is gone
    (SIGKILLed, or exited before it could stop us, e.g. while a download hangs): an orphaned
    model process would hold its memory and cores for ever. Linux reparents an orphan, so
    getppid stops being `parent` (the parent passes its pid: it may be gone before we look)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    thread = threading.Thread(target=watch, name="inference-parent-watch", daemon=True)
    thread.start()
    return thread


def main(conn: Connection, parent: int | None = None) -> None:
    """The model process: its configuration comes first on the connection, then batches."""
    exit_with_parent(os.getppid() if parent is None else parent)
    try:
        configure: Configure = conn.recv()
    except (EOFError, OSError):
        return
    config = configure.config
    logging.basicConfig(
        level=configure.log_level,
        format="%(asctime)s %(levelname)s %(name)s [model process] %(message)s",
    )
    try:
        prepare(config)
        host = adapter_host(config, dict(configure.adapters))
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(LoadFailed(str(exc) or type(exc).__name__))
        return
    try:
        conn.send(Ready(facts(host.model, settle_heap())))
        Worker(
            conn,
            host,
            config.max_prefill_tokens,
            config.prefill_step_tokens,
            config.prefill_thread,
        ).serve()
    except (EOFError, OSError):
        pass  # the parent went away mid-batch


if __name__ == "__main__":  # python -m engine.worker FD [PARENT_PID] (from engine/remote.py)
    import sys

    main(Connection(int(sys.argv[1])), int(sys.argv[2]) if len(sys.argv) > 2 else None)
