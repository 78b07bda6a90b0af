"""The engine's handle on a model process (EngineConfig.process): starts it, hands it batches and
relays their events to the jobs' event loops. The other end is engine/worker.py.

The queue, admission to it, the choice of the rows that join a running batch (continuous
batching) and every metric stay in the serving process; the model process only loads and
decodes. One batch is out at a time, as on the model thread; while it runs, the engine thread
waits on the connection and on a wake-up the queue pokes on every put, and between the two
sends newcomers (Join) that the model process reads between two decoder steps.
"""

import contextlib
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Mapping
from multiprocessing.connection import Connection, wait
from pathlib import Path

from engine import metrics
from engine.batcher import Admit, Job
from engine.config import EngineConfig
from engine.generation import ModelLoadError
from engine.messages import (
    Abort,
    Batch,
    BatchDone,
    BatchRow,
    Cancel,
    Configure,
    Done,
    Event,
    Events,
    Failed,
    FromModel,
    Join,
    LoadFailed,
    ModelFacts,
    SetAdapters,
    Stop,
    ToModel,
)
from engine.model import ServedModel

logger = logging.getLogger(__name__)


class ModelProcessExited(Exception):
    """The model process ended while it had work (killed, or out of memory)."""


class ModelProcess:
    """One model process; `start()` blocks until it is ready, `run()` serves one batch."""

    def __init__(self, config: EngineConfig, adapters: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.adapters = dict(adapters or {})  # the registry it starts with
        self.process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()  # the engine thread and the event loop both send
        # cancel() may come from another thread before, during or after the spawn: under this
        # lock a process that is being started is killed as soon as it exists.
        self._spawn_lock = threading.Lock()
        self._cancelled = False
        self._running: dict[int, Job] = {}  # sent and not ended; under the send lock
        # Sent by Join, their encoder pass not begun (under the send lock): while any is, no
        # more newcomers are sent, so the fair queue here, not a FIFO in the model process,
        # picks who goes next (at most one group waits there while a pass runs).
        self._unstarted: set[int] = set()
        self.encoder_layers = 0  # the model's, once started
        self.heap_frozen = 0  # objects its collector skips (model.settle_heap), once started
        self._ids = itertools.count(1)
        # Poked by the queue on every put (from the event loop): the engine thread, waiting on
        # the connection, then looks for newcomers. Non-blocking: a full socket is a wake-up
        # pending already, and the event loop must never wait here.
        self._waker, self._woken = socket.socketpair()
        self._waker.setblocking(False)
        self._woken.setblocking(False)

    def cancel_start(self) -> None:
        """End a start in progress (from any thread): the process is killed now, or as soon as
        it is spawned, and start() then raises ModelLoadError."""
        with self._spawn_lock:
            self._cancelled = True
            if self.process is not None:
                self.process.kill()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> ServedModel:
        """Start the process and wait for its model; ModelLoadError when it cannot load."""
        # A fresh interpreter (python -m engine.worker), not multiprocessing: a fork would
        # copy a process with threads, and a spawn would import the server's main module again.
        ours, theirs = socket.socketpair()
        with theirs, self._spawn_lock:
            fd = theirs.fileno()
            self.process = subprocess.Popen(  # noqa: S603 - our own module, no shell
                [sys.executable, "-m", "engine.worker", str(fd), str(os.getpid())],
                pass_fds=(fd,),
                env=_child_env(),
            )
            if self._cancelled:  # cancel() came before the process existed
                self.process.kill()
        self._conn = Connection(ours.detach())
        level = logging.getLogger("engine").getEffectiveLevel()
        self._send(Configure(self.config, level, tuple(self.adapters.items())))
        try:
            reply = self._conn.recv()
        except (EOFError, OSError):
            code = self._reap()
            raise ModelLoadError(
                f"The model process exited while loading (exit code {code})."
            ) from None
        if isinstance(reply, LoadFailed):
            self._reap()
            raise ModelLoadError(reply.detail)
        self.encoder_layers = reply.facts.encoder_layers
        self.heap_frozen = reply.facts.heap_frozen
        return _loaded_facade(reply.facts)

    def exit_code(self) -> int | None:
        """None while the process runs."""
        assert self.process is not None, "the model process was never started"
        return self.process.poll()

    def _reap(self, timeout: float = 10.0) -> int | None:
        """Wait for the process to end (killing it past the timeout); its exit code."""
        assert self.process is not None, "the model process was never started"
        self._close_waker()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def run(self, jobs: list[Job], admit: Admit | None = None) -> None:
        """Decode one batch in the model process, delivering each event to its job (on the
        engine thread); ModelProcessExited if the process dies meanwhile. With `admit`,
        newcomers join it (and are appended to `jobs`) until no row runs."""
        if jobs[0].record:
            metrics.record_batch(jobs)
        with self._send_lock:
            sent = [self._row(job) for job in jobs]
            self._send(Batch(tuple(sent)))
        try:
            while True:
                if admit is not None:
                    self._join(jobs, admit)
                match self._next(wakeable=admit is not None):
                    case BatchDone(cuda_bytes):
                        if cuda_bytes is not None:
                            metrics.CUDA_MEMORY_BYTES.set(cuda_bytes)
                        # Rows still out were sent by a Join that crossed this BatchDone:
                        # the model process decodes them in a batch of its own.
                        if not self._running:
                            return
                    case Events(items, step_seconds, started):
                        with self._send_lock:
                            self._unstarted.difference_update(started)
                        self._record_steps(jobs, step_seconds)
                        for job_id, event in items:
                            self._deliver(job_id, event)
        finally:
            with self._send_lock:
                self._running.clear()
                self._unstarted.clear()

    def _join(self, jobs: list[Job], admit: Admit) -> None:
        """Send the newcomers the queue lets join the rows still out (none once none is):
        the tenant headroom's at once, the others one group at a time (the next once the
        model process reports the last one's pass begun)."""
        with self._send_lock:
            running: list[Job] = list(self._running.values())
            unstarted = bool(self._unstarted)
        if not running:
            return
        if urgent := admit(running, True):
            self._send_joiners(jobs, urgent, urgent=True)
        if not unstarted and (joiners := admit([*running, *urgent], False)):
            self._send_joiners(jobs, joiners, urgent=False)

    def _send_joiners(self, jobs: list[Job], joiners: list[Job], *, urgent: bool) -> None:
        jobs += joiners
        if joiners[0].record:
            metrics.record_join(joiners)
        with self._send_lock:
            rows = tuple(self._row(job) for job in joiners)
            self._unstarted.update(row.job_id for row in rows)
            self._send(Join(rows, urgent))

    def _next(self, *, wakeable: bool) -> FromModel | None:
        """The model process's next message; None when the queue woke us first."""
        assert self._conn is not None, "the model process was never started"
        if wakeable and self._conn not in wait([self._conn, self._woken]):
            with contextlib.suppress(OSError):  # BlockingIOError: drained
                while self._woken.recv(4096):
                    pass
            return None
        return self._recv()

    def wake(self) -> None:
        """A job was queued (called by the queue, from any thread): look for newcomers."""
        with contextlib.suppress(OSError):  # full: a wake-up is pending already
            self._waker.send(b"\0")

    def _record_steps(self, jobs: list[Job], step_seconds: tuple[float, ...]) -> None:
        if jobs[0].record:
            for seconds in step_seconds:
                metrics.STEP_SECONDS.observe(seconds)

    def _row(self, job: Job) -> BatchRow:
        """The job as the model process gets it, under a new id (called under the send lock)."""
        job.remote_id = job_id = next(self._ids)
        self._running[job_id] = job
        return BatchRow(job_id, job.request, job.prompt_ids, job.cancelled, job.submitted_at)

    def _deliver(self, job_id: int, event: Event) -> None:
        # The metrics live here, in the serving process: counted before the stream hears.
        with self._send_lock:
            job = self._running[job_id]
            # Any event: its row runs (a Join that crossed BatchDone starts a batch of its own,
            # never through the worker's admit), or has ended.
            self._unstarted.discard(job_id)
            if isinstance(event, Done | Failed):
                del self._running[job_id]  # its row has ended: no more Cancel for it
        match event:
            case Done(result):
                job.finished = True
                if job.record:
                    metrics.record_result(result, first_token=True)
            case Failed():
                job.finished = True
                if job.record:
                    metrics.REQUESTS.labels(result="failed").inc()
        job.send(event)

    def cancel(self, job: Job) -> None:
        """Stop a job the process is decoding (from the event loop); it ends at the next step."""
        with self._send_lock:
            if job.remote_id in self._running:
                self._send(Cancel(job.remote_id))

    def set_adapters(self, adapters: Mapping[str, str]) -> None:
        """The whole adapter registry (from any thread); read between two decoder steps."""
        with self._send_lock:
            self._send(SetAdapters(tuple(adapters.items())))

    def abort(self) -> None:
        """Cancel every row of the batch being decoded (a shutdown past its deadline)."""
        with self._send_lock:
            self._send(Abort())

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the process to end after its batch; kill it past the timeout."""
        if self.process is None:
            return
        with self._send_lock:
            self._send(Stop())
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("inference: the model process did not stop in %.0fs; killed", timeout)
            self._reap(0)
        # Opened together with the process, in start().
        assert self._conn is not None
        self._conn.close()
        self._close_waker()

    def _close_waker(self) -> None:
        # A wake() after this (a put racing the restart) fails quietly on the closed socket.
        self._waker.close()
        self._woken.close()

    def _send(self, message: ToModel) -> None:
        # A process that is gone: the engine thread finds out on its next receive.
        assert self._conn is not None, "the model process was never started"
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(message)

    def _recv(self) -> FromModel:
        assert self.process is not None and self._conn is not None, "never started"
        try:
            # What worker.py sends is a FromModel (pickles are untyped).
            message: FromModel = self._conn.recv()
            return message
        except (EOFError, OSError):
            code = self._reap(5)
            raise ModelProcessExited(f"The model process exited (exit code {code}).") from None
        except Exception as exc:
            # A message that cannot be unpickled: the rest of the batch cannot be told apart,
            # and an engine thread that died here would leave every stream waiting forever.
            # End the process; the engine fails the batch and starts a new one.
            logger.exception("inference: unreadable message from the model process")
            self.process.kill()
            self._reap(5)
            raise ModelProcessExited(
                f"The model process sent a message that could not be read ({type(exc).__name__})."
            ) from None


def _python_path() -> str:
    """The project's root first, so `-m engine.worker` imports this very package."""
    root = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)


