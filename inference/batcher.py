"""The bounded queue between the event loop and the one model thread, and how batches form."""

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable

from inference import metrics
from inference.generation import GenerationRequest, ModelNotReady, QueueFull

Deliver = Callable[[str, object], None]


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
        self.finished = False  # only the model thread writes it
        self.remote_id: int | None = None  # its id in the model process (EngineConfig.process)

    def send(self, kind: str, payload: object) -> None:
        """Hand an event to the consumer's event loop (called from the model thread)."""
        if self._loop is None or self._deliver is None:
            return
        try:
            # The only way across: the event loop never runs model code, and the model thread
            # never touches asyncio objects directly.
            self._loop.call_soon_threadsafe(self._deliver, kind, payload)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
            self.cancelled = True


class Scheduler:
    """A bounded FIFO of jobs; hands the model thread batches of up to max_batch."""

    def __init__(self, *, max_batch: int, max_wait_ms: int, max_queue: int) -> None:
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0, max_wait_ms) / 1000.0
        self.max_queue = max(1, max_queue)
        # One condition guards _pending and _closed; it is held only for list operations,
        # never while the model runs.
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._closed = False

    def put(self, job: Job) -> None:
        """Queue a job, or refuse it at once (QueueFull, or ModelNotReady when closed)."""
        with self._cond:
            if self._closed:
                raise ModelNotReady("The engine is shutting down.")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"The request queue is full ({self.max_queue} waiting).")
            self._pending.append(job)
            metrics.QUEUE_DEPTH.set(len(self._pending))
            self._cond.notify()

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
