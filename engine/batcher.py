"""The bounded queue between the event loop and the one model thread, how batches form, and
how long a job may wait in it."""

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable

from engine import metrics
from engine.generation import GenerationRequest, ModelNotReady, QueueFull, QueueTimeout
from engine.messages import Event, Failed

Deliver = Callable[[Event], None]


class Job:
    """One request from submit() to its result, shared by the event loop and the model thread."""

    def __init__(
        self,
        request: GenerationRequest,
        prompt_ids: list[int],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        deliver: Deliver | None = None,
        record: bool = True,
    ) -> None:
        self.request = request
        self.prompt_ids = prompt_ids
        self._loop = loop
        self._deliver = deliver
        self.record = record  # False for the warm-up pass: it must not show in metrics
        self.submitted_at = time.perf_counter()
        # Written by the event loop (cancel) or the model thread (loop gone), read by the
        # model thread once per decoding step; a bool store is atomic under the GIL, and a
        # step of lag only costs one more token.
        self.cancelled = False
        # Written by whoever ends the job: the model thread, or (for a job still queued) the
        # one that took it out of the queue under the scheduler's lock.
        self.finished = False
        self.queued_at = 0.0  # set by Scheduler.put(), under its lock
        self.remote_id: int | None = None  # its id in the model process (EngineConfig.process)

    def send(self, event: Event) -> None:
        """Hand an event to the consumer's event loop (called from the model thread)."""
        if self._loop is None or self._deliver is None:
            return
        try:
            # The only way across: the event loop never runs model code, and the model thread
            # never touches asyncio objects directly.
            self._loop.call_soon_threadsafe(self._deliver, event)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
            self.cancelled = True


class Scheduler:
    """A bounded FIFO of jobs; hands the model thread batches of up to max_batch."""

    def __init__(
        self, *, max_batch: int, max_wait_ms: int, max_queue: int, max_queue_wait: float = 0.0
    ) -> None:
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0, max_wait_ms) / 1000.0
        self.max_queue = max(1, max_queue)
        self.max_queue_wait = max(0.0, max_queue_wait)  # seconds; 0: no bound
        # One lock guards _pending and _closed; it is held only for list operations, never
        # while the model runs. Two conditions on it: put()'s notify() must wake the model
        # thread, never the expiry thread in its stead.
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._expiry = threading.Condition(lock)
        self._pending: deque[Job] = deque()
        self._closed = False
        self._reaper: threading.Thread | None = None

    def put(self, job: Job) -> None:
        """Queue a job, or refuse it at once (QueueFull, or ModelNotReady when closed)."""
        with self._cond:
            if self._closed:
                raise ModelNotReady("The engine is shutting down.")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"The request queue is full ({self.max_queue} waiting).")
            # Stamped under the lock: the queue stays in deadline order, so the expiry
            # thread only ever looks at its head.
            job.queued_at = time.perf_counter()
            self._pending.append(job)
            metrics.QUEUE_DEPTH.set(len(self._pending))
            self._cond.notify()
            if self.max_queue_wait and len(self._pending) == 1:
                # The only moment the expiry thread may be waiting without a deadline.
                self._start_expiry()
                self._expiry.notify()

    def remove(self, job: Job) -> bool:
        """Take a job out of the queue (a cancel before it ran); False when not queued."""
        with self._cond:
            try:
                self._pending.remove(job)
            except ValueError:
                return False
            metrics.QUEUE_DEPTH.set(len(self._pending))
            return True

    def take_batch(self, idle: float | None = None) -> list[Job] | None:
        """Block for the next batch; [] once closed and empty (the model thread then ends);
        None when `idle` seconds pass with nothing queued."""
        with self._cond:
            while True:
                while not self._pending and not self._closed:
                    if not self._cond.wait(idle) and not self._pending and not self._closed:
                        return None
                if not self._pending:
                    return []
                if self._wait_for_company():
                    break
            size = min(self.max_batch, len(self._pending))
            batch = [self._pending.popleft() for _ in range(size)]
            metrics.QUEUE_DEPTH.set(len(self._pending))
            return batch

    def _wait_for_company(self) -> bool:
        # The oldest job waits at most max_wait in all; jobs that queued while the previous
        # batch ran have waited already and start at once. False: the queue emptied (cancels).
        deadline = self._pending[0].submitted_at + self.max_wait
        while self._pending and len(self._pending) < self.max_batch and not self._closed:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
        return bool(self._pending)

    def close(self) -> None:
        """Refuse new jobs; queued ones are still handed out (drain)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._expiry.notify_all()

    # --- expiry (max_queue_wait) --------------------------------------------------------------
    def _start_expiry(self) -> None:
        # A thread of its own: the model thread takes jobs only between batches (one may run
        # for minutes), and the event loop must never wait on this. Started on first use.
        if self._reaper is None:
            self._reaper = threading.Thread(
                target=self._expire, name="inference-queue-expiry", daemon=True
            )
            self._reaper.start()

    def _expire(self) -> None:
        while (expired := self._wait_for_expired()) is not None:
            for job in expired:
                self._time_out(job)

    def _time_out(self, job: Job) -> None:
        # Out of the queue under the lock already: no batch can take it, a cancel finds
        # nothing to remove; its stream raises QueueTimeout (never ran, nothing to bill).
        waited = time.perf_counter() - job.queued_at
        job.finished = True
        metrics.REQUESTS.labels(result="expired").inc()  # before anyone hears of it
        message = (
            f"The request waited {waited:.1f}s in the queue without starting "
            f"(the limit is {self.max_queue_wait:g}s)."
        )
        job.send(Failed(QueueTimeout(message)))

    def _wait_for_expired(self) -> list[Job] | None:
        """Block until queued jobs are past their deadline and take them out; None once the
        queue is closed and empty."""
        with self._cond:
            while not (self._closed and not self._pending):
                now = time.perf_counter()
                expired = []
                while self._pending and self._pending[0].queued_at + self.max_queue_wait <= now:
                    expired.append(self._pending.popleft())
                if expired:
                    metrics.QUEUE_DEPTH.set(len(self._pending))
                    return expired
                # Until the head's deadline (later jobs' are later); a job that becomes the
                # head meanwhile has a later one, and an empty queue waits for put().
                head = self._pending[0] if self._pending else None
                self._expiry.wait(
                    None if head is None else head.queued_at + self.max_queue_wait - now
                )
            return None

    def drop_all(self) -> list[Job]:
        """Empty the queue and return what was in it (shutdown past its deadline)."""
        with self._cond:
            jobs = list(self._pending)
            self._pending.clear()
            metrics.QUEUE_DEPTH.set(0)
            return jobs

    def __len__(self) -> int:
        with self._cond:
            return len(self._pending)