def _child_env() -> dict[str, str]:
    """The model process's environment: the server's, without PROMETHEUS_MULTIPROC_DIR. The
    serving process records every metric (the rows it sends are record=False); were the child
    to share the directory, its never-set gauges would join the server's, and
    inference_model_ready (livemin) would read 0 on a replica whose model is ready."""
    env = {name: value for name, value in os.environ.items() if name != "PROMETHEUS_MULTIPROC_DIR"}
    return {**env, "PYTHONPATH": _python_path()}


def _loaded_facade(facts: ModelFacts) -> ServedModel:
    """What the serving process keeps of the model: its tokenizer (to encode and count prompt
    tokens before admission) and the facts /readyz and the metrics report; no weights."""
    from tokenizers import Tokenizer

    tokenizer = types.SimpleNamespace(backend_tokenizer=Tokenizer.from_str(facts.tokenizer))
    return ServedModel(
        tokenizer=tokenizer,
        device_type=facts.device.partition(":")[0],
        quantization=facts.quantization,
        decoder_start_id=facts.decoder_start_id,
        eos_id=facts.eos_id,
        pad_id=facts.pad_id,
        max_input_tokens=facts.max_input_tokens,
        load_seconds=facts.load_seconds,
        model_bytes=facts.model_bytes,
        cache_token_bytes=facts.cache_token_bytes,
    )
